"""The ``tflite`` step type: convert a Keras model or a frozen GraphDef to .tflite.

Quantization modes (``quantize``), from largest to smallest model:

* ``float32`` -- no optimization, float everywhere;
* ``float16`` -- weights stored as float16, dequantized at load time;
* ``dynamic`` -- int8 weights, float activations (no data needed);
* ``int8`` -- full integer quantization with float fallback for ops that have
  no int8 kernel; the model keeps float inputs and outputs. Activation ranges
  are calibrated on a seeded sample of the train split;
* ``int8-only`` -- ``TFLITE_BUILTINS_INT8`` only, int8 inputs and outputs:
  what an integer-only microcontroller runs. Conversion fails (StepError) if
  an op has no int8 kernel. The converter does not always fail by itself: for
  some ops (e.g. SIN) it silently keeps a float kernel wrapped in
  DEQUANTIZE/QUANTIZE, so the converted model is checked operator by operator
  and any op that reads or writes a float tensor is an error naming it.

Quantization-aware-trained models (their graph holds FakeQuant ops) are
converted with the ranges learned during training. ``int8`` passes them no
calibration data (and so needs no dataset). ``int8-only`` still passes the
train sample: the converter refuses integer-only conversion without one even
for QAT graphs (its metrics wrapper checks before it looks at the graph, see
tensorflow/tensorflow#38285), but the learned ranges win -- a test checks that
the activation scales equal the QAT quantizers' ranges.

Keras models are traced at batch 1 and GraphDefs get batch 1 from their
signature: a device runs one sample at a time, and fixed shapes make smaller
files. A model input with an unknown feature dimension
(``Input(shape=(None,))``) takes that dimension from the dataset; without a
dataset it is an error. By default (``strip_names``) tensor names and
signature defs are dropped after conversion with TensorFlow's ``strip_strings``.

Determinism: the converter is told to leave out its conversion metadata
(``exclude_conversion_metadata``: TF version, options), and calibration uses a
sample chosen with the recipe seed, so identical inputs give identical bytes;
the test suite checks it within and across processes.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from typing import Any, Literal, Sequence

from pydantic import Field

from tinybuild.api import Artifact, Kind, Params, StepError, StepType, hookimpl

from tinybuild_plugins.tflite import arena as _arena
from tinybuild_plugins.tflite import litert as _litert
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

MODEL_FILE = "model.tflite"

#: tensor types an integer-only runtime has no kernels for
_FLOAT_TYPES = frozenset({"float32", "float16", "float64", "bfloat16"})

_FAKE_QUANT_OPS = frozenset({
    "FakeQuantWithMinMaxVars",
    "FakeQuantWithMinMaxVarsPerChannel",
    "FakeQuantWithMinMaxArgs",
    "QuantizeAndDequantizeV2",
    "QuantizeAndDequantizeV3",
    "QuantizeAndDequantizeV4",
})

Quantize = Literal["float32", "float16", "dynamic", "int8", "int8-only"]


class TFLiteParams(Params):
    quantize: Quantize = Field(
        "float32",
        description="float32 | float16 (float16 weights) | dynamic (int8 weights, float "
                    "activations) | int8 (full integer, float fallback, float I/O) | "
                    "int8-only (integer ops only, int8 inputs and outputs)",
    )
    strip_names: bool = Field(
        True,
        description="drop tensor names and signature defs (debugging aids a microcontroller never "
                    "reads; ~0.5-1 kB). false keeps them for Netron or LiteRT signature runners",
    )
    strip_metadata: bool = Field(
        True,
        description="drop the min_runtime_version metadata entry: informational, no runtime reads "
                    "it (~60 B). false keeps it",
    )
    per_channel_dense: bool = Field(
        True,
        description="int8 modes: one scale per output channel of Dense (FULLY_CONNECTED) kernels, "
                    "TensorFlow's current default. false uses one scale per tensor, as TensorFlow "
                    "did before 2.x releases made per-channel the default: ~220 B smaller for the "
                    "basic CNN, usually at no cost in accuracy (check the report)",
    )
    representative_samples: int = Field(
        200, ge=1, le=100_000,
        description="train-split samples (seeded choice) that calibrate activation ranges for "
                    "int8 and int8-only; QAT models keep their learned ranges (int8-only still "
                    "passes the sample: the converter insists on one)",
    )


def _needs_calibration(params: TFLiteParams, qat: bool) -> bool:
    """Whether the converter gets representative data (see the module docstring)."""
    return params.quantize == "int8-only" or (params.quantize == "int8" and not qat)


def _has_fake_quant(graph_def: Any) -> bool:
    """True for quantization-aware-trained graphs (the converter's own criterion)."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return any(node.op in _FAKE_QUANT_OPS for node in nodes)


def _representative_data(ctx: Any, input_shape: Sequence[int], count: int, step: str):
    """A generator function over a seeded sample of the train split."""
    from tinybuild_plugins.sdk.dataset import load_dataset

    if ctx.dataset is None:
        raise StepError(
            f"step '{step}': quantize = \"int8\"/\"int8-only\" calibrates activation ranges on "
            "representative data from the train split, but the recipe has no [dataset]; add one, "
            "or use quantize = \"dynamic\" / \"float16\" (no data needed), or quantize = \"int8\" "
            "on a quantization-aware-trained (qat) model"
        )
    x = load_dataset(ctx.dataset.path).x["train"]
    expected = tuple(int(d) for d in input_shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise StepError(
            f"step '{step}': the model's input shape is {list(expected)} but the dataset's "
            f"train features have shape {list(x.shape[1:])}"
        )
    if len(x) == 0:
        raise StepError(f"step '{step}': the dataset's train split is empty; int8 calibration needs samples")
    rng = np.random.default_rng(ctx.seed)
    chosen = np.sort(rng.choice(len(x), size=min(count, len(x)), replace=False))
    sample = x[chosen].astype(np.float32)

    def generate():
        for row in sample:
            yield [row[None, ...]]

    return generate, len(sample)


def _fixed_shape(ctx: Any, feature_dims: Sequence[Any], source: str) -> list[int]:
    """``[1, *feature_dims]`` with every unknown (None) dimension taken from the
    dataset's ``input_shape``: a .tflite model for a device has fixed shapes."""
    from tinybuild_plugins.sdk.dataset import load_meta

    dims = [None if d is None or int(d) < 0 else int(d) for d in feature_dims]
    if all(d is not None for d in dims):
        return [1, *dims]
    unknown = ", ".join(str(i + 1) for i, d in enumerate(dims) if d is None)
    shown = ["None" if d is None else d for d in dims]
    if ctx.dataset is None:
        raise StepError(
            f"step '{ctx.step}': model '{source}' has an unknown input dimension (input shape "
            f"[{', '.join(map(str, shown))}], feature dimension {unknown}); a .tflite model needs fixed shapes. "
            "Give the model's Input a fixed shape, or add a [dataset] to the recipe so the shape is "
            "taken from its samples"
        )
    data_shape = [int(d) for d in load_meta(ctx.dataset.path)["input_shape"]]
    if len(data_shape) != len(dims) or any(d is not None and d != e for d, e in zip(dims, data_shape)):
        raise StepError(
            f"step '{ctx.step}': model '{source}' expects inputs of shape [{', '.join(map(str, shown))}] "
            f"but the dataset's samples have shape {data_shape}"
        )
    return [1, *data_shape]


def _keras_converter(ctx: Any, artifact: Artifact, step: str):
    """Converter for a keras-model artifact, plus its input shape and QAT flag.

    The model is traced at batch 1 (what a device runs) rather than handed to
    ``from_keras_model``: fixed shapes need no shape signatures, which makes
    the file smaller, and the Keras and GraphDef paths then convert alike.
    """
    from tinybuild_plugins.sdk.keras_model import load_keras_model

    tf = _tf.tensorflow()
    model = load_keras_model(artifact.path)
    if len(model.inputs) != 1:
        raise StepError(f"step '{step}': '{artifact.step}' has {len(model.inputs)} inputs; "
                        "tflite converts single-input Keras models")
    shape = _fixed_shape(ctx, model.input_shape[1:], artifact.step)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec(shape, model.inputs[0].dtype, name="input")
    )
    qat = _has_fake_quant(function.graph.as_graph_def())
    return tf.lite.TFLiteConverter.from_concrete_functions([function], model), shape, qat


def _graphdef_converter(ctx: Any, artifact: Artifact, step: str):
    """Converter for a frozen GraphDef: import it into a wrapped function, prune
    it to the signature's tensors and fix the batch dimension to 1."""
    tf = _tf.tensorflow()
    signature = json.loads(artifact.file("signature.json").read_text(encoding="utf-8"))
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(artifact.file("graph.pb").read_bytes())
    except Exception as exc:  # protobuf DecodeError
        raise StepError(f"step '{step}': graph.pb of '{artifact.step}' is not a GraphDef: {exc}") from None
    inputs, outputs = signature.get("inputs", []), signature.get("outputs", [])
    if not inputs or not outputs:
        raise StepError(f"step '{step}': signature.json of '{artifact.step}' lists no inputs or outputs")

    shape = _fixed_shape(ctx, inputs[0]["shape"][1:], artifact.step) if len(inputs) == 1 else None
    nodes = {node.name: node for node in graph_def.node}
    for spec in inputs:
        node = nodes.get(spec["tensor"].split(":")[0])
        if node is None:
            raise StepError(f"step '{step}': input tensor {spec['tensor']} is not in graph.pb of '{artifact.step}'")
        if node.op == "Placeholder":
            batch_one = shape or [1] + [-1 if d is None else int(d) for d in spec["shape"][1:]]
            node.attr["shape"].shape.CopyFrom(tf.TensorShape(batch_one).as_proto())

    def import_graph():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    try:
        feeds = [wrapped.graph.get_tensor_by_name(spec["tensor"]) for spec in inputs]
        fetches = [wrapped.graph.get_tensor_by_name(spec["tensor"]) for spec in outputs]
    except (KeyError, ValueError) as exc:
        raise StepError(f"step '{step}': signature.json of '{artifact.step}' names a missing tensor: {exc}") from None
    function = wrapped.prune(feeds, fetches)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], wrapped)
    return converter, shape, _has_fake_quant(graph_def), len(inputs)


