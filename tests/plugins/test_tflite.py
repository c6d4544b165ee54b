"""The ``tflite`` step: every quantization mode, QAT ranges, GraphDef input, determinism.

Everything runs on an 8x8 toy problem (three classes told apart by which
quadrant is bright) with a model small enough to train in a second, but with
a Dense kernel above the 1024-weight threshold dynamic-range quantization uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.tflite import arena as _arena
from tinybuild_plugins.tflite import litert as _litert
from tinybuild_plugins.tflite import convert as tflite
from tinybuild_plugins.sdk.dataset import save_dataset
from tinybuild_plugins.sdk.keras_model import save_keras_model

STEP = tflite.tinybuild_step_types()[0]


def quadrant_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images; class c has a bright quadrant c (0: top-left, 1: top-right, 2: bottom)."""
    y = rng.integers(0, 3, n)
    x = rng.random((n, 8, 8, 1), dtype=np.float32) * 0.3
    for i, c in enumerate(y):
        rows, cols = (slice(0, 4), slice(0, 4)) if c == 0 else (slice(0, 4), slice(4, 8)) if c == 1 else (slice(4, 8), slice(0, 8))
        x[i, rows, cols, 0] += 0.7
    return x, y


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    parts = {s: quadrant_data(n, rng) for s, n in (("train", 240), ("val", 30), ("test", 90))}
    out = tmp_path_factory.mktemp("dataset")
    save_dataset(out, {s: p[0] for s, p in parts.items()}, {s: p[1] for s, p in parts.items()},
                 {"input_shape": [8, 8, 1], "num_classes": 3, "class_names": ["a", "b", "c"]})
    return artifact_from_dir("dataset", "dataset", out)


def _tiny_cnn():
    from tinybuild_plugins.sdk import tf as _tf

    _tf.seed_everything(0)
    k = _tf.keras()
    return k.Sequential([
        k.layers.Input((8, 8, 1)),
        k.layers.Conv2D(4, 3, activation="relu"),
        k.layers.MaxPool2D(),
        k.layers.Flatten(),
        k.layers.Dense(32, activation="relu"),  # 36x32 = 1152 weights: dynamic quantization applies
        k.layers.Dense(3, activation="softmax"),
    ])


def _fit(model, dataset, epochs: int):
    from tinybuild_plugins.sdk.dataset import load_dataset

    data = load_dataset(dataset.path)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x["train"], data.y["train"], epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    model = _fit(_tiny_cnn(), dataset, epochs=4)
    out = tmp_path_factory.mktemp("trained")
    save_keras_model(model, out)
    return artifact_from_dir("train", "keras-model", out)


@pytest.fixture(scope="module")
def qat(dataset, trained, tmp_path_factory):
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.sdk.keras_model import load_keras_model

    model = _tf.tfmot().quantization.keras.quantize_model(load_keras_model(trained.path))
    _fit(model, dataset, epochs=1)
    out = tmp_path_factory.mktemp("qat")
    save_keras_model(model, out)
    return artifact_from_dir("qat", "keras-model", out), model


@pytest.fixture(scope="module")
def converted(trained, dataset):
    return {mode: run_step(STEP, [trained], {"quantize": mode}, dataset=dataset, step=mode)
            for mode in ("float32", "float16", "dynamic", "int8", "int8-only")}


def activation_types(model_bytes: bytes) -> set[str]:
    """Types of the non-constant tensors other than the graph's inputs/outputs."""
    model = _arena.read_model(model_bytes)
    graph = model.subgraphs[0]
    io = set(graph.inputs) | set(graph.outputs)
    return {_arena.type_name(t.type) for i, t in enumerate(graph.tensors)
            if i not in io and not _arena.is_constant(model, t)}


def facts(artifact) -> dict:
    return _litert.describe(artifact.file("model.tflite").read_bytes())


def test_float32_keeps_everything_float(converted):
    f = facts(converted["float32"])
    assert f["input_dtypes"] == ["float32"] and f["output_dtypes"] == ["float32"]
    assert set(f["weight_dtypes"]) == {"float32"}
    assert "QUANTIZE" not in f["ops"] and "DEQUANTIZE" not in f["ops"]


