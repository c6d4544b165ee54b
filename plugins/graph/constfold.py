"""``fold-constants``: evaluate constant subgraphs once, at build time.

A node is *foldable* when all its data inputs are ``Const`` nodes or other
foldable nodes and its op is deterministic and side-effect free. Every
foldable node is evaluated with TensorFlow itself (one session run over the
constant subgraph, so the values are bit-identical to what the graph would
compute) and turned into a ``Const`` *in place* -- same name, so every
reference, including a signature output, stays valid. Operands nobody reads
any more are then removed. Shape ops (``Shape``, ``Size``, ``Rank``) whose
input has a fully known static shape become constants too, which can make
more of the graph foldable; the pass repeats until nothing changes.

Never folded:

* stateful and random ops (their value is not a function of their inputs);
* ``FakeQuant*`` / ``(De)Quantize*``: the TFLite converter reads quantization
  ranges from them, folding would silently turn a QAT graph into a float one;
* placeholders, ``NoOp`` and anything a failed evaluation points at;
* results that would bloat the file: an output larger than the largest of
  the node's inputs (and larger than ``SMALL_RESULT_BYTES``), or larger than
  ``MAX_RESULT_BYTES`` -- ``Fill``, ``Tile``, ``BroadcastTo`` and friends
  stay ops, since storing their output costs more than computing it.

Exact: the folded values come from the same kernels the graph would run.
"""

from __future__ import annotations

from typing import Any

from tinybuild_plugins.sdk.graph_edit import GraphEditor, control_ref, graph_pass, repeat_until_stable, tensor_name
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

#: a folded result this small is always kept, even if larger than its inputs
SMALL_RESULT_BYTES = 1024
#: no folded constant may be larger than this
MAX_RESULT_BYTES = 16 * 2**20

_NEVER_FOLD = frozenset({
    "Const", "Placeholder", "PlaceholderV2", "PlaceholderWithDefault", "NoOp",
    "QuantizeV2", "Dequantize", "QuantizeAndDequantize", "QuantizeAndDequantizeV2",
    "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4",
    "CheckNumerics", "CheckNumericsV2", "Assert", "Print", "PrintV2",
})
_NEVER_FOLD_MARKERS = ("FakeQuant", "Random", "Multinomial", "TruncatedNormal")
_SHAPE_OPS = frozenset({"Shape", "Size", "Rank"})


def may_fold(op: str) -> bool:
    """Whether ``op``'s output is a pure function of its inputs that we may store."""
    from tinybuild_plugins.sdk.graph_edit import op_is_stateful

    if op in _NEVER_FOLD or any(marker in op for marker in _NEVER_FOLD_MARKERS):
        return False
    return op_is_stateful(op) is False


@graph_pass
def fold_constants(editor: GraphEditor) -> None:
    def step() -> bool:
        materialized = _materialize_shapes(editor)
        folded = _fold_once(editor)
        return materialized or folded

    repeat_until_stable(step, limit=16)


# --------------------------------------------------------------------------


def _materialize_shapes(editor: GraphEditor) -> bool:
    import numpy as np
    from tinybuild_plugins.sdk import tfgraph as _tfgraph

    candidates = [n for n in editor.nodes() if n.op in _SHAPE_OPS and len(editor.data_inputs(n)) == 1]
    if not candidates:
        return False
    shapes = _tfgraph.static_shapes(editor.graph_def())
    before = editor.edits
    for node in candidates:
        shape = shapes.get(tensor_name(node.input[0]))
        if shape is None or (node.op != "Rank" and None in shape):
            continue
        if node.op == "Shape":
            value = np.array(shape, dtype=_out_type(node))
        elif node.op == "Size":
            value = np.array(int(np.prod(shape, dtype=np.int64)), dtype=_out_type(node))
        else:
            value = np.array(len(shape), dtype=np.int32)
        source = editor.data_inputs(node)[0][0]
        controls = [control_ref(c) for c in editor.control_inputs(node)]
        editor.rewrite(node, "Const", controls, _tfgraph.const_attrs(value))
        editor.sweep([source])
    return editor.edits != before


def _out_type(node: Any) -> Any:
    import numpy as np
    from tinybuild_plugins.sdk import tfgraph as _tfgraph

    if "out_type" in node.attr:
        return _tfgraph.numpy_dtype(node.attr["out_type"].type)
    return np.int32


