"""The ``evaluate`` step against hand computations, and the arena estimate.

The model under test is a single Dense layer whose kernel is the 3x3 identity:
(plus a negligible bias) it predicts the index of the largest feature, so the predictions on a
hand-made test split -- and from them the confusion matrix, accuracy,
precision, recall and F1 -- can be worked out on paper.
"""

from __future__ import annotations

import gzip
import json
from fractions import Fraction

import numpy as np
import pytest

from tinybuild.api import StepError
from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.tflite import arena as _arena
from tinybuild_plugins.tflite import litert as _litert
from tinybuild_plugins.report import evaluate
from tinybuild_plugins.tflite import convert as tflite
from tinybuild_plugins.sdk.dataset import save_dataset
from tinybuild_plugins.sdk.keras_model import save_keras_model

EVALUATE = evaluate.tinybuild_step_types()[0]
TFLITE = tflite.tinybuild_step_types()[0]

#: test split: true labels and features; argmax(features) is the prediction
Y_TEST = np.array([0, 0, 1, 1, 2, 2])
X_TEST = np.array([
    [0.9, 0.1, 0.0],  # true 0, predicted 0
    [0.2, 0.8, 0.1],  # true 0, predicted 1
    [0.1, 0.7, 0.2],  # true 1, predicted 1
    [0.0, 0.6, 0.3],  # true 1, predicted 1
    [0.1, 0.2, 0.9],  # true 2, predicted 2
    [0.8, 0.1, 0.3],  # true 2, predicted 0
], dtype=np.float32)

# Worked out by hand from the table above (rows: true class, columns: predicted).
CONFUSION = [[1, 1, 0],
             [0, 2, 0],
             [1, 0, 1]]
ACCURACY = Fraction(4, 6)
PRECISION = [Fraction(1, 2), Fraction(2, 3), Fraction(1, 1)]  # tp / predicted
RECALL = [Fraction(1, 2), Fraction(2, 2), Fraction(1, 2)]     # tp / actual
F1 = [2 * p * r / (p + r) for p, r in zip(PRECISION, RECALL)]  # 1/2, 4/5, 2/3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    train = rng.random((40, 3), dtype=np.float32)
    x = {"train": train, "val": X_TEST[:2], "test": X_TEST}
    y = {"train": train.argmax(1), "val": Y_TEST[:2], "test": Y_TEST}
    out = tmp_path_factory.mktemp("dataset")
    save_dataset(out, x, y, {"input_shape": [3], "num_classes": 3, "class_names": ["zero", "one", "two"]})
    return artifact_from_dir("dataset", "dataset", out)


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory):
    from tinybuild_plugins.sdk import tf as _tf

    k = _tf.keras()
    model = k.Sequential([k.layers.Input((3,)), k.layers.Dense(3)])
    # a tiny non-zero bias (the converter drops an all-zero one), too small to change any argmax
    model.layers[0].set_weights([np.eye(3, dtype=np.float32), np.array([0.01, 0.02, 0.03], np.float32)])
    out = tmp_path_factory.mktemp("identity")
    save_keras_model(model, out)
    return artifact_from_dir("identity", "keras-model", out)


def read_metrics(artifact) -> dict:
    return json.loads(artifact.file("metrics.json").read_text())


def assert_hand_computed(metrics: dict) -> None:
    assert metrics["confusion_matrix"] == CONFUSION
    assert metrics["accuracy"] == pytest.approx(float(ACCURACY))
    assert metrics["correct"] == 4 and metrics["samples"] == 6
    for row, p, r, f in zip(metrics["per_class"], PRECISION, RECALL, F1):
        assert row["precision"] == pytest.approx(float(p))
        assert row["recall"] == pytest.approx(float(r))
        assert row["f1"] == pytest.approx(float(f))
    assert [row["support"] for row in metrics["per_class"]] == [2, 2, 2]
    assert [row["class"] for row in metrics["per_class"]] == ["zero", "one", "two"]
    assert metrics["macro_f1"] == pytest.approx(float(sum(F1) / 3))