def test_float16_stores_float16_weights(converted):
    f = facts(converted["float16"])
    assert f["input_dtypes"] == ["float32"] and f["output_dtypes"] == ["float32"]
    assert set(f["weight_dtypes"]) == {"float16"}
    assert f["ops"]["DEQUANTIZE"] >= 1  # float16 constants are expanded at load time
    assert converted["float16"].metrics["size_bytes"] < converted["float32"].metrics["size_bytes"]


def test_dynamic_quantizes_weights_not_activations(converted):
    data = converted["dynamic"].file("model.tflite").read_bytes()
    f = _litert.describe(data)
    assert f["input_dtypes"] == ["float32"] and f["output_dtypes"] == ["float32"]
    assert "int8" in f["weight_dtypes"]
    assert activation_types(data) == {"float32"}
    assert converted["dynamic"].metrics["representative_samples"] == 0


def test_int8_is_integer_inside_with_float_io(converted):
    data = converted["int8"].file("model.tflite").read_bytes()
    f = _litert.describe(data)
    assert f["input_dtypes"] == ["float32"] and f["output_dtypes"] == ["float32"]
    assert f["ops"]["QUANTIZE"] >= 1 and f["ops"]["DEQUANTIZE"] >= 1
    assert "int8" in activation_types(data)
    assert set(f["weight_dtypes"]) == {"int8", "int32"}  # int8 kernels, int32 biases
    assert converted["int8"].metrics["representative_samples"] == 200  # the default, < 240 train samples


def test_int8_only_has_int8_io_and_no_float_tensor(converted):
    data = converted["int8-only"].file("model.tflite").read_bytes()
    f = _litert.describe(data)
    assert f["input_dtypes"] == ["int8"] and f["output_dtypes"] == ["int8"]
    assert "QUANTIZE" not in f["ops"] and "DEQUANTIZE" not in f["ops"]
    assert activation_types(data) <= {"int8", "int32"}
    runner = _litert.interpreter(data)
    scale, _ = runner.get_input_details()[0]["quantization"]
    assert scale > 0


def test_float_operators_lists_ops_with_a_float_side(converted):
    assert tflite.float_operators(converted["int8-only"].file("model.tflite").read_bytes()) == []
    # int8: float I/O, converted at the edges
    assert tflite.float_operators(converted["int8"].file("model.tflite").read_bytes()) == [
        "QUANTIZE (float32 -> int8)", "DEQUANTIZE (int8 -> float32)"]


def test_int8_only_refuses_ops_the_converter_kept_in_float(dataset, tmp_path):
    """Dense -> tf.math.sin -> Dense: under TFLITE_BUILTINS_INT8 the converter
    keeps SIN as a float op between DEQUANTIZE and QUANTIZE instead of failing,
    and the model has int8 I/O: an integer-only device could not run it."""
    from tinybuild_plugins.sdk import tf as _tf

    tf, k = _tf.tensorflow(), _tf.keras()
    _tf.seed_everything(0)
    inputs = k.Input((8, 8, 1))
    hidden = k.layers.Dense(8)(k.layers.Flatten()(inputs))
    save_keras_model(k.Model(inputs, k.layers.Dense(3)(tf.math.sin(hidden))), tmp_path)
    model = artifact_from_dir("sine", "keras-model", tmp_path)
    with pytest.raises(StepError) as failure:
        run_step(STEP, [model], {"quantize": "int8-only"}, dataset=dataset, step="i8")
    message = str(failure.value)
    assert "step 'i8'" in message and "SIN (float32 -> float32)" in message
    assert "QUANTIZE/DEQUANTIZE" in message and 'use quantize = "int8"' in message
    # with float fallback the same model converts, SIN and all
    fallback = run_step(STEP, [model], {"quantize": "int8"}, dataset=dataset, step="i8f")
    assert "SIN" in fallback.metrics["ops"]


def test_the_flatbuffers_serializer_is_part_of_the_toolchain():
    """_strip re-serializes every model with the flatbuffers package."""
    assert "flatbuffers" in STEP.toolchain