def _configure(converter: Any, params: TFLiteParams, calibration) -> None:
    tf = _tf.tensorflow()
    converter.exclude_conversion_metadata = True  # TF version & options: not part of the model
    if params.quantize == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if params.quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif params.quantize in ("int8", "int8-only"):
        # a private converter switch, stable across the pinned TensorFlow minor version
        converter._experimental_disable_per_channel_quantization_for_dense_layers = not params.per_channel_dense
        if calibration is not None:
            converter.representative_dataset = calibration
        if params.quantize == "int8-only":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


def _strip(model_bytes: bytes, names: bool, metadata: bool) -> bytes:
    """Drop what no runtime reads. ``names``: TensorFlow's own ``strip_strings``
    (tensor/subgraph names, description, signature defs). ``metadata``: the
    ``min_runtime_version`` entry and its buffer. Operator codes stay. The
    converter already serializes with the same flatbuffers builder, so this
    changes no buffer alignment."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(model_bytes)
    if names:
        flatbuffer_utils.strip_strings(model)
    if metadata and model.metadata:
        dropped = {entry.buffer for entry in model.metadata if entry.name in (b"min_runtime_version", "min_runtime_version")}
        model.metadata = [entry for entry in model.metadata if entry.buffer not in dropped] or None
        for index in dropped:  # empty the buffer in place: other indices stay valid
            model.buffers[index].data = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def float_operators(model_bytes: bytes) -> list[str]:
    """Every operator that reads or writes a float tensor, as "SIN (float32 -> float32)",
    in graph order (all subgraphs). Empty for a truly integer-only model. A
    QUANTIZE/DEQUANTIZE between internal tensors always has a float side, so
    it is listed too; an int8 -> int8 requantization is integer and is not."""
    model = _arena.read_model(model_bytes)
    found = []
    for graph in model.subgraphs or []:
        tensors = graph.tensors or []
        for op in graph.operators or []:
            ins = [_arena.type_name(tensors[i].type) for i in (op.inputs if op.inputs is not None else []) if i >= 0]
            outs = [_arena.type_name(tensors[i].type) for i in (op.outputs if op.outputs is not None else []) if i >= 0]
            if _FLOAT_TYPES.intersection(ins + outs):
                found.append(f"{_arena.operator_name(model, op)} ({', '.join(ins)} -> {', '.join(outs)})")
    return found


def _check_integer_only(model_bytes: bytes, step: str) -> None:
    """The converter keeps some float kernels under TFLITE_BUILTINS_INT8 instead
    of failing; an integer-only device could not run the result."""
    found = float_operators(model_bytes)
    if not found:
        return
    # the ops that compute in float; the QUANTIZE/DEQUANTIZE around them follow from those
    computing = [f for f in found if f.split(" ")[0] not in ("QUANTIZE", "DEQUANTIZE")]
    described = ", ".join(f"{item} x{n}" if n > 1 else item for item, n in Counter(computing or found).items())
    if computing and len(computing) < len(found):
        described += f"; plus {len(found) - len(computing)} QUANTIZE/DEQUANTIZE op(s) converting to and from float around them"
    raise StepError(
        f"step '{step}': quantize = \"int8-only\" must give an integer-only model, but the converter "
        f"kept {len(computing) or len(found)} operator(s) in float: {described}. An integer-only runtime "
        "cannot run them: use quantize = \"int8\" (float fallback for ops without an int8 kernel, "
        "float inputs and outputs), or replace those operations in the model"
    )


def _short(exc: Exception) -> str:
    """First meaningful lines of a converter error (they can be pages long)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " | ".join(lines[:6]) or type(exc).__name__


