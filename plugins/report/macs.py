"""Multiply-accumulate operations (MACs) per inference, from operators and shapes.

Size says how much flash a model takes; MACs say how much work one
inference is, which is what the operations optimizations (depthwise-
separable rewrites, smaller students) change. Both kinds are counted the
same way, per sample (batch dimension excluded):

* convolution: ``output height x output width x kernel height x kernel
  width x input channels per group x output channels``;
* depthwise convolution: ``output height x output width x kernel height x
  kernel width x output channels`` (each output channel reads one input
  channel);
* fully connected / Dense: ``input features x units`` for every output row
  (``units`` alone for a 2-D output);
* separable convolution (Keras): its depthwise part plus a 1x1 convolution.

Everything else (pooling, activations, normalization, reshapes, element-wise
arithmetic, quantize/dequantize) counts 0: those are a small, linear share
of the work of such models, and counting them would mix additions and
comparisons into a multiply-accumulate figure.

A Keras model is read from its layers' configs and shapes (tfmot wrappers
are looked through; nested models are recursed into); a .tflite from the
flatbuffer's operators and tensor shapes (no interpreter needed).
"""

from __future__ import annotations

from typing import Any, Sequence

from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free


def _prod(values: Sequence[Any]) -> int:
    return int(np.prod([int(v) for v in values])) if len(values) else 1


def _spatial(shape: Sequence[Any]) -> int:
    """Output positions of a channels-last tensor (batch and channels excluded)."""
    return _prod(shape[1:-1])


def conv_macs(output_shape: Sequence[int], kernel_shape: Sequence[int]) -> int:
    """Conv1D/2D/3D, channels last: kernel ``[*spatial, in_per_group, out]``."""
    return _spatial(output_shape) * _prod(kernel_shape)


def depthwise_macs(output_shape: Sequence[int], kernel_spatial: Sequence[int]) -> int:
    """Depthwise convolution: one k x k window per output channel and position."""
    return _spatial(output_shape) * _prod(kernel_spatial) * int(output_shape[-1])


def dense_macs(input_shape: Sequence[int], units: int) -> int:
    """Dense on the last axis: every leading position does ``in x units``."""
    return _prod(input_shape[1:-1]) * int(input_shape[-1]) * int(units)


# -- Keras -------------------------------------------------------------------------------


def _unwrap(layer: Any) -> Any:
    """The layer a tfmot wrapper (QuantizeWrapper, PruneLowMagnitude...) holds."""
    while hasattr(layer, "layer") and type(layer).__name__ not in ("Bidirectional", "TimeDistributed"):
        layer = layer.layer
    return layer


def _channels_last(shape: Sequence[Any]) -> list[Any]:
    return [shape[0], *shape[2:], shape[1]]


def _layer_macs(layer: Any, input_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    kind = type(layer).__name__
    if getattr(layer, "data_format", None) == "channels_first":
        input_shape, output_shape = _channels_last(input_shape), _channels_last(output_shape)
    if kind == "DepthwiseConv2D" or kind == "DepthwiseConv1D":
        return depthwise_macs(output_shape, layer.kernel_size)
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        channels = int(input_shape[-1]) * int(layer.depth_multiplier)
        return (depthwise_macs([*output_shape[:-1], channels], layer.kernel_size)
                + _spatial(output_shape) * channels * int(layer.filters))
    if kind in ("Conv1D", "Conv2D", "Conv3D"):
        groups = int(getattr(layer, "groups", 1) or 1)
        return conv_macs(output_shape, [*layer.kernel_size, int(input_shape[-1]) // groups, int(layer.filters)])
    if kind == "Dense":
        return dense_macs(input_shape, layer.units)
    return 0


def keras_macs(model: Any) -> dict[str, Any]:
    """``{"total": int, "per_layer": {name: int}}`` for a built tf_keras model
    (layers with no MACs are left out of ``per_layer``)."""
    per_layer: dict[str, int] = {}

    def visit(container: Any) -> None:
        for layer in container.layers:
            inner = _unwrap(layer)
            if hasattr(inner, "layers") and type(inner).__name__ in ("Sequential", "Functional", "Model"):
                visit(inner)
                continue
            macs = _layer_macs(inner, _first(layer.input_shape), _first(layer.output_shape))
            if macs:
                per_layer[inner.name] = macs

    visit(model)
    return {"total": sum(per_layer.values()), "per_layer": per_layer}


def _first(shape: Any) -> list[Any]:
    if isinstance(shape, list):  # a layer with several inputs: the first one
        shape = shape[0]
    return list(shape)


# -- TFLite ------------------------------------------------------------------------------


def tflite_macs(model_bytes: bytes) -> dict[str, Any]:
    """``{"total": int, "per_op": {"<index>:<OP_NAME>": int}}`` from the
    flatbuffer (first subgraph; the batch dimension is excluded)."""
    from tinybuild_plugins.tflite.arena import operator_name, read_model

    model = read_model(model_bytes)
    graph = model.subgraphs[0]
    tensors = graph.tensors or []
    shape = lambda index: [int(d) for d in (tensors[index].shape if tensors[index].shape is not None else [])]  # noqa: E731
    per_op: dict[str, int] = {}
    for i, op in enumerate(graph.operators or []):
        name = operator_name(model, op)
        ins = [int(t) for t in (op.inputs if op.inputs is not None else [])]
        outs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
        if not outs or len(ins) < 2 or ins[1] < 0:
            continue
        out, weights = shape(outs[0]), shape(ins[1])
        if name in ("CONV_2D", "CONV_3D"):
            # filter [out, kh, kw, in_per_group] (CONV_3D: [kd, kh, kw, in, out])
            macs = _spatial(out) * _prod(weights)
        elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out]
            macs = depthwise_macs(out, weights[1:3])
        elif name == "FULLY_CONNECTED":  # weights [units, in]; output [..., units]
            rows = _prod(out[1:-1]) if len(out) > 2 else 1
            macs = rows * _prod(weights)
        else:
            continue
        per_op[f"{i}:{name}"] = int(macs)
    return {"total": sum(per_op.values()), "per_op": per_op}