def _fold_once(editor: GraphEditor) -> bool:
    from tinybuild_plugins.sdk import tfgraph as _tfgraph

    foldable: dict[str, Any] = {}
    inherited: dict[str, list[str]] = {}  # control inputs a folded node must keep
    for node in editor.topological_order():
        sources = editor.data_inputs(node)
        waits = list(editor.control_inputs(node))
        for source, _ in sources:
            waits.extend(inherited.get(source, ()))
        if node.op == "Const":
            inherited[node.name] = waits
            continue
        if not sources or not may_fold(node.op):
            continue
        if all(editor.node(s).op == "Const" or s in foldable for s, _ in sources):
            foldable[node.name] = node
            inherited[node.name] = list(dict.fromkeys(waits))
    if not foldable:
        return False

    values, dtypes = _evaluate(editor, foldable)
    before = editor.edits
    for name, node in foldable.items():
        outputs = dtypes.get(name)
        if name not in editor or outputs is None or any(f"{name}:{i}" not in values for i in range(len(outputs))):
            continue
        results = [values[f"{name}:{i}"] for i in range(len(outputs))]
        if not _small_enough(editor, node, results, values):
            continue
        sources = [s for s, _ in editor.data_inputs(node)]
        controls = [control_ref(c) for c in inherited[name]]
        if len(results) == 1:
            editor.rewrite(node, "Const", controls, _tfgraph.const_attrs(results[0], outputs[0]))
        elif name not in editor.protected:
            tensors = {
                i: editor.add_node(f"{name}/folded_{i}", "Const", controls,
                                   _tfgraph.const_attrs(result, outputs[i]), node.device).name
                for i, result in enumerate(results) if editor.uses_output(name, i)
            }
            editor.reroute(name, tensors, after=controls)
            sources = [name]
        else:
            continue
        editor.sweep(sources)
    return editor.edits != before


def _input_bytes(editor: GraphEditor, node: Any, values: dict[str, np.ndarray]) -> int:
    from tinybuild_plugins.sdk import tfgraph as _tfgraph

    largest = 0
    for source, index in editor.data_inputs(node):
        key = f"{source}:{index}"
        if key in values:
            largest = max(largest, values[key].nbytes)
        elif source in editor and editor.node(source).op == "Const":
            largest = max(largest, _tfgraph.const_array(editor.node(source)).nbytes)
    return largest


def _small_enough(editor: GraphEditor, node: Any, results: list[np.ndarray], values: dict[str, np.ndarray]) -> bool:
    size = max(r.nbytes for r in results)
    if size > MAX_RESULT_BYTES:
        return False
    return size <= SMALL_RESULT_BYTES or size <= _input_bytes(editor, node, values)


def _evaluate(editor: GraphEditor, foldable: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, list[Any]]]:
    """Values of every output of the foldable nodes, and their TF dtypes.

    The constant subgraph is copied without control edges or colocation hints
    (values do not depend on them) and run once; if one op fails (say an
    integer division by zero) each node is retried alone so the rest still
    folds and the failing node stays an op, failing at run time as before.
    """
    import numpy as np
    from tinybuild_plugins.sdk import tf as _tf

    from tinybuild_plugins.sdk import tfgraph as _tfgraph

    tf = _tf.tensorflow()
    sub = editor.empty_graph_def()
    needed = set(foldable)
    for node in foldable.values():
        needed.update(s for s, _ in editor.data_inputs(node))
    for node in editor.nodes():
        if node.name in needed:
            copy = sub.node.add()
            copy.CopyFrom(node)
            del copy.input[:]
            copy.input.extend(r for r in node.input if not r.startswith("^"))
            copy.device = ""
            if "_class" in copy.attr:
                del copy.attr["_class"]
    graph = _tfgraph.import_graph(sub)
    dtypes = {name: [t.dtype for t in graph.get_operation_by_name(name).outputs] for name in foldable}
    fetches = [f"{name}:{i}" for name, outs in dtypes.items()
               if all(_tfgraph.numpy_dtype(d.as_datatype_enum) is not None for d in outs)
               for i in range(len(outs))]
    config = _tfgraph.session_config()
    values: dict[str, np.ndarray] = {}
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        try:
            values = dict(zip(fetches, (np.asarray(v) for v in session.run(fetches))))
        except tf.errors.OpError:
            for fetch in fetches:
                try:
                    values[fetch] = np.asarray(session.run(fetch))
                except tf.errors.OpError:
                    continue
    return values, dtypes
