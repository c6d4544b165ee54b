"""Reading a .tflite flatbuffer, and estimating its tensor arena from tensor lifetimes.

Why estimate at all? A microcontroller runtime (TFLite Micro) places every
activation tensor in one preallocated "tensor arena"; the arena size is what
decides whether a model fits a device's RAM, and it is not written anywhere in
the model. Its lower bound follows from the schedule alone: operators run in
the order they appear in the subgraph, a tensor must exist from the operator
that produces it until its last consumer, and two tensors that are alive at the
same time cannot share bytes. The peak, over the schedule, of the summed sizes
of live tensors is therefore what an ideal memory planner would need.

What the estimate ignores (so the real arena is somewhat larger):

* alignment padding (TFLite Micro aligns each tensor to 16 bytes);
* scratch buffers that kernels request (im2col for convolutions, ...);
* fragmentation: a greedy planner may not reach the ideal packing;
* persistent runtime structures (TfLiteTensor/TfLiteEvalTensor, node data,
  quantization parameters copied at init);
* subgraphs other than the first one (control flow).

Two kinds of tensors are counted as live for the whole run: variables, and
the outputs of operators whose inputs are all constants -- e.g. the float32
weights a float16 model's DEQUANTIZE ops expand at load time. The runtime
computes those once, at preparation, and keeps them (persistent arena), so
they are RAM the model needs even though they are "weights".

Constant tensors (weights, biases, shape operands) live in flash next to the
model, not in the arena, so they are not counted. The flatbuffer is read with
the schema bindings shipped in ``ai_edge_litert`` (object API), so nothing
here needs TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

#: bytes per element of each TFLite TensorType we may meet in small models
_ELEMENT_BYTES = {
    0: 4,   # FLOAT32
    1: 2,   # FLOAT16
    2: 4,   # INT32
    3: 1,   # UINT8
    4: 8,   # INT64
    6: 1,   # BOOL
    7: 2,   # INT16
    8: 8,   # COMPLEX64
    9: 1,   # INT8
    10: 8,  # FLOAT64
    11: 16, # COMPLEX128
    12: 8,  # UINT64
    15: 4,  # UINT32
    16: 2,  # UINT16
    18: 2,  # BFLOAT16
}

_TYPE_NAMES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string",
    6: "bool", 7: "int16", 8: "complex64", 9: "int8", 10: "float64",
    11: "complex128", 12: "uint64", 13: "resource", 14: "variant", 15: "uint32",
    16: "uint16", 17: "int4", 18: "bfloat16",
}


def read_model(model_bytes: bytes):
    """Unpack a .tflite flatbuffer into the schema's object API (``ModelT``)."""
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)


def type_name(tensor_type: int) -> str:
    """"float32", "int8"... for a TFLite TensorType enum value."""
    return _TYPE_NAMES.get(int(tensor_type), f"type{int(tensor_type)}")