def test_quantized_models_agree_with_float_model(converted, dataset):
    from tinybuild_plugins.sdk.dataset import load_dataset

    x = load_dataset(dataset.path).x["test"]
    reference = _litert.predict(_litert.interpreter(converted["float32"].file("model.tflite").read_bytes()), x).argmax(1)
    for mode in ("float16", "dynamic", "int8", "int8-only"):
        got = _litert.predict(_litert.interpreter(converted[mode].file("model.tflite").read_bytes()), x).argmax(1)
        assert np.mean(got == reference) >= 0.9, mode


def test_representative_samples_are_a_seeded_choice(trained, dataset):
    small = run_step(STEP, [trained], {"quantize": "int8", "representative_samples": 5}, dataset=dataset)
    again = run_step(STEP, [trained], {"quantize": "int8", "representative_samples": 5}, dataset=dataset)
    other_seed = run_step(STEP, [trained], {"quantize": "int8", "representative_samples": 5}, dataset=dataset, seed=7)
    assert small.metrics["representative_samples"] == 5
    assert small.digest == again.digest
    assert small.digest != other_seed.digest  # a different sample calibrates different ranges


def test_conversion_is_byte_deterministic_in_process(trained, dataset, converted):
    for mode in ("float32", "int8"):
        again = run_step(STEP, [trained], {"quantize": mode}, dataset=dataset)
        assert again.file("model.tflite").read_bytes() == converted[mode].file("model.tflite").read_bytes(), mode


