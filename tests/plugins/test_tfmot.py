"""prune, qat and cluster (tfmot) step types, keras-model round trips of their
outputs, and the tiny dataset -> model -> train -> prune -> cluster recipe
built end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.dataset import load_dataset
from tinybuild_plugins.sdk.keras_model import load_keras_model, read_model_meta, save_keras_model
from tinybuild_plugins.keras.cluster import CLUSTER
from tinybuild_plugins.keras.prune import PRUNE, PruneParams, plan_schedule
from tinybuild_plugins.keras.qat import QAT

FAST = {"epochs": 1, "batch_size": 32}
RECIPE = Path(__file__).parent / "recipes" / "tiny-chain.toml"


def step(step_type, model, dataset, tmp_path, params, name="out"):
    return run_step(step_type, [model], {**FAST, **params}, dataset=dataset, out_dir=tmp_path / name)


def kernel(artifact, layer: str) -> np.ndarray:
    return load_keras_model(artifact.path).get_layer(layer).kernel.numpy()


def zeros(values: np.ndarray) -> float:
    return float((values == 0).mean())


# -- prune ---------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, target", [("polynomial", 0.5), ("polynomial", 0.8), ("constant", 0.6)])
def test_pruning_reaches_the_requested_sparsity(trained_cnn, mnist_dataset, tmp_path, schedule, target):
    art = step(PRUNE, trained_cnn, mnist_dataset, tmp_path, {"schedule": schedule, "final_sparsity": target})
    conv, dense = kernel(art, "conv2d"), kernel(art, "dense")  # measured here, not trusted from metrics
    assert zeros(conv) == pytest.approx(target, abs=0.02)
    assert zeros(dense) == pytest.approx(target, abs=0.02)
    overall = float(((conv == 0).sum() + (dense == 0).sum()) / (conv.size + dense.size))
    assert art.metrics["sparsity"] == pytest.approx(overall, abs=1e-6)
    assert art.metrics["sparsity_per_layer"] == {"conv2d": pytest.approx(zeros(conv), abs=1e-6),
                                                 "dense": pytest.approx(zeros(dense), abs=1e-6)}
    model = load_keras_model(art.path)
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert read_model_meta(art.path)["history"] == ["trained", "pruned"]


def test_block_sparsity_zeroes_whole_blocks_of_dense_kernels(trained_cnn, mnist_dataset, tmp_path):
    art = step(PRUNE, trained_cnn, mnist_dataset, tmp_path, {"final_sparsity": 0.5, "block_size": [1, 4]})
    dense = kernel(art, "dense")  # (2028, 10): 10 columns do not divide by 4, so look at full blocks
    blocks = (dense[:, :8] == 0).reshape(2028, 2, 4)
    assert np.all(blocks.all(axis=2) == blocks.any(axis=2))  # each 1x4 block: all zero or none
    assert zeros(dense) == pytest.approx(0.5, abs=0.03)
    assert zeros(kernel(art, "conv2d")) == pytest.approx(0.5, abs=0.02)  # 4-D kernels: element-wise


def test_only_the_selected_layers_are_pruned(trained_cnn, mnist_dataset, tmp_path):
    art = step(PRUNE, trained_cnn, mnist_dataset, tmp_path, {"final_sparsity": 0.9, "layers": ["dense"]})
    assert zeros(kernel(art, "dense")) == pytest.approx(0.9, abs=0.02)
    assert zeros(kernel(art, "conv2d")) < 0.02
    assert set(art.metrics["sparsity_per_layer"]) == {"dense"}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"layers": ["dens"]}, "no layer named 'dens'; the model's layers are: conv2d, max_pooling2d, flatten, dense"),
        ({"layers": ["flatten"]}, "pruning does not support layer\\(s\\) flatten; layers it can handle here: conv2d, dense"),
        ({"end_step": 10_000}, "ends at step 10000 but fine-tuning runs only 7 steps"),
        ({"begin_step": 7}, "begin_step 7 must come before"),
    ],
)
def test_pruning_errors_say_what_to_change(trained_cnn, mnist_dataset, tmp_path, params, message):
    with pytest.raises(StepError, match=message):
        step(PRUNE, trained_cnn, mnist_dataset, tmp_path, params)


def test_schedule_end_lands_on_a_mask_update():
    params = PruneParams(epochs=2, frequency=4)
    assert plan_schedule(params, 7, "s") == {"begin_step": 0, "end_step": 12, "frequency": 4, "total_steps": 14}
    auto = plan_schedule(PruneParams(epochs=10), 110, "s")  # 1100 steps: ~10 updates
    assert auto == {"begin_step": 0, "end_step": 1100, "frequency": 100, "total_steps": 1100}
    by_epoch = plan_schedule(PruneParams(epochs=4, end_epoch=1.5, frequency=5), 10, "s")
    assert by_epoch["end_step"] == 15


@pytest.mark.parametrize(
    "params, message",
    [
        ({"final_sparsity": 1.0}, "less than 1"),
        ({"end_step": 5, "end_epoch": 1}, "not both"),
        ({"initial_sparsity": 0.6, "final_sparsity": 0.5}, "exceeds final_sparsity"),
        ({"schedule": "constant", "initial_sparsity": 0.1}, "only applies"),
        ({"block_size": [0, 2]}, ">= 1"),
        ({"layers": []}, "at least one layer"),
    ],
)
def test_prune_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        PruneParams.model_validate(params)


# -- qat -------------------------------------------------------------------------------------


def test_qat_wraps_the_whole_model_and_converts_to_int8_tflite(qat_cnn, mnist_dataset):
    model = load_keras_model(qat_cnn.path)
    wrappers = [layer.layer.name for layer in model.layers if type(layer).__name__ == "QuantizeWrapperV2"]
    assert {"conv2d", "dense"} <= set(wrappers) and set(qat_cnn.metrics["quantized_layers"]) == set(wrappers)
    assert type(model.layers[0]).__name__ == "QuantizeLayer"
    assert qat_cnn.metrics["val_accuracy"] > 0.5

    tf = _tf.tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in dtypes  # real integer tensors from the learned ranges
    x = load_dataset(mnist_dataset.path).x["test"][:8]
    expected = model.predict(x, verbose=0).argmax(axis=1)
    got = []
    for sample in x:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).argmax())
    assert (np.array(got) == expected).mean() >= 0.75


def test_qat_of_selected_layers(trained_cnn, mnist_dataset, tmp_path):
    art = step(QAT, trained_cnn, mnist_dataset, tmp_path, {"layers": ["dense"]})
    assert "dense" in art.metrics["quantized_layers"] and "conv2d" not in art.metrics["quantized_layers"]
    model = load_keras_model(art.path)
    assert type(model.get_layer("conv2d")).__name__ == "Conv2D"


def test_qat_with_an_unknown_layer(trained_cnn, mnist_dataset, tmp_path):
    with pytest.raises(StepError, match="no layer named 'head'"):
        step(QAT, trained_cnn, mnist_dataset, tmp_path, {"layers": ["head"]})


def qat_kernel(artifact, layer: str) -> np.ndarray:
    """The float kernel inside a quantize-wrapped layer of a saved QAT model."""
    model = load_keras_model(artifact.path)
    wrapper = next(w for w in model.layers if getattr(w, "layer", None) is not None and w.layer.name == layer)
    return next(v.numpy() for v in wrapper.weights if v.name.split("/")[-1] == "kernel:0")


def int8_kernel_zeros(artifact, mnist_dataset, tmp_path) -> float:
    """Share of zero weights in the int8 .tflite made from a QAT model."""
    from tinybuild_plugins.tflite.convert import tinybuild_step_types
    from tinybuild_plugins.tflite.litert import describe

    converted = run_step(tinybuild_step_types()[0], [artifact], {"quantize": "int8"}, dataset=mnist_dataset,
                         out_dir=tmp_path / "int8")
    return describe((converted.path / "model.tflite").read_bytes())["sparsity"]


def test_sparsity_preserving_qat_keeps_every_pruned_zero(pruned_cnn, mnist_dataset, tmp_path):
    plain = step(QAT, pruned_cnn, mnist_dataset, tmp_path, {"epochs": 2}, name="plain")
    kept = step(QAT, pruned_cnn, mnist_dataset, tmp_path, {"epochs": 2, "preserve": "sparsity"}, name="kept")
    for layer in ("conv2d", "dense"):
        pruned_zeros = kernel(pruned_cnn, layer) == 0
        assert pruned_zeros.mean() == pytest.approx(0.75, abs=0.02)
        assert (qat_kernel(kept, layer)[pruned_zeros] == 0).all()  # measured on the saved weights
        assert (qat_kernel(plain, layer)[pruned_zeros] == 0).mean() < 0.5  # plain QAT retrains them away
    assert kept.metrics["zeros_kept"] == 1.0 and plain.metrics["zeros_kept"] < 0.5
    assert kept.metrics["kernels"]["dense"]["sparsity_after"] == pytest.approx(
        float((qat_kernel(kept, "dense") == 0).mean()), abs=1e-6)
    assert int8_kernel_zeros(kept, mnist_dataset, tmp_path / "k") >= 0.74  # and they reach the int8 model


def test_cluster_preserving_qat_keeps_the_shared_values(clustered_cnn, mnist_dataset, tmp_path):
    art = step(QAT, clustered_cnn, mnist_dataset, tmp_path, {"epochs": 2, "preserve": "clusters"})
    for layer in ("conv2d", "dense"):
        assert np.unique(kernel(clustered_cnn, layer)).size <= 8
        assert np.unique(qat_kernel(art, layer)).size <= 8
        assert art.metrics["kernels"][layer]["unique_after"] == np.unique(qat_kernel(art, layer)).size


def test_sparsity_and_cluster_preserving_qat(pruned_cnn, mnist_dataset, tmp_path):
    both = step(CLUSTER, pruned_cnn, mnist_dataset, tmp_path, {"clusters": 8, "preserve_sparsity": True}, name="pc")
    art = step(QAT, both, mnist_dataset, tmp_path, {"epochs": 2, "preserve": "both"})
    dense_zeros = kernel(both, "dense") == 0
    assert dense_zeros.mean() > 0.7
    after = qat_kernel(art, "dense")
    assert (after[dense_zeros] == 0).all() and np.unique(after).size <= 8


@pytest.mark.parametrize("fixture, preserve, message", [
    ("trained_cnn", "sparsity", "no quantized kernel has zero weights"),
    ("pruned_cnn", "clusters", "no quantized kernel is clustered"),
])
def test_preserving_what_the_input_lacks_is_an_error(request, mnist_dataset, tmp_path, fixture, preserve, message):
    with pytest.raises(StepError, match=message):
        step(QAT, request.getfixturevalue(fixture), mnist_dataset, tmp_path, {"preserve": preserve})


# -- cluster ------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["kmeans_plus_plus", "linear", "density_based", "random"])
def test_clustered_kernels_hold_at_most_n_values(trained_cnn, mnist_dataset, tmp_path, init):
    art = step(CLUSTER, trained_cnn, mnist_dataset, tmp_path, {"clusters": 6, "centroid_init": init})
    for layer in ("conv2d", "dense"):
        distinct = np.unique(kernel(art, layer)).size
        assert 1 < distinct <= 6
        assert art.metrics["distinct_values"][f"{layer}/kernel"] == distinct
    bias = load_keras_model(art.path).get_layer("dense").bias.numpy()
    assert np.unique(bias).size > 6  # biases are not clustered


def test_sparsity_preserving_clustering_keeps_the_zeros(pruned_cnn, mnist_dataset, tmp_path):
    kept = step(CLUSTER, pruned_cnn, mnist_dataset, tmp_path, {"clusters": 8, "preserve_sparsity": True}, "kept")
    lost = step(CLUSTER, pruned_cnn, mnist_dataset, tmp_path, {"clusters": 8}, "lost")
    for layer in ("conv2d", "dense"):
        before, after = kernel(pruned_cnn, layer), kernel(kept, layer)
        assert np.all(after[before == 0] == 0)  # every pruned weight is still zero
        assert zeros(after) == pytest.approx(zeros(before), abs=0.005)
        assert np.unique(after).size <= 8
        assert zeros(kernel(lost, layer)) < 0.5 * zeros(before)  # the option is what keeps them
    assert kept.metrics["sparsity"] == pytest.approx(kept.metrics["sparsity_before"], abs=0.005)
    assert read_model_meta(kept.path)["history"] == ["trained", "pruned", "clustered"]


def test_clustering_a_layer_too_small_for_the_cluster_count(trained_cnn, mnist_dataset, tmp_path):
    with pytest.raises(StepError, match="does not support layer\\(s\\) conv2d; layers it can handle here: dense"):
        step(CLUSTER, trained_cnn, mnist_dataset, tmp_path, {"clusters": 200, "layers": ["conv2d"]})


# -- keras-model round trips -----------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["trained_cnn", "pruned_cnn", "qat_cnn", "clustered_cnn"])
def test_keras_artifacts_round_trip_exactly(request, mnist_dataset, tmp_path, fixture):
    artifact = request.getfixturevalue(fixture)
    x = load_dataset(mnist_dataset.path).x["test"]
    model = load_keras_model(artifact.path)
    save_keras_model(model, tmp_path)
    again = load_keras_model(tmp_path)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    for rel in artifact.files:
        if rel != "meta.json":
            assert (tmp_path / rel).read_bytes() == (artifact.path / rel).read_bytes(), rel
    assert len(model.weights) == len(again.weights)


# -- the recipe, through the CLI -------------------------------------------------------------


def test_tiny_recipe_builds_deterministically_through_the_cli(tmp_path):
    from tinybuild.cli import main

    def build(name: str) -> dict:
        lock = tmp_path / f"{name}.lock.json"
        code = main(["build", str(RECIPE), "--cache-dir", str(tmp_path / name / "cache"),
                     "--out", str(tmp_path / name / "out"), "--lock", str(lock), "--plain"])
        assert code == 0
        steps = json.loads(lock.read_text())["steps"]
        return {step: entry["output"]["digest"] for step, entry in steps.items()}

    first, second = build("a"), build("b")  # two empty caches
    assert set(first) == {"dataset", "model", "train", "pruned", "clustered"}
    assert first == second
    clustered = tmp_path / "a" / "out" / "tiny-chain" / "clustered"
    model = load_keras_model(clustered)
    for layer in ("conv2d", "dense"):
        values = model.get_layer(layer).kernel.numpy()
        assert np.unique(values).size <= 8
        assert zeros(values) == pytest.approx(0.75, abs=0.02)


def test_qat_of_a_layer_tfmot_cannot_wrap_points_to_post_training_int8(mnist_dataset, tmp_path):
    from tinybuild.testing import artifact_from_dir

    keras = _tf.keras()
    model = keras.Sequential([keras.layers.InputLayer(input_shape=(28, 28, 1)), keras.layers.Reshape((28, 28)),
                              keras.layers.Conv1D(2, 3), keras.layers.Flatten(), keras.layers.Dense(10)])
    folder = tmp_path / "conv1d"
    save_keras_model(model, folder)
    conv1d = artifact_from_dir("conv1d", "keras-model", folder)
    with pytest.raises(StepError) as info:
        step(QAT, conv1d, mnist_dataset, tmp_path, {})
    message = str(info.value)
    assert "tfmot cannot quantize this model" in message and 'quantize = "int8"' in message
