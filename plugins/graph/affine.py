"""``fold-input-affine``: fold a per-feature scale or shift that *feeds* a
``MatMul`` or ``Conv2D`` into that layer's weights and bias.

Why a pass of its own: the TFLite converter already folds an affine
transform that *follows* a layer (batch norm after a convolution), but one
in front of a layer survives conversion as ``SUB``/``MUL``/``ADD`` ops --
Keras's ``Normalization`` layer before a ``Dense`` (feature standardization
in MLPs over MFCCs, IMU or tabular features) ships as ``SUB`` + ``MUL`` +
``FULLY_CONNECTED``, and an input ``BatchNormalization`` before a ``VALID``
convolution keeps a ``MUL``. Folding them gives one layer op.

Rules, for ``layer(x op c)`` where the elementwise op's only reader is the
layer and ``c`` is a constant per input feature (shape ``()``, ``(K,)``,
``(1, K)``, ``(1, 1, 1, K)``..., ``K`` the layer's input features, which
must also be ``x``'s static last dimension so ``c`` cannot broadcast ``x``
larger):

* a scale, ``x * s`` or ``x / d``: the weights' input-feature axis is
  multiplied by ``s`` (``1/d``). Valid for any padding: a padded zero times
  ``s`` is still zero;
* a shift, ``x + t`` or ``x - t`` (``Add``/``AddV2``/``BiasAdd``/``Sub``):
  the layer's bias gains ``t @ W`` (``MatMul``) or ``sum W[h, w, k, :] t[k]``
  (``Conv2D`` with ``VALID`` padding only: with ``SAME`` the padded border
  would see ``t`` where the original saw zeros). Only when the layer's sole
  reader is a ``BiasAdd``/``Add`` of a constant bias vector: the pass never
  adds a bias. The converter drops an all-zero bias, and a new one costs
  about 16 bytes per output in int8 (int32 values plus a per-channel scale
  and zero point) against 1 byte per input feature for the ``SUB``'s
  constant: larger as soon as the layer has more than K/16 outputs. So a
  layer without a bias keeps the shift in front of it and takes the scale;
* an inference ``FusedBatchNorm``/``V2``/``V3`` (NHWC, ``is_training``
  false, only output 0 read) is the scale ``γ/√(σ²+ε)`` followed by the
  shift ``β − μ·s``, folded only where both fold.

Each rewrite removes an elementwise op and its constant and resizes no
other tensor, so the converted model should never grow (the benchmark
``benchmarks/graph_passes.py`` checks five models, float32 and int8).
Inexact: the folded weights are rounded once in float32 instead of the
input at run time (differences ~1e-7 relative), so ``graph-optimize`` runs
it only when a recipe names it and verifies with ``tolerance``.
"""

from __future__ import annotations

from typing import Any, Callable

from tinybuild_plugins.sdk.graph_edit import GraphEditor, control_ref, graph_pass, parse_ref, repeat_until_stable, tensor_name, tensor_ref

_SCALES = {"Mul": (0, 1), "RealDiv": (1,)}  # op -> positions the constant may take
_SHIFTS = {"Add": (0, 1), "AddV2": (0, 1), "BiasAdd": (1,), "Sub": (1,)}
_BATCH_NORMS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
_BIAS_OPS = frozenset({"BiasAdd", "Add", "AddV2"})


@graph_pass
def fold_input_affine(editor: GraphEditor) -> None:
    shapes = _LazyShapes(editor)

    def sweep() -> bool:
        before = editor.edits
        for node in editor.topological_order():
            if node.name in editor and _is_layer(node):
                _fold_into(editor, node, shapes)
        return editor.edits != before

    repeat_until_stable(sweep)


class _LazyShapes:
    """Static shapes by tensor name, computed (by importing the graph into
    TensorFlow) only once a candidate needs them: most graphs have none.
    Computed once per application: rewrites keep every surviving tensor's
    shape."""

    def __init__(self, editor: GraphEditor) -> None:
        self._editor = editor
        self._shapes: dict[str, Any] | None = None

    def get(self, name: str) -> Any:
        if self._shapes is None:
            from tinybuild_plugins.sdk import tfgraph as _tfgraph

            self._shapes = _tfgraph.static_shapes(self._editor.graph_def())
        return self._shapes.get(name)


def _is_layer(node: Any) -> bool:
    if node.op == "MatMul":
        return not node.attr["transpose_a"].b
    if node.op == "Conv2D":
        return node.attr["data_format"].s in (b"", b"NHWC")
    return False


def _fold_into(editor: GraphEditor, layer: Any, shapes: _LazyShapes) -> None:
    import numpy as np
    data = [tensor_ref(*d) for d in editor.data_inputs(layer)]
    weights = editor.constant(data[1])
    name, index = parse_ref(data[0])
    if weights is None or weights.dtype.kind != "f" or index != 0 or name not in editor:
        return
    producer = editor.node(name)
    if name in editor.protected or [c.name for c in editor.consumers(name)] != [layer.name]:
        return
    features = _input_features(layer, weights)
    affine = _affine(editor, producer, features, shapes)
    if affine is None:
        return
    x, scale, shift = affine
    bias_node = None
    if shift is not None and np.any(shift):
        if layer.op == "Conv2D" and layer.attr["padding"].s != b"VALID":
            return
        bias_node = _bias_reader(editor, layer, weights)
        if bias_node is None:  # adding a bias could make the shipped model larger (see the module docstring)
            return
    new_weights = _scaled(layer, weights, scale) if scale is not None else weights
    if bias_node is not None:
        bias_ref = tensor_ref(*editor.data_inputs(bias_node)[1])
        bias = editor.constant(bias_ref)
        # the shift comes after the scale (x * s + t): it meets the original weights
        delta = _shift_through(layer, weights.astype(np.float64), shift.astype(np.float64))
        _set_constant_input(editor, bias_node, 1, (bias.astype(np.float64) + delta).astype(bias.dtype), "folded_bias")
    _set_constant_input(editor, layer, 1, new_weights.astype(weights.dtype), "folded_weights")
    controls = [control_ref(c) for c in editor.control_inputs(producer)]
    editor.set_inputs(layer, [x, *layer.input[1:], *controls])
    editor.sweep([producer.name])


