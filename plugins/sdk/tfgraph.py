"""The TensorFlow-backed helpers the passes and steps share: constants in and
out of protos, static shapes, and running a GraphDef.

Everything imports TensorFlow inside the function (through ``_tf``), so that
importing a pass module for planning stays TensorFlow-free. Graphs are run
with a v1 ``Session`` on a fresh ``tf.Graph``: it executes a GraphDef exactly
as given (no Grappler rewrites, which would blur what our passes did) --
the session is created with Grappler turned off for that reason.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free


def const_array(node: Any) -> np.ndarray:
    """The value of a ``Const`` node."""
    _tf.tensorflow()
    from tensorflow.python.framework import tensor_util

    return tensor_util.MakeNdarray(node.attr["value"].tensor)


def const_attrs(value: np.ndarray, dtype: Any = None) -> dict[str, Any]:
    """``dtype`` and ``value`` AttrValues for a Const node holding ``value``.

    ``dtype`` (a ``tf.DType`` or DataType enum) keeps the exact TF type where
    NumPy has none (bfloat16, qint8...); by default it follows the array.
    """
    tf = _tf.tensorflow()
    from tensorflow.core.framework import attr_value_pb2

    tf_dtype = tf.as_dtype(dtype if dtype is not None else value.dtype)
    proto = tf.make_tensor_proto(value, dtype=tf_dtype)
    return {
        "dtype": attr_value_pb2.AttrValue(type=tf_dtype.as_datatype_enum),
        "value": attr_value_pb2.AttrValue(tensor=proto),
    }


def type_attr(dtype: Any) -> Any:
    """An AttrValue holding a type (for ``T`` attrs of new nodes)."""
    tf = _tf.tensorflow()
    from tensorflow.core.framework import attr_value_pb2

    return attr_value_pb2.AttrValue(type=tf.as_dtype(dtype).as_datatype_enum)


def string_attr(value: str) -> Any:
    _tf.tensorflow()
    from tensorflow.core.framework import attr_value_pb2

    return attr_value_pb2.AttrValue(s=value.encode())


def numpy_dtype(datatype_enum: int) -> np.dtype | None:
    """NumPy dtype of a TF DataType enum, None for resource/variant/etc."""
    tf = _tf.tensorflow()
    try:
        dtype = tf.as_dtype(datatype_enum)
    except TypeError:
        return None
    if dtype in (tf.resource, tf.variant) or dtype.is_quantized:
        return None
    try:
        return np.dtype(dtype.as_numpy_dtype)
    except TypeError:
        return None


def import_graph(graph_def: Any) -> Any:
    """A new ``tf.Graph`` holding ``graph_def`` (node names unchanged)."""
    tf = _tf.tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def static_shapes(graph_def: Any) -> dict[str, tuple[int | None, ...] | None]:
    """TensorFlow's static shape of every tensor (``"node:i"``); None = unknown rank."""
    graph = import_graph(graph_def)
    shapes: dict[str, tuple[int | None, ...] | None] = {}
    for op in graph.get_operations():
        for tensor in op.outputs:
            shape = tensor.shape
            shapes[tensor.name] = None if shape.rank is None else tuple(shape.as_list())
    return shapes


def session_config() -> Any:
    """A session config that runs the graph as given: Grappler and the
    classic graph optimizer off, so verification sees our rewrites only."""
    tf = _tf.tensorflow()
    from tensorflow.core.protobuf import rewriter_config_pb2

    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.optimizer_options.opt_level = tf.compat.v1.OptimizerOptions.L0
    config.graph_options.rewrite_options.constant_folding = rewriter_config_pb2.RewriterConfig.OFF
    return config


def run_graph(graph_def: Any, fetches: Sequence[str], feeds: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Evaluate tensor names ``fetches`` of ``graph_def`` with ``feeds``."""
    return run_batches(graph_def, fetches, [feeds or {}])[0]


def run_batches(graph_def: Any, fetches: Sequence[str],
                batches: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """``fetches`` for each feed dict in ``batches`` (one import, one session)."""
    tf = _tf.tensorflow()
    graph = import_graph(graph_def)
    with tf.compat.v1.Session(graph=graph, config=session_config()) as session:
        return [[np.asarray(v) for v in session.run(list(fetches), feed_dict=dict(feeds))] for feeds in batches]