def run(ctx: Any, inputs: Sequence[Artifact], params: TFLiteParams) -> dict[str, Any]:
    source = inputs[0]
    _tf.seed_everything(ctx.seed)
    inputs_count = 1
    if source.kind == Kind.GRAPHDEF:
        converter, shape, qat, inputs_count = _graphdef_converter(ctx, source, ctx.step)
    else:
        converter, shape, qat = _keras_converter(ctx, source, ctx.step)

    calibration, samples = None, 0
    if _needs_calibration(params, qat):
        if inputs_count != 1:
            raise StepError(f"step '{ctx.step}': int8 calibration supports single-input models only")
        calibration, samples = _representative_data(ctx, shape, params.representative_samples, ctx.step)
    _configure(converter, params, calibration)

    ctx.progress(0, 1, f"converting ({params.quantize})")
    try:
        with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": noise here
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs", category=UserWarning)
            model_bytes = bytes(converter.convert())
    except StepError:
        raise
    except Exception as exc:  # converter errors: ConverterError, ValueError, RuntimeError...
        hint = ""
        if params.quantize == "int8-only":
            hint = " (int8-only needs an int8 kernel for every op; try quantize = \"int8\")"
        raise StepError(f"step '{ctx.step}': TFLite conversion failed{hint}: {_short(exc)}") from None
    if params.quantize == "int8-only":
        _check_integer_only(model_bytes, ctx.step)
    if params.strip_names or params.strip_metadata:
        model_bytes = _strip(model_bytes, names=params.strip_names, metadata=params.strip_metadata)
    (ctx.out_dir / MODEL_FILE).write_bytes(model_bytes)
    ctx.progress(1, 1, f"{len(model_bytes)} bytes")

    facts = _litert.describe(model_bytes)
    ctx.log(f"{params.quantize}: {len(model_bytes)} bytes, inputs {facts['input_dtypes']}, "
            f"outputs {facts['output_dtypes']}{' (QAT ranges)' if qat else ''}")
    return {
        "quantize": params.quantize,
        "source_kind": source.kind,
        "qat": qat,
        "representative_samples": samples,
        "size_bytes": len(model_bytes),
        "input_dtypes": facts["input_dtypes"],
        "output_dtypes": facts["output_dtypes"],
        "weight_dtypes": facts["weight_dtypes"],
        "ops": facts["ops"],
        **_training_lineage(source),
    }


