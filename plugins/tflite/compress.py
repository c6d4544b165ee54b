"""The ``tflm-compress`` step type: look-up-table compression of weights for TFLite Micro.

A clustered model has few distinct weight values, but a .tflite still stores
one int8 per weight: clustering only shows up in the *gzip* size, and no
microcontroller un-gzips its model. TFLM's compression module
(``tflite_micro.tensorflow.lite.micro.compression``) stores such a tensor
as a table of its distinct values plus bit-packed indices, and inserts a
DECODE operator that expands it at run time -- real flash saved, paid for in
arena (the decoded tensor lives there).

Per tensor, this step picks what the module allows and what is smallest:
the index width is the fewest bits that index the distinct values (16
clusters: 4 bits); one value table for the whole tensor, or one per channel
(axis 0 or the last axis, the axes TFLM's kernels support) where that is
smaller. A tensor quantized per channel is always compressed per channel
along its quantized axis: TFLM's decoder reads one table per scale there,
and a single table decodes wrong values (the TFLM check below caught it).
That costs little: per-channel int8 quantization gives each channel its
own scale, so a clustered kernel has up to ``clusters`` values *per
channel* (but many more across the tensor). A tensor whose compressed form (indices, value
tables, the 16-byte decode header and the DECODE operator's own entries)
would not be smaller is left as it is.

The compressed model is then run on TFLM next to the original on the whole
split: the outputs must be identical, bit for bit, or the step fails.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

from pydantic import Field

from tinybuild.api import Artifact, Kind, Params, StepError, StepType, hookimpl

#: bytes a DECODE operator adds besides indices and tables: its operator
#: entry, the ancillary and output tensors, their buffers, and for the first
#: one the operator code and metadata (measured: 130 B to 350 B)
DECODE_OVERHEAD = 360
#: the decode common metadata header in front of the value tables
DCM_BYTES = 16
#: LUT indices are 1..7 bits wide (tflite_micro ... compression/lut.py)
MAX_INDEX_BITS = 7


class CompressParams(Params):
    max_index_bits: int = Field(
        MAX_INDEX_BITS, ge=1, le=MAX_INDEX_BITS,
        description="widest index (bits) a tensor may need to be compressed: 4 compresses only "
                    "tensors with at most 16 values per table",
    )
    split: Literal["test", "val"] = Field(
        "test", description="dataset split on which TFLM must give identical outputs before and after")
    arena_kb: float = Field(1024, gt=0, le=1 << 20, description="arena TFLM is given for the check (KiB)")


def index_bits(unique: int) -> int:
    """Fewest bits that index ``unique`` values (at least 1)."""
    return max(1, math.ceil(math.log2(unique))) if unique > 1 else 1


def layouts(array: Any, quantized_axis: int | None) -> list[int | None]:
    """The table layouts TFLM decodes correctly for this tensor: None (one
    table) or a channel axis. A tensor quantized per channel must be
    decoded per channel *along its quantized axis*: TFLM's LUT decoder then
    takes one table per scale, and a single table decodes to wrong values
    (tests/plugins/test_tflm_compress.py shows TFLM's outputs then differ)."""
    if quantized_axis is not None:
        return [quantized_axis] if quantized_axis in (0, array.ndim - 1) else []
    axes: list[int | None] = [None]
    if array.ndim >= 2:
        axes += [0, array.ndim - 1]
    return list(dict.fromkeys(axes))


def plan_tensor(array: Any, quantized_axis: int | None = None) -> dict[str, Any] | None:
    """The smallest LUT layout of a constant tensor among ``layouts``. None
    when no layout fits 7-bit indices."""
    import numpy as np

    options = []
    for axis in layouts(array, quantized_axis):
        if axis is None:
            tables, stride = 1, len(np.unique(array))
        else:
            slices = np.moveaxis(array, axis, 0)
            tables, stride = len(slices), max(len(np.unique(s)) for s in slices)
        bits = index_bits(stride)
        if bits > MAX_INDEX_BITS or stride > 128:
            continue
        size = math.ceil(array.size * bits / 8) + tables * stride * array.itemsize + DCM_BYTES
        options.append({"axis": axis, "unique_values": stride, "index_bits": bits, "tables": tables,
                        "estimated_bytes": size + DECODE_OVERHEAD})
    return min(options, key=lambda o: (o["estimated_bytes"], o["axis"] is not None)) if options else None


def choose(model_bytes: bytes, max_bits: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tensors to compress with their layout, tensors left alone and why)."""
    from tflite_micro.tensorflow.lite.micro.compression import constant_inputs, model_editor

    model = model_editor.read(bytes(model_bytes))
    chosen, skipped = [], []
    for s, subgraph in enumerate(model.subgraphs):
        consumed = {id(t) for op in subgraph.operators for t in op.inputs if t is not None}
        for t, tensor in enumerate(subgraph.tensors):
            if tensor.buffer is None or not tensor.buffer.data or id(tensor) not in consumed:
                continue  # not a constant (activations have no data in the flatbuffer)
            array = tensor.array
            entry = {"subgraph": s, "tensor": t, "name": tensor.name, "shape": [int(d) for d in array.shape],
                     "dtype": array.dtype.name, "bytes_before": int(array.nbytes)}
            if constant_inputs.find_uses(subgraph, tensor):
                skipped.append({**entry, "reason": "an operator needs it constant at prepare time"})
                continue
            layout = plan_tensor(array, _per_channel_axis(tensor))
            if layout is None or layout["index_bits"] > max_bits:
                skipped.append({**entry, "reason": f"too many distinct values for {max_bits}-bit indices"})
            elif layout["estimated_bytes"] >= array.nbytes:
                skipped.append({**entry, "reason": f"would grow ({array.nbytes} B -> ~{layout['estimated_bytes']} B "
                                                   f"with {layout['unique_values']} values per table)"})
            else:
                mode = "per-tensor" if layout["axis"] is None else f"per-channel axis {layout['axis']}"
                chosen.append({**entry, **layout, "mode": mode})
    return chosen, skipped


def _nothing_to_compress(source: str, skipped: Sequence[dict[str, Any]]) -> str:
    """Why no tensor was chosen, with the fix that applies: clustering when
    tensors have too many distinct values, nothing when they are too small
    for tables to pay off (clustering more would not help)."""
    worst = max(skipped, key=lambda e: e.get("bytes_before", 0), default=None)
    label = " ".join(str(part) for part in (worst.get("name"), worst["shape"]) if part) if worst else ""
    largest = f" (largest: {label}, {worst['reason']})" if worst else ""  # converters may strip tensor names
    if not skipped:
        return f"'{source}' has no constant weight tensors to compress"
    if all(e["reason"].startswith("would grow") for e in skipped):
        return (f"every weight tensor of '{source}' is too small for LUT compression to save flash: its value "
                f"tables and DECODE metadata would cost more than the indices save{largest}. It pays off on "
                f"kilobytes of clustered weights; ship '{source}' as it is")
    return (f"no weight tensor of '{source}' has few enough distinct values to save flash with LUT "
            f"compression{largest}; cluster the model first (e.g. clusters = 16)")


def _per_channel_axis(tensor: Any) -> int | None:
    """The quantized dimension of a tensor with one scale per channel, else None."""
    quant = tensor.quantization
    scales = getattr(quant, "scales", None)
    if quant is None or not isinstance(scales, (list, tuple)) or len(scales) <= 1:
        return None
    return int(quant.axis or 0)


def compress_model(model_bytes: bytes, chosen: Sequence[dict[str, Any]]) -> bytes:
    from tflite_micro.tensorflow.lite.micro.compression import compress, compressor, spec  # compress: the function

    specs = [
        spec.Tensor(subgraph=c["subgraph"], tensor=c["tensor"], compression=[spec.LookUpTableCompression(
            index_bitwidth=c["index_bits"],
            mode=spec.PerTensor() if c["axis"] is None else spec.PerChannel(axis=c["axis"]))])
        for c in chosen
    ]
    try:
        return bytes(compress(bytes(model_bytes), specs))
    except compressor.CompressionError as exc:
        raise StepError(f"TFLM's compression module refused the model: {exc}") from None


def run(ctx: Any, inputs: Sequence[Artifact], params: CompressParams) -> dict[str, Any]:
    import numpy as np

    from tinybuild_plugins.sdk.dataset import load_dataset
    from tinybuild_plugins.tflite import tflm

    source = inputs[0]
    original = source.file("model.tflite").read_bytes()
    if len(original) < 8 or original[4:8] != b"TFL3":
        raise StepError(f"step '{ctx.step}': model.tflite of '{source.step}' is not a TFLite flatbuffer")
    try:
        chosen, skipped = choose(original, params.max_index_bits)
    except Exception as exc:  # the editor's own parse errors: a broken or unusual flatbuffer
        raise StepError(f"step '{ctx.step}': cannot read the tensors of '{source.step}': {exc}") from None
    if not chosen:
        raise StepError(f"step '{ctx.step}': {_nothing_to_compress(source.step, skipped)}")
    compressed = compress_model(original, chosen)
    out = ctx.out_dir / "model.tflite"
    out.write_bytes(compressed)
    if len(compressed) >= len(original):
        raise StepError(f"step '{ctx.step}': LUT compression did not shrink '{source.step}' "
                        f"({len(original):,} B -> {len(compressed):,} B)")

    dataset = load_dataset(ctx.dataset.path)
    x = dataset.x[params.split]
    arena_size = int(params.arena_kb * 1024)
    ctx.progress(0, 2, "TFLM check")
    before, outputs_before = tflm.run_child(source.file("model.tflite"), x, arena_size, find_min_arena=False)
    if not before["runs"]:
        raise StepError(f"step '{ctx.step}': '{source.step}' {before['reason']}")
    ctx.progress(1, 2, "TFLM check")
    after, outputs_after = tflm.run_child(out, x, arena_size, find_min_arena=False)
    if not after["runs"]:
        raise StepError(f"step '{ctx.step}': the compressed model {after['reason']}")
    if outputs_before.shape != outputs_after.shape or not np.array_equal(outputs_before, outputs_after):
        differ = int(np.sum(np.any(outputs_before != outputs_after, axis=1))) if outputs_before.shape == outputs_after.shape else len(x)
        raise StepError(f"step '{ctx.step}': on TFLM the compressed model's outputs differ from "
                        f"'{source.step}' on {differ} of {len(x)} {params.split} samples")
    section = {
        "bytes_before": len(original), "bytes_after": len(compressed),
        "tensors": [{k: c[k] for k in ("tensor", "shape", "dtype", "mode", "unique_values", "index_bits",
                                       "bytes_before")} for c in chosen],
        "skipped": [{k: e[k] for k in ("tensor", "shape", "dtype", "bytes_before", "reason")} for e in skipped],
        "arena_before_bytes": before["arena_bytes"], "arena_after_bytes": after["arena_bytes"],
        "arena_added_bytes": after["arena_bytes"] - before["arena_bytes"],
        "verified_samples": int(len(x)), "verified_split": params.split, "outputs_identical": True,
    }
    ctx.log(f"{len(original):,} B -> {len(compressed):,} B ({len(chosen)} tensor(s) LUT-compressed); arena "
            f"{before['arena_bytes']:,} B -> {after['arena_bytes']:,} B; TFLM outputs identical on "
            f"{len(x)} {params.split} samples")
    upstream = {k: v for k, v in source.metrics.items() if k in ("quantize", "source")}
    return {**upstream, "compression": section, "size_bytes": len(compressed)}


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [
        StepType(
            name="tflm-compress",
            version="1.0",
            produces=Kind.TFLITE,
            consumes=(Kind.TFLITE,),
            params=CompressParams,
            run=run,
            uses_dataset=True,
            uses_names=False,
            uses_input_metrics=True,  # carries the source's quantize mode into its own metrics
            toolchain=("tflite-micro", "numpy"),
            description="LUT-compress few-valued weight tensors with TFLM's compression module "
                        "(DECODE operators); checks TFLM outputs are identical",
            fingerprint_modules=("tinybuild_plugins.tflite.tflm", "tinybuild_plugins.tflite.tflm_child",
                                 "tinybuild_plugins.tflite.op_resolver", "tinybuild_plugins.tflite.arena",
                                 "tinybuild_plugins.sdk.dataset"),
        )
    ]
