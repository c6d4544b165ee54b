"""Builders with custom layer classes and Lambda layers, through every step.

The example builder (recipes/models/custom_layers.py) has a ``Scale`` layer
(a custom class with a weight and no ``get_config``) and a ``Lambda``. Its
keras-model artifacts record "call this builder" plus weights; later steps
rebuild the model by calling it (sdk.keras_builder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins.keras.models import KERAS
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.keras_model import load_keras_model, save_keras_model

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "recipes" / "models" / "custom_layers.py"
FIT = {"epochs": 1, "batch_size": 32}


@pytest.fixture(scope="module")
def builder_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipe")
    (folder / "models").mkdir()
    shutil.copyfile(EXAMPLE, folder / "models" / "custom_layers.py")
    return folder


@pytest.fixture(scope="module")
def custom_model(mnist_dataset, builder_dir, tmp_path_factory):
    return run_step(KERAS, [], {"builder": "models/custom_layers.py:build", "options": {"filters": 4}},
                    dataset=mnist_dataset, out_dir=tmp_path_factory.mktemp("model"), recipe_dir=builder_dir)


@pytest.fixture(scope="module")
def trained_custom(custom_model, mnist_dataset, tmp_path_factory):
    from tinybuild_plugins.keras.train import TRAIN

    return run_step(TRAIN, [custom_model], {"epochs": 3, "batch_size": 16, "learning_rate": 0.005}, dataset=mnist_dataset,
                    out_dir=tmp_path_factory.mktemp("train"))


def layer_types(model) -> dict[str, str]:
    return {layer.name: type(layer).__name__ for layer in model.layers}


def test_the_artifact_records_the_builder_call_and_no_code(custom_model):
    path = custom_model.path
    assert (path / "builder.py").read_bytes() == EXAMPLE.read_bytes()  # verbatim
    record = json.loads((path / "builder.json").read_text())
    assert record == {"file": "custom_layers.py", "function": "build", "input_shape": [28, 28, 1],
                      "num_classes": 10, "options": {"filters": 4}, "sha256": record["sha256"]}
    text = (path / "model.json").read_text()
    assert text.count('"TinybuildBuilderLayer"') == 2  # Scale and the Lambda
    assert "function_type" not in text and '"Scale"' not in text and '"Lambda"' not in text
    model = load_keras_model(path)
    assert layer_types(model)["scale"] == "Scale" and layer_types(model)["center"] == "Lambda"
    x = np.full((1, 28, 28, 1), 0.5, np.float32)  # centered to zero by the Lambda: only biases remain
    conv = model.get_layer("conv2d")
    centered = model.get_layer("center")(x).numpy()
    assert np.abs(centered).max() == 0.0 and conv.kernel.shape == (3, 3, 1, 4)


def test_training_converting_to_int8_and_evaluating_a_custom_layer_model(trained_custom, mnist_dataset, tmp_path):
    from tinybuild_plugins.report.evaluate import tinybuild_step_types as evaluate_types
    from tinybuild_plugins.sdk.dataset import load_dataset
    from tinybuild_plugins.tflite.convert import tinybuild_step_types as convert_types

    model = load_keras_model(trained_custom.path)
    factor = model.get_layer("scale").factor.numpy()
    assert factor.shape == (4,) and not np.allclose(factor, 1.0)  # the custom layer's weight was trained
    data = load_dataset(mnist_dataset.path)
    keras_accuracy = float((model.predict(data.x["test"], verbose=0).argmax(1) == data.y["test"]).mean())
    assert keras_accuracy > 0.3  # 3 epochs on 210 digits: well above chance (0.1)

    tflite = next(t for t in convert_types() if t.name == "tflite")
    int8 = run_step(tflite, [trained_custom], {"quantize": "int8"}, dataset=mnist_dataset, out_dir=tmp_path / "int8")
    evaluate = next(t for t in evaluate_types() if t.name == "evaluate")
    scores = run_step(evaluate, [int8], {}, dataset=mnist_dataset, out_dir=tmp_path / "eval").metrics
    assert abs(scores["accuracy"] - keras_accuracy) <= 0.05
    keras_scores = run_step(evaluate, [trained_custom], {}, dataset=mnist_dataset, out_dir=tmp_path / "eval_k").metrics
    assert keras_scores["accuracy"] == pytest.approx(keras_accuracy, abs=1e-6)


def test_the_model_artifact_is_byte_identical_across_builds_and_folders(custom_model, mnist_dataset, tmp_path):
    moved = tmp_path / "elsewhere"
    (moved / "nets").mkdir(parents=True)
    shutil.copyfile(EXAMPLE, moved / "nets" / "custom_layers.py")
    again = run_step(KERAS, [], {"builder": "nets/custom_layers.py:build", "options": {"filters": 4}},
                     dataset=mnist_dataset, out_dir=tmp_path / "again", recipe_dir=moved)
    assert again.files == custom_model.files and again.digest == custom_model.digest


def test_pruning_keeps_the_custom_layers(trained_custom, mnist_dataset, tmp_path):
    from tinybuild_plugins.keras.prune import PRUNE

    pruned = run_step(PRUNE, [trained_custom], {"final_sparsity": 0.5, **FIT}, dataset=mnist_dataset,
                      out_dir=tmp_path / "pruned")
    assert set(pruned.metrics["sparsity_per_layer"]) == {"conv2d", "dense"}  # Scale is not prunable: kept as is
    model = load_keras_model(pruned.path)
    assert layer_types(model)["scale"] == "Scale" and layer_types(model)["center"] == "Lambda"
    assert float((model.get_layer("dense").kernel.numpy() == 0).mean()) == pytest.approx(0.5, abs=0.02)
    assert (pruned.path / "builder.py").read_bytes() == EXAMPLE.read_bytes()


@pytest.mark.parametrize("step, params", [("cluster", {"clusters": 4}), ("separable", {})])
def test_clustering_and_the_separable_rewrite_keep_the_custom_layers(trained_custom, mnist_dataset, tmp_path, step,
                                                                      params):
    from tinybuild_plugins.keras.cluster import CLUSTER
    from tinybuild_plugins.keras.separable import SEPARABLE

    art = run_step({"cluster": CLUSTER, "separable": SEPARABLE}[step], [trained_custom], {**params, **FIT},
                   dataset=mnist_dataset, out_dir=tmp_path / step)
    model = load_keras_model(art.path)
    types = layer_types(model)
    assert types["scale"] == "Scale" and types["center"] == "Lambda"
    if step == "cluster":
        assert np.unique(model.get_layer("dense").kernel.numpy()).size <= 4
    else:
        assert types["conv2d_depthwise"] == "DepthwiseConv2D" and "conv2d" not in types
    trained = load_keras_model(trained_custom.path).get_layer("scale").factor.numpy()
    assert model.get_layer("scale").factor.shape == trained.shape


def test_graph_freeze_of_a_custom_layer_model_matches_keras(trained_custom, mnist_dataset, tmp_path):
    from tinybuild_plugins.graph.steps import tinybuild_step_types as graph_types
    from tinybuild_plugins.sdk.graphdef import load_graph
    from tinybuild_plugins.sdk.tfgraph import run_graph

    freeze = next(t for t in graph_types() if t.name == "graph-freeze")
    frozen = run_step(freeze, [trained_custom], {}, dataset=mnist_dataset, out_dir=tmp_path / "frozen")
    assert "graph.pb" in frozen.files
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    expected = load_keras_model(trained_custom.path).predict(x, verbose=0)
    graph = load_graph(frozen)
    got = run_graph(graph.graph_def, graph.outputs, {graph.inputs[0]: x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_qat_of_custom_layers_is_refused_naming_the_layers_and_the_fix(trained_custom, mnist_dataset, tmp_path):
    from tinybuild_plugins.keras.qat import QAT

    with pytest.raises(StepError) as info:
        run_step(QAT, [trained_custom], FIT, dataset=mnist_dataset, out_dir=tmp_path / "qat")
    message = str(info.value)
    for words in ("'center' (Lambda)", "'scale' (Scale)", 'quantize = "int8"'):
        assert words in message, message


def test_model_files_with_lambda_layers_are_still_refused(mnist_dataset, builder_dir, tmp_path):
    keras = _tf.keras()
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2.0)(inputs)))
    keras.Model(inputs, outputs).save(tmp_path / "outside.keras")
    with pytest.raises(StepError, match="outside.keras: layer 'lambda' is a Lambda layer.*builder = "):
        run_step(KERAS, [], {"file": str(tmp_path / "outside.keras")}, dataset=mnist_dataset,
                 out_dir=tmp_path / "model", recipe_dir=tmp_path)


def test_a_tampered_builder_source_in_an_artifact_is_refused(custom_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(custom_model.path, copy)
    (copy / "builder.py").write_text("import os\nos.remove('/nonexistent')\n")
    with pytest.raises(StepError, match="builder.py does not match the sha256 in builder.json"):
        load_keras_model(copy)


def test_custom_layers_saved_outside_a_builder_fail_to_load_and_the_error_says_why(tmp_path):
    from tinybuild_plugins.sdk.keras_builder import load_module

    module = load_module(EXAMPLE.read_bytes(), str(EXAMPLE), "test")
    inputs = _tf.keras().Input((4,))
    model = _tf.keras().Model(inputs, module.Scale(name="scale")(inputs))  # no builder call behind it
    save_keras_model(model, tmp_path)
    assert not (tmp_path / "builder.json").exists()  # the plain layout, as before
    with pytest.raises(StepError, match=r"model.json: layer 'scale' names module 'tinybuild_builder_\w+' \(for 'Scale'\).*supported only in models made by a builder"):
        load_keras_model(tmp_path)


def test_the_example_recipe_builds_and_editing_the_builder_reruns_the_model_and_what_follows(tmp_path):
    """recipes/custom_layers.toml itself, on 200 digits and one epoch."""
    from tinybuild.cli import main

    (tmp_path / "models").mkdir()
    builder = tmp_path / "models" / "custom_layers.py"
    shutil.copyfile(EXAMPLE, builder)
    text = (REPO / "recipes" / "custom_layers.toml").read_text()
    for old, new in (("../data/mnist", str(REPO / "data" / "mnist")), ("limit = 2000", "limit = 200"),
                     ("epochs = 2", "epochs = 1")):
        assert old in text
        text = text.replace(old, new)
    recipe = tmp_path / "custom_layers.toml"
    recipe.write_text(text)

    def build() -> dict:
        lock = tmp_path / "lock.json"
        assert main(["build", str(recipe), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
                     "--lock", str(lock), "--plain"]) == 0
        return {step: (e["key"], e["output"]["digest"]) for step, e in json.loads(lock.read_text())["steps"].items()}

    first = build()
    assert set(first) == {"dataset", "model", "train", "int8", "eval_train", "eval_int8", "report"}
    out = tmp_path / "out" / "custom-layers"
    assert json.loads((out / "eval_int8" / "metrics.json").read_text())["accuracy"] > 0
    builder.write_text(builder.read_text().replace("t - 0.5", "t - 0.25"))  # what the Lambda computes
    second = build()
    assert second["dataset"] == first["dataset"]
    for step in ("model", "train", "int8", "eval_int8"):  # new key, new bytes: the step reran, its output changed
        assert second[step][0] != first[step][0] and second[step][1] != first[step][1], step
    assert "t - 0.25" in (out / "model" / "builder.py").read_text()


def test_distilling_between_two_custom_layer_models_of_one_builder(trained_custom, custom_model, mnist_dataset,
                                                                     tmp_path):
    from tinybuild_plugins.keras.distill import DISTILL

    # teacher and student are both rebuilt from the same builder in one process: each gets its own layers
    art = run_step(DISTILL, [trained_custom, custom_model], FIT, dataset=mnist_dataset, out_dir=tmp_path / "d")
    student = load_keras_model(art.path)
    assert layer_types(student)["scale"] == "Scale" and (art.path / "builder.py").read_bytes() == EXAMPLE.read_bytes()
    before = load_keras_model(custom_model.path).get_layer("scale").factor.numpy()
    assert not np.array_equal(student.get_layer("scale").factor.numpy(), before)  # the student's Scale trained
