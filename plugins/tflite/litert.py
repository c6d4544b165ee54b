"""Running .tflite models with the LiteRT interpreter, and describing them.

Evaluation must feed a model exactly what a device would: an ``int8``-input
model gets its features quantized with the input tensor's own scale and
zero-point, and its ``int8`` outputs are dequantized the same way before
taking the argmax. Inference runs one sample at a time (batch 1, the shape a
microcontroller runs), with one thread so latency figures are comparable.

``describe`` reads facts from the flatbuffer (op counts, I/O types, parameter
count, kernel sparsity) without running anything; ``ai_edge_litert`` imports
in a fraction of a second and never pulls in TensorFlow.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any, Callable

from tinybuild.api import StepError

from tinybuild_plugins.tflite import arena as _arena
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free


def interpreter(model_bytes: bytes):
    """A ready-to-run single-threaded LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        runner = Interpreter(model_content=bytes(model_bytes), num_threads=1)
        runner.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise StepError(f"LiteRT cannot load this .tflite model: {exc}") from None
    return runner


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float features → the integer type of a quantized input tensor."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer):
        return values.astype(dtype, copy=False)
    if scale == 0:
        raise StepError(f"input tensor '{detail['name']}' is {dtype} but has no quantization scale")
    info = np.iinfo(dtype)
    q = np.round(values / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Integer outputs of a quantized tensor → float32 (floats pass through)."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(values.dtype, np.integer) and scale != 0:
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return values.astype(np.float32, copy=False)


def _single_io(runner) -> tuple[dict, dict]:
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise StepError(
            f"evaluation supports models with one input and one output; this one has "
            f"{len(inputs)} inputs and {len(outputs)} outputs"
        )
    return inputs[0], outputs[0]


def predict(runner, x: np.ndarray, on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Dequantized outputs for every sample of ``x``, run at batch 1."""
    inp, out = _single_io(runner)
    expected = tuple(int(d) for d in inp["shape"][1:])
    if tuple(x.shape[1:]) != expected:
        raise StepError(
            f"the model expects inputs of shape {list(expected)} but the dataset has "
            f"{list(x.shape[1:])}"
        )
    results = []
    for i in range(len(x)):
        runner.set_tensor(inp["index"], quantize(x[i : i + 1], inp))
        runner.invoke()
        results.append(dequantize(runner.get_tensor(out["index"]), out).reshape(-1))
        if on_progress is not None and (i + 1) % 256 == 0:
            on_progress(i + 1, len(x))
    return np.stack(results) if results else np.zeros((0, 0), dtype=np.float32)


def median_latency_ms(run_once: Callable[[], Any], warmup: int, runs: int) -> float:
    """Median wall time of ``run_once`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def tflite_latency_ms(runner, sample: np.ndarray, warmup: int, runs: int) -> float:
    inp, _ = _single_io(runner)
    runner.set_tensor(inp["index"], quantize(sample, inp))
    return median_latency_ms(runner.invoke, warmup, runs)


def _is_parameter(tensor) -> bool:
    """Weights and biases: float/int8 constants, or int32 constants that carry a
    quantization scale (int8 biases). Plain int32 constants are shape operands."""
    tensor_type = int(tensor.type)
    if tensor_type in (0, 1, 3, 9, 7, 18, 17):  # float32/16, uint8, int8, int16, bfloat16, int4
        return True
    quant = tensor.quantization
    return tensor_type in (2, 4) and quant is not None and quant.scale is not None and len(quant.scale) > 0


def _zero_count(data: np.ndarray, tensor) -> tuple[int, int]:
    """(zero elements, elements) of a constant tensor's raw data."""
    dtype = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64,
             7: np.int16, 9: np.int8, 18: np.uint16}.get(int(tensor.type))
    if dtype is None:
        return 0, 0
    values = np.frombuffer(data.tobytes(), dtype=np.dtype(dtype).newbyteorder("<"))
    zero = 0
    quant = tensor.quantization
    if quant is not None and quant.zeroPoint is not None and len(quant.zeroPoint) == 1:
        zero = int(quant.zeroPoint[0])  # per-tensor asymmetric weights: "0.0" is the zero point
    return int(np.count_nonzero(values == zero)), int(values.size)


_NUMPY_TYPES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}  # by name: NumPy loads lazily


def decode_lut(model, op, model_bytes: bytes) -> np.ndarray | None:
    """The weights a TFLM_DECODE operator of LUT type expands, or None.

    Layout (TFLM's compression module, ``lut.py``): the ancillary tensor is a
    16-byte header -- byte 0 the decode type (0: LUT), byte 5 the channel
    axis (high nibble, 15: one table) and the index width in bits (low
    bits), byte 6 the table stride -- then the value tables; the encoded
    tensor holds the indices, packed most significant bit first."""
    graph = model.subgraphs[0]
    ins = [int(i) for i in op.inputs if i >= 0]
    if len(ins) != 2 or not op.outputs:
        return None
    out = graph.tensors[int(op.outputs[0])]
    packed = _arena.constant_data(model, graph.tensors[ins[0]], model_bytes)
    ancillary = _arena.constant_data(model, graph.tensors[ins[1]], model_bytes)
    dtype = _NUMPY_TYPES.get(int(out.type))
    if packed is None or ancillary is None or dtype is None or len(ancillary) < 16 or ancillary[0] != 0:
        return None
    shape = [max(int(d), 1) for d in out.shape]
    axis, bits, stride = int(ancillary[5]) >> 4, int(ancillary[5]) & 0x7, int(ancillary[6])
    count = int(np.prod(shape))
    unpacked = np.unpackbits(np.asarray(packed, np.uint8))[: count * bits].reshape(count, bits)
    indices = unpacked.dot(1 << np.arange(bits - 1, -1, -1)).reshape(shape)
    tables = np.frombuffer(np.asarray(ancillary[16:], np.uint8).tobytes(), dtype=np.dtype(dtype).newbyteorder("<"))
    tables = tables[: len(tables) // max(stride, 1) * stride].reshape(-1, max(stride, 1))
    if axis == 15:
        return tables[0][indices]
    return tables[np.indices(shape)[axis], indices]


def describe(model_bytes: bytes) -> dict[str, Any]:
    """Facts about a .tflite model read from its flatbuffer."""
    model = _arena.read_model(model_bytes)
    graph = model.subgraphs[0]
    tensors = graph.tensors or []
    ops = Counter(_arena.operator_name(model, op) for op in (graph.operators or []))
    params = 0
    kernel_zeros = kernel_total = 0
    weight_types: Counter[str] = Counter()
    # LUT-compressed weights (tflm-compress): the encoded indices and value tables are not
    # parameters; the tensor a TFLM_DECODE operator outputs is (its zeros are not counted)
    encoded: set[int] = set()
    for op in graph.operators or []:
        if _arena.operator_name(model, op) == "TFLM_DECODE":
            encoded.update(int(i) for i in op.inputs if i >= 0)
            decoded = tensors[int(op.outputs[0])]
            values = decode_lut(model, op, model_bytes)
            params += int(values.size) if values is not None else 0
            weight_types[_arena.type_name(decoded.type)] += int(values.size) if values is not None else 0
            if values is not None and values.ndim >= 2:
                kernel_zeros += _zero_count(np.ascontiguousarray(values).view(np.uint8), decoded)[0]
                kernel_total += int(values.size)
    for index, tensor in enumerate(tensors):
        data = _arena.constant_data(model, tensor, model_bytes)
        if data is None or not _is_parameter(tensor) or index in encoded:
            continue
        elements = int(np.prod([max(int(d), 1) for d in (tensor.shape if tensor.shape is not None else [])]))
        params += elements
        weight_types[_arena.type_name(tensor.type)] += elements
        if tensor.shape is not None and len(tensor.shape) >= 2:
            zeros, total = _zero_count(data, tensor)
            kernel_zeros += zeros
            kernel_total += total
    io = lambda indices: [_arena.type_name(tensors[i].type) for i in (indices if indices is not None else [])]  # noqa: E731
    return {
        "input_dtypes": io(graph.inputs),
        "output_dtypes": io(graph.outputs),
        "ops": dict(sorted(ops.items())),
        "param_count": params,
        "weight_dtypes": dict(sorted(weight_types.items())),
        "sparsity": (kernel_zeros / kernel_total) if kernel_total else 0.0,
    }