def test_conversion_is_byte_deterministic_across_processes(trained, dataset, converted):
    script = textwrap.dedent(f"""
        import hashlib
        from pathlib import Path
        from tinybuild.testing import artifact_from_dir, run_step
        from tinybuild_plugins.tflite import convert as tflite
        step = tflite.tinybuild_step_types()[0]
        model = artifact_from_dir("train", "keras-model", Path({str(trained.path)!r}))
        data = artifact_from_dir("dataset", "dataset", Path({str(dataset.path)!r}))
        for mode in ("float32", "int8-only"):
            out = run_step(step, [model], {{"quantize": mode}}, dataset=data)
            print(mode, hashlib.sha256(out.file("model.tflite").read_bytes()).hexdigest())
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "123"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    digests = dict(line.split() for line in done.stdout.splitlines() if line.startswith(("float32 ", "int8-only ")))
    for mode in ("float32", "int8-only"):
        expected = hashlib.sha256(converted[mode].file("model.tflite").read_bytes()).hexdigest()
        assert digests[mode] == expected, mode


def test_no_conversion_metadata_is_embedded(converted):
    model = _arena.read_model(converted["int8"].file("model.tflite").read_bytes())
    names = {m.name.decode() if isinstance(m.name, bytes) else m.name for m in (model.metadata or [])}
    assert "CONVERSION_METADATA" not in names  # would carry the TF version and options


def test_names_are_stripped_unless_asked_to_keep_them(trained, converted):
    stripped = _arena.read_model(converted["float32"].file("model.tflite").read_bytes())
    assert all(t.name in (None, b"") for t in stripped.subgraphs[0].tensors)
    assert not stripped.signatureDefs
    kept = run_step(STEP, [trained], {"quantize": "float32", "strip_names": False})
    data = kept.file("model.tflite").read_bytes()
    assert len(data) > converted["float32"].metrics["size_bytes"]
    runner = _litert.interpreter(data)
    assert runner.get_signature_list()  # a LiteRT signature runner can find the model's signature
    assert runner.get_input_details()[0]["name"]
    # same weights, same behaviour: stripping only removed strings
    x = np.random.default_rng(1).random((4, 8, 8, 1), dtype=np.float32)
    full = _litert.predict(runner, x)
    lean = _litert.predict(_litert.interpreter(converted["float32"].file("model.tflite").read_bytes()), x)
    np.testing.assert_array_equal(full, lean)


def test_min_runtime_version_metadata_is_dropped_unless_kept(trained, converted):
    lean = _arena.read_model(converted["float32"].file("model.tflite").read_bytes())
    assert not lean.metadata
    kept = run_step(STEP, [trained], {"quantize": "float32", "strip_metadata": False})
    model = _arena.read_model(kept.file("model.tflite").read_bytes())
    assert [m.name for m in model.metadata] in ([b"min_runtime_version"], ["min_runtime_version"])
    assert kept.metrics["size_bytes"] > converted["float32"].metrics["size_bytes"]
    x = np.random.default_rng(2).random((3, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(
        _litert.predict(_litert.interpreter(kept.file("model.tflite").read_bytes()), x),
        _litert.predict(_litert.interpreter(converted["float32"].file("model.tflite").read_bytes()), x))


def test_per_tensor_dense_quantization_has_one_scale_per_dense_kernel(trained, dataset, converted):
    per_tensor = run_step(STEP, [trained], {"quantize": "int8", "per_channel_dense": False}, dataset=dataset)

    def dense_kernel_scales(artifact):
        # read the flatbuffer itself: LiteRT's tensor details broadcast a per-tensor scale
        model = _arena.read_model(artifact.file("model.tflite").read_bytes())
        kernels = [t for t in model.subgraphs[0].tensors
                   if model.buffers[t.buffer].data is not None and len(t.shape) == 2]  # Dense kernels: [units, inputs]
        return sorted(len(t.quantization.scale) for t in kernels)

    assert dense_kernel_scales(converted["int8"]) == [3, 32]  # per output channel
    assert dense_kernel_scales(per_tensor) == [1, 1]
    assert per_tensor.metrics["size_bytes"] < converted["int8"].metrics["size_bytes"]


def test_int8_without_dataset_is_a_clear_error(trained):
    with pytest.raises(StepError, match=r"no \[dataset\]"):
        run_step(STEP, [trained], {"quantize": "int8"})


def test_float_modes_need_no_dataset(trained, converted):
    alone = run_step(STEP, [trained], {"quantize": "dynamic"})
    assert alone.file("model.tflite").read_bytes() == converted["dynamic"].file("model.tflite").read_bytes()


def test_params_are_validated():
    with pytest.raises(ValidationError):
        STEP.params.model_validate({"quantize": "int4"})
    with pytest.raises(ValidationError):
        STEP.params.model_validate({"representative_samples": 0})
    with pytest.raises(ValidationError):
        STEP.params.model_validate({"quantise": "int8"})
    assert STEP.params().quantize == "float32"


def _quantize_layer_scale(model) -> float:
    """Input scale implied by the QAT model's learned input range (tfmot's
    QuantizeLayer keeps min/max variables, 8 bits, narrow_range False)."""
    layer = next(l for l in model.layers if type(l).__name__ == "QuantizeLayer")
    values = {w.name.split("/")[-1].split(":")[0]: float(w.numpy()) for w in layer.weights}
    low = next(v for k, v in values.items() if k.endswith("min"))
    high = next(v for k, v in values.items() if k.endswith("max"))
    return (high - low) / 255.0


def test_qat_models_keep_their_learned_ranges(qat, dataset, tmp_path):
    from tinybuild_plugins.sdk.dataset import load_dataset

    artifact, model = qat
    expected_scale = _quantize_layer_scale(model)
    plain = run_step(STEP, [artifact], {"quantize": "int8"})  # no dataset: QAT needs none
    assert plain.metrics["qat"] is True and plain.metrics["representative_samples"] == 0
    # int8-only must be given calibration data; give it misleading data (100x smaller
    # values): calibrating on it would give a 100x smaller input scale.
    data = load_dataset(dataset.path)
    save_dataset(tmp_path, {s: v * 0.01 for s, v in data.x.items()}, data.y, data.meta)
    misleading = artifact_from_dir("dataset", "dataset", tmp_path)
    only = run_step(STEP, [artifact], {"quantize": "int8-only"}, dataset=misleading)
    assert only.metrics["qat"] is True

    # int8: the first QUANTIZE op's output carries the learned input range.
    tflite_model = _arena.read_model(plain.file("model.tflite").read_bytes())
    graph = tflite_model.subgraphs[0]
    first = next(op for op in graph.operators if _arena.operator_name(tflite_model, op) == "QUANTIZE")
    assert graph.tensors[first.outputs[0]].quantization.scale[0] == pytest.approx(expected_scale, rel=1e-5)
    # int8-only: the int8 input tensor has the same scale, not one calibrated from data.
    runner = _litert.interpreter(only.file("model.tflite").read_bytes())
    assert runner.get_input_details()[0]["quantization"][0] == pytest.approx(expected_scale, rel=1e-5)


def test_graphdef_input_converts_like_the_keras_model(trained, dataset, tmp_path):
    """Freeze the Keras model ourselves, convert the GraphDef, compare predictions."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.sdk.dataset import load_dataset
    from tinybuild_plugins.sdk.keras_model import load_keras_model

    tf = _tf.tensorflow()
    model = load_keras_model(trained.path)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, 8, 8, 1], tf.float32, name="x"))
    frozen = convert_variables_to_constants_v2(function)
    (tmp_path / "graph.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString(deterministic=True))
    (tmp_path / "signature.json").write_text(json.dumps({
        "inputs": [{"name": "x", "tensor": frozen.inputs[0].name, "shape": [None, 8, 8, 1], "dtype": "float32"}],
        "outputs": [{"name": "output_0", "tensor": frozen.outputs[0].name, "shape": [None, 3], "dtype": "float32"}],
    }))
    graph = artifact_from_dir("optimized", "graphdef", tmp_path)

    x = load_dataset(dataset.path).x["test"]
    from_keras = run_step(STEP, [trained], {"quantize": "float32"})
    from_graph = run_step(STEP, [graph], {"quantize": "float32"})
    assert from_graph.metrics["source_kind"] == "graphdef"
    runner = _litert.interpreter(from_graph.file("model.tflite").read_bytes())
    assert list(runner.get_input_details()[0]["shape"]) == [1, 8, 8, 1]  # batch 1 from signature.json
    expected = _litert.predict(_litert.interpreter(from_keras.file("model.tflite").read_bytes()), x)
    got = _litert.predict(runner, x)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))

    int8 = run_step(STEP, [graph], {"quantize": "int8-only"}, dataset=dataset)
    assert facts(int8)["input_dtypes"] == ["int8"]
    again = run_step(STEP, [graph], {"quantize": "int8-only"}, dataset=dataset)
    assert again.digest == int8.digest


