"""``simplify-arithmetic``: remove operations that provably do nothing.

Rules (every one exact: the result is bit-identical, shapes and dtypes
included):

* ``x*1``, ``1*x``, ``x+0``, ``0+x``, ``x-0``, ``x/1`` when the constant
  cannot broadcast ``x`` to a larger shape (a scalar always qualifies; a
  tensor constant needs ``x``'s static shape), and ``BiasAdd`` of an
  all-zero bias (what a freshly initialized layer holds). The neutral
  operand may also be computed rather than stored: ``ZerosLike``/``OnesLike``
  of any tensor, or ``Fill`` of a constant value. ``x + zeros_like(x)`` is
  always removable (same tensor, same shape, even when it is only known at
  run time); ``zeros_like(y)`` or a ``Fill`` of another shape only when that
  shape is fully known and cannot broadcast ``x`` larger. The TFLite
  converter keeps ``ZEROS_LIKE`` + ``ADD`` from a frozen graph, so this one
  changes the shipped model;
* ``Reshape(Reshape(x, a), b)`` -> ``Reshape(x, b)``, and ``Reshape(x, s)``
  where ``s`` is ``x``'s own shape (``-1`` standing for the unknown batch);
* ``Transpose`` by the identity permutation, and ``Transpose(Transpose(x,
  p), q)`` -> one transpose by the composed permutation (none if it is the
  identity);
* ``Cast`` to the type it already has; ``Neg(Neg(x))``,
  ``LogicalNot(LogicalNot(x))``;
* idempotent unary ops applied twice: ``Relu(Relu(x))``, ``Relu6``, ``Abs``,
  ``Floor``, ``Ceil``, ``Round``, ``Rint``, ``Sign``;
* ``Pad``/``PadV2``/``MirrorPad`` with all-zero paddings, ``Tile`` by ones,
  ``ConcatV2``/``AddN`` of a single tensor, and inference no-ops
  (``StopGradient``, ``PreventGradient``, ``Snapshot``).

Consumers of a removed op read its input instead (keeping its control
dependencies); a removed op that is a signature output becomes an
``Identity`` so its name survives. Static shapes come from TensorFlow's own
shape inference, computed once per application: rewrites never change the
shape of a surviving tensor, so they stay valid throughout.
"""

from __future__ import annotations

from typing import Any, Callable

from tinybuild_plugins.sdk.graph_edit import GraphEditor, control_ref, graph_pass, parse_ref, repeat_until_stable, tensor_name, tensor_ref
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

_NEUTRAL = {  # op -> (neutral value, operand positions the constant may take)
    "Mul": (1, (0, 1)),
    "Add": (0, (0, 1)),
    "AddV2": (0, (0, 1)),
    "Sub": (0, (1,)),
    "RealDiv": (1, (1,)),
    "Div": (1, (1,)),
    "BiasAdd": (0, (1,)),  # the bias matches x's channel dimension: never broadcasts x
}
_INVOLUTIONS = frozenset({"Neg", "LogicalNot"})
_IDEMPOTENT = frozenset({"Relu", "Relu6", "Abs", "Floor", "Ceil", "Round", "Rint", "Sign"})
_NO_OPS = frozenset({"StopGradient", "PreventGradient", "Snapshot"})
_PADS = frozenset({"Pad", "PadV2", "MirrorPad"})

Shapes = Callable[[str], "tuple[int | None, ...] | None"]


@graph_pass
def simplify_arithmetic(editor: GraphEditor) -> None:
    cache: dict[str, Any] = {}

    def shape_of(ref: str) -> tuple[int | None, ...] | None:
        if "shapes" not in cache:
            from tinybuild_plugins.sdk import tfgraph as _tfgraph

            cache["shapes"] = _tfgraph.static_shapes(editor.graph_def())
        return cache["shapes"].get(tensor_name(ref))

    repeat_until_stable(lambda: _sweep_once(editor, shape_of))


def _sweep_once(editor: GraphEditor, shape_of: Shapes) -> bool:
    before = editor.edits
    for node in editor.topological_order():
        if node.name in editor:
            _simplify(editor, node, shape_of)
    return editor.edits != before


def _simplify(editor: GraphEditor, node: Any, shape_of: Shapes) -> None:
    import numpy as np
    op = node.op
    data = [tensor_ref(*d) for d in editor.data_inputs(node)]
    if op in _NEUTRAL and len(data) == 2:
        _neutral_operand(editor, node, data, shape_of)
    elif op == "Reshape" and len(data) == 2:
        _reshape(editor, node, data, shape_of)
    elif op == "Transpose" and len(data) == 2:
        _transpose(editor, node, data)
    elif op == "Cast" and node.attr["SrcT"].type == node.attr["DstT"].type:
        _replace(editor, node, data[0])
    elif op in _INVOLUTIONS | _IDEMPOTENT and len(data) == 1:
        producer = _producer(editor, data[0])
        if producer is not None and producer.op == op:
            _replace(editor, node, producer.input[0] if op in _INVOLUTIONS else data[0])
    elif op in _NO_OPS and len(data) == 1:
        _replace(editor, node, data[0])
    elif op in _PADS and len(data) >= 2:
        paddings = editor.constant(data[1])
        if paddings is not None and not np.any(paddings):
            _replace(editor, node, data[0])
    elif op == "Tile" and len(data) == 2:
        multiples = editor.constant(data[1])
        if multiples is not None and np.all(multiples == 1):
            _replace(editor, node, data[0])
    elif (op == "ConcatV2" and len(data) == 2) or (op == "AddN" and len(data) == 1):
        _replace(editor, node, data[0])