def _input_features(layer: Any, weights: np.ndarray) -> int:
    if layer.op == "MatMul":
        return int(weights.shape[1] if layer.attr["transpose_b"].b else weights.shape[0])
    return int(weights.shape[2])


def _affine(editor: GraphEditor, node: Any, features: int, shapes: _LazyShapes) -> tuple[str, Any, Any] | None:
    """``(x, scale, shift)`` such that ``node`` computes ``x * scale + shift``
    per input feature (either may be None), or None if it does not."""
    import numpy as np
    data = [tensor_ref(*d) for d in editor.data_inputs(node)]
    if node.op in _BATCH_NORMS:
        return _batch_norm(editor, node, data, features)
    positions = _SCALES.get(node.op) or _SHIFTS.get(node.op)
    if positions is None or len(data) != 2:
        return None
    for position in positions:
        x = data[1 - position]
        vector = _per_feature(editor.constant(data[position]), features, lambda: _shape(shapes, x),
                              node.op == "BiasAdd")
        if vector is None:
            continue
        if node.op == "Mul":
            return x, vector, None
        if node.op == "RealDiv":
            return (x, 1.0 / vector, None) if np.all(vector != 0) else None
        return x, None, -vector if node.op == "Sub" else vector
    return None


def _batch_norm(editor: GraphEditor, node: Any, data: list[str], features: int) -> Any:
    import numpy as np
    if node.attr["is_training"].b or node.attr["data_format"].s not in (b"", b"NHWC") or len(data) < 5:
        return None
    if any(editor.uses_output(node.name, i) for i in range(1, 6)):
        return None
    gamma, beta, mean, variance = (editor.constant(r) for r in data[1:5])
    # the op requires x's channels to match these vectors: no broadcasting, no shape needed
    if any(v is None or v.shape != (features,) for v in (gamma, beta, mean, variance)):
        return None
    scale = gamma.astype(np.float64) / np.sqrt(variance.astype(np.float64) + node.attr["epsilon"].f)
    return data[0], scale, beta.astype(np.float64) - mean.astype(np.float64) * scale


def _shape(shapes: _LazyShapes, ref: str) -> Any:
    return shapes.get(tensor_name(ref))


def _per_feature(constant: Any, features: int, x_shape: Callable[[], Any], bias: bool) -> np.ndarray | None:
    """``constant`` as a length-``features`` vector if it varies at most along
    the last axis and cannot broadcast ``x`` larger, else None. ``x_shape``
    is only asked when needed: a ``BiasAdd``'s bias always matches x's last
    axis (the op checks it), and static shapes cost a graph import."""
    import numpy as np
    if constant is None or constant.dtype.kind != "f":
        return None
    if any(d != 1 for d in constant.shape[:-1]) or (constant.ndim and constant.shape[-1] not in (1, features)):
        return None
    if not (bias and constant.shape == (features,)):
        shape = x_shape()
        if not shape or shape[-1] != features or constant.ndim > len(shape):
            return None
    return np.broadcast_to(constant.reshape(-1), (features,)).astype(np.float64)


def _bias_reader(editor: GraphEditor, layer: Any, weights: np.ndarray) -> Any | None:
    """The ``BiasAdd``/``Add`` of a constant vector that alone reads ``layer``."""
    readers = editor.consumers(layer.name)
    if len(readers) != 1 or readers[0].op not in _BIAS_OPS or layer.name in editor.protected:
        return None
    reader = readers[0]
    data = editor.data_inputs(reader)
    if len(data) != 2 or data[0] != (layer.name, 0):
        return None
    bias = editor.constant(tensor_ref(*data[1]))
    outputs = int(weights.shape[0] if layer.op == "MatMul" and layer.attr["transpose_b"].b else weights.shape[-1])
    if bias is None or bias.dtype != weights.dtype or bias.shape != (outputs,):
        return None
    return reader


def _scaled(layer: Any, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    import numpy as np
    if layer.op == "MatMul":
        axis_shape = (1, -1) if layer.attr["transpose_b"].b else (-1, 1)
    else:
        axis_shape = (1, 1, -1, 1)
    return weights.astype(np.float64) * scale.reshape(axis_shape)


def _shift_through(layer: Any, weights: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """What a constant input ``shift`` contributes to each output."""
    import numpy as np
    if layer.op == "MatMul":
        return weights @ shift if layer.attr["transpose_b"].b else shift @ weights
    return np.einsum("hwkn,k->n", weights, shift)


def _set_constant_input(editor: GraphEditor, node: Any, position: int, value: np.ndarray, suffix: str) -> None:
    from tinybuild_plugins.sdk import tfgraph as _tfgraph

    old = parse_ref(tensor_ref(*editor.data_inputs(node)[position]))[0]
    const = editor.add_node(f"{node.name}/{suffix}", "Const", (), _tfgraph.const_attrs(value))
    refs = list(node.input)
    data_positions = [i for i, r in enumerate(refs) if not r.startswith("^")]
    refs[data_positions[position]] = const.name
    editor.set_inputs(node, refs)
    editor.sweep([old])