def test_keras_evaluation_matches_the_hand_computation(identity_model, dataset):
    out = run_step(EVALUATE, [identity_model], {"latency_runs": 3, "warmup_runs": 1}, dataset=dataset)
    metrics = read_metrics(out)
    assert_hand_computed(metrics)
    assert metrics["variant"] == "identity" and metrics["model_kind"] == "keras-model"
    assert metrics["param_count"] == 12                      # 3x3 kernel + 3 biases
    assert metrics["sparsity"] == pytest.approx(6 / 9)       # identity kernel: 6 zeros of 9
    weights = sorted(n for n in identity_model.files if n.startswith("weights/"))
    blob = b"".join((identity_model.path / n).read_bytes() for n in weights)
    assert metrics["size_bytes"] == len(blob)
    assert metrics["gzip_bytes"] == len(gzip.compress(blob, 9, mtime=0))
    assert metrics["arena"] is None
    assert "latency_ms" not in metrics                       # machine-dependent: not in the file
    assert out.metrics["latency_ms"] > 0 and out.metrics["accuracy"] == metrics["accuracy"]


def test_tflite_evaluation_matches_the_hand_computation(identity_model, dataset):
    converted = run_step(TFLITE, [identity_model], {"quantize": "float32"}, step="fp32")
    out = run_step(EVALUATE, [converted], {"latency_runs": 3}, dataset=dataset)
    metrics = read_metrics(out)
    assert_hand_computed(metrics)
    data = converted.file("model.tflite").read_bytes()
    assert metrics["variant"] == "fp32" and metrics["model_kind"] == "tflite"
    assert metrics["size_bytes"] == len(data)
    assert metrics["gzip_bytes"] == len(gzip.compress(data, 9, mtime=0))
    assert metrics["param_count"] == 12
    assert metrics["sparsity"] == pytest.approx(6 / 9)
    assert metrics["upstream"]["quantize"] == "float32"
    assert metrics["tflite"]["input_dtypes"] == ["float32"]
    # batch 1, float32: input 3x4 B and output 3x4 B live together during the one op
    assert metrics["arena"]["peak_bytes"] == 24
    assert out.metrics["latency_ms"] > 0


def test_int8_inputs_are_quantized_and_outputs_dequantized(identity_model, dataset):
    converted = run_step(TFLITE, [identity_model], {"quantize": "int8-only"}, dataset=dataset, step="i8")
    metrics = read_metrics(run_step(EVALUATE, [converted], {"latency_runs": 0}, dataset=dataset))
    assert metrics["tflite"]["input_dtypes"] == ["int8"]
    assert_hand_computed(metrics)  # margins of >= 0.1 survive 8-bit quantization


def test_metrics_file_is_reproducible_and_latency_optional(identity_model, dataset):
    converted = run_step(TFLITE, [identity_model], {"quantize": "float32"})
    first = run_step(EVALUATE, [converted], {"latency_runs": 5}, dataset=dataset)
    second = run_step(EVALUATE, [converted], {"latency_runs": 7}, dataset=dataset)
    assert first.file("metrics.json").read_bytes() == second.file("metrics.json").read_bytes()
    skipped = run_step(EVALUATE, [converted], {"latency_runs": 0}, dataset=dataset)
    assert skipped.metrics["latency_ms"] is None


def test_val_split_can_be_evaluated(identity_model, dataset):
    metrics = read_metrics(run_step(EVALUATE, [identity_model], {"split": "val", "latency_runs": 0}, dataset=dataset))
    assert metrics["split"] == "val" and metrics["samples"] == 2
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]
    # class "two" is neither a label nor a prediction here: it has no F1 to average
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_model_that_does_not_fit_the_dataset_is_a_step_error(dataset, tmp_path):
    from tinybuild_plugins.sdk import tf as _tf

    k = _tf.keras()
    model = k.Sequential([k.layers.Input((4,)), k.layers.Dense(3)])
    save_keras_model(model, tmp_path)
    with pytest.raises(StepError, match="shape"):
        run_step(EVALUATE, [artifact_from_dir("wide", "keras-model", tmp_path)], {"latency_runs": 0}, dataset=dataset)


def test_classification_metrics_handle_classes_never_predicted():
    matrix = evaluate.confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 0]), 3)
    scores = evaluate.classification_metrics(matrix, ["a", "b", "c"])
    assert matrix.tolist() == [[1, 0, 0], [2, 0, 0], [0, 0, 0]]
    assert scores["per_class"][1] == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert scores["per_class"][0]["precision"] == pytest.approx(1 / 3)