def _producer(editor: GraphEditor, ref: str) -> Any | None:
    name, index = parse_ref(ref)
    return editor.node(name) if index == 0 and name in editor else None


def _replace(editor: GraphEditor, node: Any, replacement: str) -> None:
    """Consumers of ``node`` read ``replacement``; leftovers are removed."""
    sources = [parse_ref(r)[0] for r in node.input if not r.startswith("^")]
    editor.bypass(node, replacement)
    editor.sweep([node.name, *sources])


def _neutral_operand(editor: GraphEditor, node: Any, data: list[str], shape_of: Shapes) -> None:
    import numpy as np
    neutral, positions = _NEUTRAL[node.op]
    for position in positions:
        other = data[1 - position]
        constant = editor.constant(data[position])
        if constant is not None:
            if constant.dtype.kind not in "biufc" or not np.all(constant == neutral):
                continue
            if node.op == "BiasAdd" or _broadcast_keeps_shape(shape_of(other) if constant.ndim else (), constant.shape):
                _replace(editor, node, other)
                return
        elif _computed_neutral(editor, node, data[position], other, neutral, shape_of):
            _replace(editor, node, other)
            return


_FILLED_LIKE = {"ZerosLike": 0, "OnesLike": 1}  # op -> the value every element holds


def _computed_neutral(editor: GraphEditor, node: Any, ref: str, other: str, neutral: int, shape_of: Shapes) -> bool:
    """Whether ``ref`` is a computed tensor of ``neutral`` values (``ZerosLike``,
    ``OnesLike``, ``Fill`` of a constant) that leaves ``other`` unchanged
    under ``node``: same dtype, and a shape that cannot broadcast ``other``
    larger -- trivially so for ``zeros_like(other)`` itself."""
    import numpy as np
    producer = _producer(editor, ref)
    if producer is None or "T" not in producer.attr or producer.attr["T"].type != node.attr["T"].type:
        return False
    if producer.op in _FILLED_LIKE:
        if _FILLED_LIKE[producer.op] != neutral:
            return False
        source = tensor_ref(*editor.data_inputs(producer)[0])
        if tensor_name(source) == tensor_name(other):
            return True
    elif producer.op == "Fill":
        value = editor.constant(tensor_ref(*editor.data_inputs(producer)[1]))
        if value is None or value.dtype.kind not in "biufc" or not np.all(value == neutral):
            return False
    else:
        return False
    shape = shape_of(ref)
    if node.op == "BiasAdd":  # a bias is one vector over x's channels: it never broadcasts x larger
        return shape is not None and len(shape) == 1
    if shape is None or any(d is None for d in shape):
        return False  # an unknown dimension could be n > 1 where x has 1
    return _broadcast_keeps_shape(shape_of(other), tuple(int(d) for d in shape))


def _broadcast_keeps_shape(shape: tuple[int | None, ...] | None, constant: tuple[int, ...]) -> bool:
    """Whether ``x op c`` has exactly ``x``'s shape (``c`` cannot enlarge it)."""
    if not constant:
        return True
    if shape is None or len(shape) < len(constant):
        return False
    return all(c == 1 or x == c for x, c in zip(shape[len(shape) - len(constant):], constant))


def _reshape(editor: GraphEditor, node: Any, data: list[str], shape_of: Shapes) -> None:
    target = editor.constant(data[1])
    if target is None:
        return
    producer = _producer(editor, data[0])
    if producer is not None and producer.op == "Reshape":
        controls = [control_ref(c) for c in editor.control_inputs(producer)]
        editor.set_inputs(node, [producer.input[0], *node.input[1:], *controls])
        editor.sweep([producer.name])
        data = [node.input[0], data[1]]
    if _same_shape(shape_of(data[0]), [int(v) for v in target.reshape(-1)]):
        _replace(editor, node, data[0])


def _same_shape(shape: tuple[int | None, ...] | None, target: list[int]) -> bool:
    """Whether reshaping a tensor of static ``shape`` to ``target`` is a no-op."""
    if shape is None or len(shape) != len(target) or target.count(-1) > 1:
        return False
    return all(t == -1 if s is None else t in (s, -1) for s, t in zip(shape, target))


def _transpose(editor: GraphEditor, node: Any, data: list[str]) -> None:
    import numpy as np
    from tinybuild_plugins.sdk import tfgraph as _tfgraph

    perm = editor.constant(data[1])
    if perm is None:
        return
    producer = _producer(editor, data[0])
    inner = editor.constant(producer.input[1]) if producer is not None and producer.op == "Transpose" else None
    if inner is not None and inner.shape == perm.shape:
        composed = inner[perm]  # transpose(transpose(y, p), q) == transpose(y, p[q])
        if np.array_equal(composed, np.arange(len(composed))):
            _replace(editor, node, producer.input[0])
            return
        perm_node = editor.add_node(f"{node.name}/perm", "Const", (), _tfgraph.const_attrs(composed.astype(perm.dtype)))
        controls = [control_ref(c) for c in editor.control_inputs(producer)]
        old_perm = parse_ref(data[1])[0]
        editor.set_inputs(node, [producer.input[0], perm_node.name, *node.input[2:], *controls])
        editor.sweep([producer.name, old_perm])
    elif np.array_equal(perm, np.arange(perm.size)):
        _replace(editor, node, data[0])
