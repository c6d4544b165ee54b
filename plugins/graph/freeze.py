"""Keras model -> frozen GraphDef + signature.

The model is traced as ``model(x, training=False)`` through a concrete
``tf.function`` whose input specs keep the **batch dimension dynamic
(None)** by default: one graph serves any batch size, and the TFLite
converter fixes the batch to 1 itself. (A fixed batch can be asked for with
``batch_size``; it makes ``Shape`` ops foldable, which rarely matters for
Keras graphs since ``Flatten`` already reshapes by a constant.)
``convert_variables_to_constants_v2`` then turns every variable read into a
``Const``. Control flow is kept functional (``lower_control_flow=False``):
``While``/``If`` survive as ops, which TFLite converts natively and which the
passes recognise and leave alone.

Placeholders are named after the Keras input layers (sanitized into valid
op names), outputs are ``output_0``, ``output_1``... in the model's output
order. Device placements are cleared so the bytes do not depend on the
machine; the result is byte-identical for identical models.
"""

from __future__ import annotations

import re
from typing import Any

from tinybuild.api import StepError

_INVALID = re.compile(r"[^A-Za-z0-9_.\-/]")


def _op_name(name: str, taken: set[str]) -> str:
    cleaned = _INVALID.sub("_", name) or "input"
    if not re.match(r"[A-Za-z0-9.]", cleaned):
        cleaned = f"input{cleaned}"
    unique, suffix = cleaned, 1
    while unique in taken:
        unique, suffix = f"{cleaned}_{suffix}", suffix + 1
    taken.add(unique)
    return unique


def _spec_entry(name: str, tensor: Any) -> dict[str, Any]:
    shape = tensor.shape
    return {
        "name": name,
        "tensor": tensor.name,
        "shape": None if shape.rank is None else shape.as_list(),
        "dtype": tensor.dtype.name,
    }


def freeze_keras_model(model: Any, batch_size: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(frozen GraphDef, signature dict) for a tf_keras model."""
    from tinybuild_plugins.sdk import tf as _tf

    tf = _tf.tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    if not getattr(model, "inputs", None):
        raise StepError("the Keras model has no defined inputs (build it with an Input layer or "
                        "input_shape) so it cannot be traced into a graph")
    taken: set[str] = set()
    names = [_op_name(str(n), taken) for n in model.input_names]
    specs = [tf.TensorSpec([batch_size, *t.shape[1:]], t.dtype, name=n) for t, n in zip(model.inputs, names)]
    single = len(specs) == 1

    def serve(*inputs: Any) -> Any:
        return model(inputs[0] if single else list(inputs), training=False)

    concrete = tf.function(serve).get_concrete_function(*specs)
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False)
    graph_def = frozen.graph.as_graph_def()
    for node in graph_def.node:
        node.device = ""
    signature = {
        "inputs": [_spec_entry(n, t) for n, t in zip(names, frozen.inputs)],
        "outputs": [_spec_entry(f"output_{i}", t) for i, t in enumerate(frozen.outputs)],
    }
    return graph_def, signature
