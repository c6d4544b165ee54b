"""``tflm-compress``: LUT compression with TFLM's module, checked on TFLM.

The model is one Dense layer (256 features -> 10 classes) whose kernel takes
only four values: after int8 quantization it has four distinct int8 values,
so 2-bit indices (640 B) replace 2,560 bytes of weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinybuild.api import StepError
from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.report import evaluate
from tinybuild_plugins.sdk.dataset import save_dataset
from tinybuild_plugins.sdk.keras_model import save_keras_model
from tinybuild_plugins.tflite import compress, tflm
from tinybuild_plugins.tflite import convert as tflite

COMPRESS = compress.tinybuild_step_types()[0]
EVALUATE = evaluate.tinybuild_step_types()[0]
TFLITE = tflite.tinybuild_step_types()[0]

rng = np.random.default_rng(0)
FOUR_VALUED = rng.choice(np.array([-1.0, 0.0, 0.5, 1.0], np.float32), size=(256, 10))
FOUR_VALUED[0, :] = 1.0  # every channel holds the largest magnitude: one scale fits all


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    x = {s: rng.random((n, 256), dtype=np.float32) for s, n in (("train", 60), ("val", 20), ("test", 40))}
    y = {s: (v @ FOUR_VALUED).argmax(1) for s, v in x.items()}
    out = tmp_path_factory.mktemp("dataset")
    save_dataset(out, x, y, {"input_shape": [256], "num_classes": 10})
    return artifact_from_dir("dataset", "dataset", out)


def dense_model(tmp_path_factory, kernel, name):
    from tinybuild_plugins.sdk import tf as _tf

    k = _tf.keras()
    model = k.Sequential([k.layers.Input((256,)), k.layers.Dense(10)])
    model.layers[0].set_weights([kernel, np.linspace(-0.1, 0.1, 10).astype(np.float32)])
    out = tmp_path_factory.mktemp(name)
    save_keras_model(model, out)
    return artifact_from_dir(name, "keras-model", out)


@pytest.fixture(scope="module")
def few_valued(tmp_path_factory, dataset):
    keras = dense_model(tmp_path_factory, FOUR_VALUED, "four")
    return run_step(TFLITE, [keras], {"quantize": "int8-only"}, dataset=dataset, step="four_int8")


def test_index_bits():
    assert [compress.index_bits(n) for n in (1, 2, 3, 4, 16, 17, 128)] == [1, 1, 2, 2, 4, 5, 7]


def test_per_channel_tables_when_channels_differ():
    # each row has its own 4 values (like per-channel int8 scales): 64 values overall
    rows = np.stack([np.array([-2, -1, 1, 2], np.int8)[np.arange(64) % 4] * (r + 1) for r in range(16)])
    layout = compress.plan_tensor(rows.astype(np.int8))
    assert (layout["axis"], layout["index_bits"], layout["unique_values"]) == (0, 2, 4)
    # 256 distinct values need 8 bits: no layout, unless per channel (16 per row -> 4 bits)
    assert compress.plan_tensor(np.arange(256, dtype=np.int16).reshape(16, 16))["axis"] in (0, 1)
    assert compress.plan_tensor(np.arange(256, dtype=np.int16)) is None
    # quantized per channel: only tables along the quantized axis decode right on TFLM
    same = np.tile(np.array([-1, 1], np.int8), (4, 8))
    assert compress.plan_tensor(same)["axis"] is None
    assert compress.plan_tensor(same, quantized_axis=0)["axis"] == 0


def test_compressed_model_is_smaller_and_identical_on_tflm(few_valued, dataset):
    out = run_step(COMPRESS, [few_valued], {}, dataset=dataset, step="lut")
    section = out.metrics["compression"]
    data = out.file("model.tflite").read_bytes()
    original = few_valued.file("model.tflite").read_bytes()
    assert section["bytes_before"] == len(original) and section["bytes_after"] == len(data) < len(original)
    [kernel] = section["tensors"]
    # int8-only quantizes the Dense kernel per channel (axis 0): one 4-value table per channel
    assert (kernel["shape"], kernel["unique_values"], kernel["index_bits"], kernel["mode"]) == (
        [10, 256], 4, 2, "per-channel axis 0")
    # 2,560 B of weights became 640 B of indices + 10 tables of 4 values + a 16 B header + the DECODE op
    assert len(original) - len(data) >= 2560 - 640 - 40 - 16 - compress.DECODE_OVERHEAD
    assert tflm.operators(data) == ["TFLM_DECODE", "FULLY_CONNECTED"]  # a custom op, first in the graph
    # describe() decodes the tables: same parameters and zeros as the original
    from tinybuild_plugins.tflite import litert

    before, after = litert.describe(original), litert.describe(data)
    assert after["param_count"] == before["param_count"] == 2570
    assert after["sparsity"] == before["sparsity"] > 0.2  # about a quarter of the kernel is 0.0
    from tinybuild_plugins.tflite import arena

    model = arena.read_model(data)
    [decode] = [op for op in model.subgraphs[0].operators if arena.operator_name(model, op) == "TFLM_DECODE"]
    source = arena.read_model(original)
    [weights] = [t for t in source.subgraphs[0].tensors if t.shape is not None and list(t.shape) == [10, 256]]
    expected = np.frombuffer(arena.constant_data(source, weights, original).tobytes(), np.int8).reshape(10, 256)
    assert np.array_equal(litert.decode_lut(model, decode, data), expected)
    assert section["outputs_identical"] is True and section["verified_samples"] == 40
    assert section["arena_added_bytes"] == section["arena_after_bytes"] - section["arena_before_bytes"] > 0
    # evaluated on TFLM, the compressed model scores exactly like the original; metrics.json carries the facts
    scores = []
    for model in (few_valued, out):
        result = run_step(EVALUATE, [model], {"latency_runs": 0, "tflm": True}, dataset=dataset)
        scores.append(json.loads(result.file("metrics.json").read_text()))
    assert scores[0]["tflm"]["confusion_matrix"] == scores[1]["tflm"]["confusion_matrix"]
    assert scores[1]["compression"]["bytes_after"] == len(data)
    # LiteRT has no DECODE kernel: the compressed model is scored on TFLM, and says so
    assert "scored_on" not in scores[0] and scores[1]["scored_on"] == "tflm"
    assert scores[1]["accuracy"] == scores[1]["tflm"]["accuracy"] == scores[0]["tflm"]["accuracy"]
    assert scores[1]["tflm"]["max_abs_diff_vs_litert"] is None
    assert scores[1]["tflm"]["arena_bytes"] == section["arena_after_bytes"]


def test_one_table_for_a_per_channel_quantized_tensor_decodes_wrong_on_tflm(few_valued, dataset, tmp_path):
    """Why per-channel tensors get per-channel tables: the TFLM check catches the other layout."""
    data = few_valued.file("model.tflite").read_bytes()
    chosen, _ = compress.choose(data, 7)
    assert [c["axis"] for c in chosen] == [0]
    single = tmp_path / "single.tflite"
    single.write_bytes(compress.compress_model(data, [{**c, "axis": None} for c in chosen]))
    from tinybuild_plugins.sdk.dataset import load_dataset

    test_x = load_dataset(dataset.path).x["test"]
    _, expected = tflm.run_child(few_valued.file("model.tflite"), test_x, 1 << 20, find_min_arena=False)
    _, decoded = tflm.run_child(single, test_x, 1 << 20, find_min_arena=False)
    assert not np.array_equal(expected, decoded)


def test_many_valued_weights_fail_with_a_hint(tmp_path_factory, dataset):
    keras = dense_model(tmp_path_factory, rng.normal(size=(256, 10)).astype(np.float32), "dense")
    model = run_step(TFLITE, [keras], {"quantize": "int8-only"}, dataset=dataset, step="dense_int8")
    with pytest.raises(StepError, match="no weight tensor of 'dense_int8' has few enough distinct values.*cluster"):
        run_step(COMPRESS, [model], {}, dataset=dataset, step="lut")


def test_not_a_flatbuffer_fails(tmp_path, dataset):
    (tmp_path / "model.tflite").write_bytes(b"definitely not a model")
    bogus = artifact_from_dir("bogus", "tflite", tmp_path)
    with pytest.raises(StepError, match="'bogus' is not a TFLite flatbuffer"):
        run_step(COMPRESS, [bogus], {}, dataset=dataset, step="lut")


def test_a_model_too_small_for_tables_is_told_so_not_told_to_cluster():
    from tinybuild_plugins.tflite.compress import _nothing_to_compress

    small = [{"name": "dense/kernel", "shape": [10, 8], "bytes_before": 80,
              "reason": "would grow (80 B -> ~466 B with 6 values per table)"},
             {"name": "conv/kernel", "shape": [8, 3, 3, 1], "bytes_before": 72,
              "reason": "would grow (72 B -> ~300 B with 5 values per table)"}]
    message = _nothing_to_compress("clustered_int8", small)
    assert "too small for LUT compression" in message and "dense/kernel [10, 8]" in message
    assert "cluster the model first" not in message
    busy = small + [{"name": "big", "shape": [100, 100], "bytes_before": 10000,
                     "reason": "too many distinct values for 4-bit indices"}]
    message = _nothing_to_compress("int8", busy)
    assert "cluster the model first" in message and "big [100, 100]" in message
    unnamed = _nothing_to_compress("int8", [{**small[0], "name": None}])
    assert "None" not in unnamed and "largest: [10, 8]" in unnamed