def _training_lineage(source: Artifact) -> dict[str, Any]:
    """The Keras model's training lineage (epochs and batch size of train,
    prune, QAT...; see ``fit.save_output_model``), passed on so evaluations
    and reports of the .tflite can still say what went into it."""
    if source.kind != Kind.KERAS_MODEL:
        return {}
    from tinybuild_plugins.sdk.keras_model import read_model_meta

    training = read_model_meta(source.path).get("training")
    return {"training": training} if training else {}


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [
        StepType(
            name="tflite",
            version="1.0",
            produces=Kind.TFLITE,
            consumes=(Kind.KERAS_MODEL, Kind.GRAPHDEF),
            params=TFLiteParams,
            run=run,
            uses_dataset=True,
            dataset_optional=True,
            # flatbuffers: _strip re-serializes the model with it
            toolchain=("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert",
                       "flatbuffers"),
            uses_names=False,  # output depends on content only: renames rerun nothing
            description="Convert a Keras model or frozen GraphDef to .tflite (float32, float16, "
                        "dynamic, int8, int8-only)",
            fingerprint_modules=(
                "tinybuild_plugins.sdk.tf", "tinybuild_plugins.sdk.keras_model", "tinybuild_plugins.sdk.keras_builder",
                "tinybuild_plugins.tflite.litert",
                "tinybuild_plugins.tflite.arena", "tinybuild_plugins.sdk.dataset",
            ),
        )
    ]