def test_graphdef_with_a_wrong_signature_is_a_step_error(trained, tmp_path):
    (tmp_path / "graph.pb").write_bytes(b"")
    (tmp_path / "signature.json").write_text(json.dumps({
        "inputs": [{"name": "x", "tensor": "nope:0", "shape": [None, 8, 8, 1], "dtype": "float32"}],
        "outputs": [{"name": "y", "tensor": "Identity:0", "shape": [None, 3], "dtype": "float32"}],
    }))
    with pytest.raises(StepError, match="nope:0"):
        run_step(STEP, [artifact_from_dir("g", "graphdef", tmp_path)], {"quantize": "float32"})


@pytest.mark.parametrize("fixture", ["trained_cnn", "pruned_cnn", "clustered_cnn", "qat_cnn"])
def test_every_model_plugin_output_converts_to_int8_only(fixture, request, mnist_dataset):
    """The real chain: keras artifacts made by the train/prune/cluster/qat steps
    (shared fixtures in conftest.py) convert to integer-only models that still classify."""
    from tinybuild_plugins.report import evaluate

    model = request.getfixturevalue(fixture)
    converted = run_step(STEP, [model], {"quantize": "int8-only"}, dataset=mnist_dataset, step=f"{fixture}_int8")
    assert converted.metrics["qat"] is (fixture == "qat_cnn")
    assert facts(converted)["input_dtypes"] == ["int8"]
    scores = run_step(evaluate.tinybuild_step_types()[0], [converted], {"latency_runs": 0}, dataset=mnist_dataset)
    assert scores.metrics["accuracy"] > 0.3  # 10 classes: chance is 0.1
    if fixture == "pruned_cnn":
        assert scores.metrics["sparsity"] >= 0.7  # the 75% zeros survive int8 quantization