def test_macro_f1_averages_over_classes_in_the_labels_or_the_predictions():
    """scikit-learn's convention: a class absent from both y_true and y_pred is
    left out, so a perfect model scores 1.0 on a split that misses a class."""
    perfect = evaluate.classification_metrics(
        evaluate.confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), 3), ["a", "b", "c"])
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    assert perfect["per_class"][2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # a class that is only predicted (a false alarm) does count, with F1 0
    alarm = evaluate.classification_metrics(
        evaluate.confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2]), 3), ["a", "b", "c"])
    assert alarm["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)  # F1 of b: p = 1, r = 1/2


def test_models_with_an_unknown_feature_dimension_take_it_from_the_dataset(dataset, tmp_path):
    """Input(shape=(None,)): evaluate runs the Keras model as is; tflite fixes the
    dimension from the dataset (a device needs fixed shapes), or says what to do."""
    from tinybuild_plugins.sdk import tf as _tf

    k = _tf.keras()
    _tf.seed_everything(0)
    inputs = k.Input(shape=(None,))
    pooled = k.layers.GlobalAveragePooling1D()(k.layers.Reshape((-1, 1))(inputs))
    save_keras_model(k.Model(inputs, k.layers.Dense(3)(pooled)), tmp_path)
    model = artifact_from_dir("dyn", "keras-model", tmp_path)

    keras_scores = read_metrics(run_step(EVALUATE, [model], {"latency_runs": 1}, dataset=dataset))
    assert keras_scores["samples"] == 6
    converted = run_step(TFLITE, [model], {"quantize": "float32"}, dataset=dataset, step="fp32")
    runner = _litert.interpreter(converted.file("model.tflite").read_bytes())
    assert list(runner.get_input_details()[0]["shape"]) == [1, 3]  # the dataset's 3 features
    tflite_scores = read_metrics(run_step(EVALUATE, [converted], {"latency_runs": 1}, dataset=dataset))
    assert tflite_scores["confusion_matrix"] == keras_scores["confusion_matrix"]
    int8 = run_step(TFLITE, [model], {"quantize": "int8-only"}, dataset=dataset, step="i8")
    assert read_metrics(run_step(EVALUATE, [int8], {"latency_runs": 0}, dataset=dataset))["samples"] == 6
    with pytest.raises(StepError, match=r"model 'dyn' has an unknown input dimension.*\[None\].*\[dataset\]"):
        run_step(TFLITE, [model], {"quantize": "float32"}, step="fp32")

    # the same through a frozen GraphDef whose signature says [None, None]
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tinybuild_plugins.sdk.keras_model import load_keras_model

    tf = _tf.tensorflow()
    keras_model = load_keras_model(model.path)
    frozen = convert_variables_to_constants_v2(tf.function(lambda x: keras_model(x, training=False))
                                               .get_concrete_function(tf.TensorSpec([None, None], tf.float32, name="x")))
    graph_dir = tmp_path / "graph"
    graph_dir.mkdir()
    (graph_dir / "graph.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString(deterministic=True))
    (graph_dir / "signature.json").write_text(json.dumps({
        "inputs": [{"name": "x", "tensor": frozen.inputs[0].name, "shape": [None, None], "dtype": "float32"}],
        "outputs": [{"name": "y", "tensor": frozen.outputs[0].name, "shape": [None, 3], "dtype": "float32"}],
    }))
    graph = artifact_from_dir("frozen", "graphdef", graph_dir)
    from_graph = run_step(TFLITE, [graph], {"quantize": "float32"}, dataset=dataset, step="graph_fp32")
    assert list(_litert.interpreter(from_graph.file("model.tflite").read_bytes())
                .get_input_details()[0]["shape"]) == [1, 3]
    graph_scores = read_metrics(run_step(EVALUATE, [from_graph], {"latency_runs": 0}, dataset=dataset))
    assert graph_scores["confusion_matrix"] == keras_scores["confusion_matrix"]
    with pytest.raises(StepError, match=r"model 'frozen' has an unknown input dimension"):
        run_step(TFLITE, [graph], {"quantize": "float32"}, step="graph_fp32")


def test_gzip_sizes_key_on_the_zlib_library():
    """gzip_bytes depends on the zlib Python links against, which no
    distribution version in the toolchain names: it enters the key."""
    import zlib

    assert EVALUATE.key_extras(EVALUATE.params(), {}) == {"zlib": zlib.ZLIB_RUNTIME_VERSION}


def test_upstream_facts_drop_machine_dependent_values():
    facts = evaluate.upstream_facts({
        "quantize": "int8", "epochs": 3, "seconds": 12.5, "train_time": 3.0, "latency_ms": 0.2,
        "history": [0.5, 0.3], "nested": {"a": 1}, "final_sparsity": 0.8,
    })
    assert facts == {"quantize": "int8", "epochs": 3, "history": [0.5, 0.3], "final_sparsity": 0.8}


# -- the arena estimate ---------------------------------------------------------------------


def test_lifetimes_on_a_skip_connection_by_hand():
    """a -op0-> b -op1-> c ; (b, c) -op2-> d. b must stay alive across op1 until op2.

    live bytes:  op0: a+b = 10+20 = 30;  op1: b+c = 20+40 = 60;  op2: b+c+d = 65.
    """
    sizes = {0: 10, 1: 20, 2: 40, 3: 5}
    schedule = [([0], [1]), ([1], [2]), ([1, 2], [3])]
    spans = _arena.lifetimes(3, schedule, sizes, graph_inputs=[0], graph_outputs=[3])
    assert {s.tensor: (s.first, s.last) for s in spans} == {0: (0, 0), 1: (0, 2), 2: (1, 2), 3: (2, 2)}
    assert _arena.peak_live_bytes(spans, 3) == (65, 2)


def test_constant_tensors_and_variables_in_lifetimes():
    sizes = {0: 8, 2: 4, 9: 100}  # tensor 1 (absent from sizes) is a constant weight
    spans = _arena.lifetimes(2, [([0, 1], [2]), ([2, 1], [3])], {**sizes, 3: 4},
                             graph_inputs=[0], graph_outputs=[3], persistent=[9])
    # the variable (tensor 9) is live throughout: 100 + max(8+4, 4+4)
    assert _arena.peak_live_bytes(spans, 2) == (112, 0)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """Input(16) -> Dense(64, relu) -> Dense(8) -> softmax, as a keras-model artifact."""
    from tinybuild_plugins.sdk import tf as _tf

    _tf.seed_everything(0)
    k = _tf.keras()
    model = k.Sequential([k.layers.Input((16,)), k.layers.Dense(64, activation="relu"),
                          k.layers.Dense(8), k.layers.Softmax()])
    out = tmp_path_factory.mktemp("mlp")
    save_keras_model(model, out)
    return artifact_from_dir("mlp", "keras-model", out)


def _ops(data: bytes) -> list[str]:
    flat = _arena.read_model(data)
    return [_arena.operator_name(flat, op) for op in flat.subgraphs[0].operators]


def test_arena_estimate_of_a_tiny_mlp_by_hand(mlp):
    """float32, batch 1. Tensors: input 16x4 = 64 B, hidden 64x4 = 256 B,
    logits 8x4 = 32 B, probabilities 32 B.

    op0 FULLY_CONNECTED: input + hidden = 320 B   <- peak
    op1 FULLY_CONNECTED: hidden + logits = 288 B
    op2 SOFTMAX:         logits + probabilities = 64 B
    Without reuse all four would need 384 B.
    """
    data = run_step(TFLITE, [mlp], {"quantize": "float32"}).file("model.tflite").read_bytes()
    assert _ops(data) == ["FULLY_CONNECTED", "FULLY_CONNECTED", "SOFTMAX"]  # the schedule the numbers assume
    estimate = _arena.estimate_arena(data)
    assert estimate.peak_bytes == 320
    assert estimate.peak_operator == 0 and estimate.peak_operator_name == "FULLY_CONNECTED"
    assert estimate.unshared_bytes == 384
    assert estimate.activation_tensors == 4


def test_arena_of_float16_counts_the_expanded_weights_for_the_whole_run(mlp):
    """float16 kernels are DEQUANTIZEd to float32 once, at load time, and kept:
    16x64 + 64x8 = 1536 floats = 6144 B on top of the 320 B activation peak
    (this untrained model's biases are all zero, and the converter drops them)."""
    from tinybuild_plugins.tflite import litert as _litert

    data = run_step(TFLITE, [mlp], {"quantize": "float16"}).file("model.tflite").read_bytes()
    assert _ops(data).count("DEQUANTIZE") == 2
    assert _litert.describe(data)["weight_dtypes"] == {"float16": 16 * 64 + 64 * 8}
    assert _arena.estimate_arena(data).peak_bytes == 320 + 6144