def operator_name(model, operator) -> str:
    """Builtin operator name ("CONV_2D") or the custom op's name."""
    from ai_edge_litert import schema_py_generated as schema

    code = model.operatorCodes[operator.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(builtin, f"OP_{builtin}")


def tensor_bytes(tensor) -> int:
    """Size of a tensor's data in bytes (dynamic dimensions count as 1)."""
    shape = [max(int(d), 1) for d in (tensor.shape if tensor.shape is not None else [])]
    per_element = _ELEMENT_BYTES.get(int(tensor.type))
    if per_element is None:
        if int(tensor.type) in (17, 20):  # INT4 / UINT4: two per byte
            return (int(np.prod(shape, dtype=np.int64)) + 1) // 2
        return 0  # strings, resources, variants: not arena data we can size
    return int(np.prod(shape, dtype=np.int64)) * per_element


def constant_data(model, tensor, model_bytes: bytes | None = None) -> np.ndarray | None:
    """The raw bytes of a constant tensor, or None for a runtime tensor."""
    if tensor.buffer <= 0 or model.buffers is None or tensor.buffer >= len(model.buffers):
        return None
    buffer = model.buffers[tensor.buffer]
    if buffer.data is not None and len(buffer.data) > 0:
        return np.asarray(buffer.data, dtype=np.uint8)
    if buffer.offset > 1 and buffer.size > 0 and model_bytes is not None:  # large-model layout
        return np.frombuffer(model_bytes, dtype=np.uint8, count=buffer.size, offset=buffer.offset)
    return None


def is_constant(model, tensor) -> bool:
    if tensor.buffer <= 0 or model.buffers is None or tensor.buffer >= len(model.buffers):
        return False
    buffer = model.buffers[tensor.buffer]
    return (buffer.data is not None and len(buffer.data) > 0) or (buffer.offset > 1 and buffer.size > 0)


@dataclass(frozen=True)
class Lifetime:
    """A tensor that needs arena bytes from operator ``first`` to ``last`` (inclusive)."""

    tensor: int
    size: int
    first: int
    last: int


def lifetimes(
    num_operators: int,
    operators: Sequence[tuple[Sequence[int], Sequence[int]]],
    sizes: Mapping[int, int],
    graph_inputs: Iterable[int],
    graph_outputs: Iterable[int],
    persistent: Iterable[int] = (),
) -> list[Lifetime]:
    """Each arena tensor's [first, last] operator interval.

    ``operators`` are (input indices, output indices) in execution order;
    ``sizes`` maps every *non-constant* tensor to its byte size (tensors absent
    from it are constants and ignored). Graph inputs are alive from the first
    operator, graph outputs until the last, ``persistent`` tensors (variables)
    throughout.
    """
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    end = max(num_operators - 1, 0)
    for t in graph_inputs:
        if t in sizes:
            first[t] = 0
            last[t] = 0
    for index, (ins, outs) in enumerate(operators):
        for t in outs:
            if t in sizes:
                first.setdefault(t, index)
                last[t] = max(last.get(t, index), index)
        for t in ins:
            if t in sizes:
                first.setdefault(t, index)  # read before written: alive from its first use
                last[t] = max(last.get(t, index), index)
    for t in graph_outputs:
        if t in sizes:
            first.setdefault(t, end)
            last[t] = end
    for t in persistent:
        if t in sizes:
            first[t], last[t] = 0, end
    return [Lifetime(t, int(sizes[t]), first[t], last[t]) for t in sorted(first)]


def peak_live_bytes(spans: Sequence[Lifetime], num_operators: int) -> tuple[int, int]:
    """(peak bytes, operator index where the peak is first reached)."""
    live = np.zeros(max(num_operators, 1), dtype=np.int64)
    for span in spans:
        live[span.first : span.last + 1] += span.size
    at = int(np.argmax(live))
    return int(live[at]), at


@dataclass(frozen=True)
class ArenaEstimate:
    peak_bytes: int
    peak_operator: int
    peak_operator_name: str
    activation_tensors: int
    #: sum of all activation tensor sizes: what a planner with no reuse would need
    unshared_bytes: int

    def as_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_operator": self.peak_operator,
            "peak_operator_name": self.peak_operator_name,
            "activation_tensors": self.activation_tensors,
            "unshared_bytes": self.unshared_bytes,
            "method": "peak sum of live non-constant tensors over the first subgraph's "
                      "operator order; ignores alignment, scratch buffers, fragmentation "
                      "and runtime bookkeeping",
        }


def estimate_arena(model_bytes: bytes) -> ArenaEstimate:
    """Peak activation memory of the model's first (main) subgraph."""
    model = read_model(model_bytes)
    graph = model.subgraphs[0]
    tensors = graph.tensors or []
    operators = graph.operators or []
    sizes = {i: tensor_bytes(t) for i, t in enumerate(tensors) if not is_constant(model, t)}
    schedule = [
        ([int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0],
         [int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0])
        for op in operators
    ]
    constants = set(range(len(tensors))) - set(sizes)
    persistent = [i for i, t in enumerate(tensors) if t.isVariable]
    for ins, outs in schedule:  # computed once at load time from constants only
        if ins and all(i in constants for i in ins):
            persistent.extend(outs)
    spans = lifetimes(
        len(operators), schedule, sizes,
        [int(i) for i in (graph.inputs if graph.inputs is not None else [])],
        [int(i) for i in (graph.outputs if graph.outputs is not None else [])],
        persistent,
    )
    peak, at = peak_live_bytes(spans, len(operators))
    name = operator_name(model, operators[at]) if operators else ""
    return ArenaEstimate(
        peak_bytes=peak,
        peak_operator=at,
        peak_operator_name=name,
        activation_tensors=len(spans),
        unshared_bytes=int(sum(s.size for s in spans)),
    )
