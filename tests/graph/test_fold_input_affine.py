"""``fold-input-affine``: a per-feature scale/shift in front of a MatMul or
Conv2D folds into its weights and bias -- and only where that is valid."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 4)).astype(np.float32)
B = RNG.normal(size=4).astype(np.float32)
MEAN = np.array([[0.5, -1.0, 2.0]], np.float32)  # Keras Normalization keeps (1, K)
STD = np.array([[2.0, 0.5, 1.5]], np.float32)
X = RNG.normal(size=(5, 3)).astype(np.float32)
IMAGES = RNG.normal(size=(2, 6, 6, 3)).astype(np.float32)
KERNEL = RNG.normal(size=(3, 3, 3, 2)).astype(np.float32)


def _fold(passes: Any, graph: Any) -> Any:
    return passes["fold-input-affine"].apply(graph)


def _ops(graph: Any) -> list[str]:
    return sorted(node.op for node in graph.graph_def.node if node.op != "Const")


def _close(run_graph: Any, before: Any, after: Any, feeds: dict[str, np.ndarray]) -> None:
    for a, b in zip(run_graph(before, feeds), run_graph(after, feeds)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False], ids=["dense-with-bias", "dense-without-bias"])
def test_a_normalization_in_front_of_a_dense_folds_into_it(bias, make_graph, passes, run_graph, nodes):
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        y = tf.matmul((x - MEAN) / STD, W, name="dense")
        tf.nn.relu(tf.nn.bias_add(y, B) if bias else y, name="out")

    graph = make_graph(build, ("out:0",))
    result = _fold(passes, graph)
    if bias:
        assert _ops(result) == ["BiasAdd", "MatMul", "Placeholder", "Relu"]
        assert nodes(result)["dense"].input[0] == "x"
    else:  # no bias to take the shift (adding one could grow an int8 model): only the scale folds
        assert _ops(result) == ["MatMul", "Placeholder", "Relu", "Sub"]
    _close(run_graph, graph, result, {"x:0": X})
    assert _fold(passes, result).serialize() == result.serialize()  # idempotent


def test_an_input_batch_norm_folds_into_a_valid_convolution(make_graph, passes, run_graph):
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 3], name="x")
        gamma, beta = np.float32([1.5, 0.5, 2.0]), np.float32([0.1, -0.2, 0.3])
        mean, variance = np.float32([0.2, 0.0, -0.4]), np.float32([1.0, 2.0, 0.5])
        y, *_ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean, variance, epsilon=1e-3, is_training=False)
        conv = tf.nn.conv2d(y, KERNEL, 1, "VALID")
        tf.nn.bias_add(conv, np.float32([0.5, -0.5]), name="out")

    graph = make_graph(build, ("out:0",))
    result = _fold(passes, graph)
    assert _ops(result) == ["BiasAdd", "Conv2D", "Placeholder"]
    _close(run_graph, graph, result, {"x:0": IMAGES})


def test_before_a_same_convolution_only_the_scale_folds(make_graph, passes, run_graph):
    """With SAME padding the border sees zeros, not ``0 + t``: the shift stays."""
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 3], name="x")
        shifted = tf.add(x * np.float32([2.0, 3.0, 0.5]), np.float32([1.0, 1.0, 1.0]))
        tf.nn.bias_add(tf.nn.conv2d(shifted, KERNEL, 1, "SAME"), np.float32([0.0, 1.0]), name="out")
        tf.nn.relu(tf.nn.conv2d(x * np.float32([2.0, 3.0, 0.5]), KERNEL, 1, "SAME"), name="scaled_only")

    graph = make_graph(build, ("out:0", "scaled_only:0"))
    result = _fold(passes, graph)
    assert _ops(result).count("Mul") == 1 and _ops(result).count("AddV2") == 1  # the shifted branch is kept whole
    _close(run_graph, graph, result, {"x:0": IMAGES})


@pytest.mark.parametrize("case", ["broadcasts-x", "read-twice", "per-row", "matmul-transposed-a"])
def test_what_would_change_the_result_is_left_alone(case, make_graph, passes):
    def build(tf):
        if case == "broadcasts-x":  # x is [None, 1]: x - mean is [None, 3], not x's shape
            x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
            tf.nn.bias_add(tf.matmul(x - MEAN, W), B, name="out")
            return
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        if case == "read-twice":  # the normalized tensor is also an output
            normalized = tf.subtract(x, MEAN, name="normalized")
            tf.nn.bias_add(tf.matmul(normalized, W), B, name="out")
        elif case == "per-row":  # varies along the batch axis: not per input feature
            tf.nn.bias_add(tf.matmul(tf.compat.v1.placeholder(tf.float32, [5, 3], name="y")
                                     * RNG.normal(size=(5, 1)).astype(np.float32), W), B, name="out")
        else:  # x is [4, 3] and contracted over its first axis: STD is not per input feature
            x4 = tf.compat.v1.placeholder(tf.float32, [4, 3], name="y")
            tf.nn.bias_add(tf.matmul(x4 * STD, np.eye(4, dtype=np.float32), transpose_a=True), B, name="out")

    outputs = ("out:0", "normalized:0") if case == "read-twice" else ("out:0",)
    inputs = ("x:0", "y:0") if case in ("per-row", "matmul-transposed-a") else ("x:0",)
    graph = make_graph(build, outputs, inputs)
    assert _fold(passes, graph).graph_def is graph.graph_def


def test_it_runs_only_where_a_recipe_names_it(passes):
    """It rounds weights once (inexact), so graph-optimize's default list of
    exact passes leaves it out."""
    from tinybuild_plugins.graph.steps import default_pass_names

    assert "fold-input-affine" not in default_pass_names(passes)
    assert "simplify-arithmetic" in default_pass_names(passes)


def test_a_normalized_dense_model_ships_smaller_than_direct_conversion(tf, passes, tmp_path):
    """Keras ``Normalization`` -> Dense: converted directly from Keras the
    .tflite keeps SUB and MUL in front of FULLY_CONNECTED; through
    graph-optimize with fold-input-affine (verified under its tolerance) it
    is the FULLY_CONNECTED ops alone, smaller, with the same predictions."""
    from tinybuild.api import Kind
    from tinybuild.testing import artifact_from_dir, run_step
    from tinybuild_plugins.graph.steps import tinybuild_step_types as graph_steps
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.sdk.keras_model import save_keras_model
    from tinybuild_plugins.tflite import litert
    from tinybuild_plugins.tflite.convert import tinybuild_step_types as tflite_steps

    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    layers = keras.layers
    rng = np.random.default_rng(1)
    inputs = layers.Input((20,))
    x = layers.Normalization(mean=rng.normal(0, 1, 20), variance=rng.uniform(0.5, 2, 20))(inputs)
    x = layers.Dense(8, activation="relu", bias_initializer="ones")(x)
    model = keras.Model(inputs, layers.Dense(3)(x))
    save_keras_model(model, tmp_path / "model")
    keras_model = artifact_from_dir("model", Kind.KERAS_MODEL, tmp_path / "model")

    steps = {s.name: s for s in graph_steps()}
    frozen = run_step(steps["graph-freeze"], [keras_model], step="frozen")
    names = ["remove-identity", "remove-noop", "fold-constants", "simplify-arithmetic", "fold-input-affine",
             "remove-dead"]
    optimized = run_step(steps["graph-optimize"], [frozen], {"passes": names, "tolerance": 1e-5},
                         passes=passes, step="optimized")
    assert "fold-input-affine" in optimized.metrics["applied"]
    assert optimized.metrics["verification"]["passed"] and not optimized.metrics["verification"]["exact"]

    tflite = tflite_steps()[0]
    direct = run_step(tflite, [keras_model], step="direct")
    folded = run_step(tflite, [optimized], step="folded")
    assert direct.metrics["ops"] == {"FULLY_CONNECTED": 2, "MUL": 1, "SUB": 1}
    assert folded.metrics["ops"] == {"FULLY_CONNECTED": 2}
    assert folded.metrics["size_bytes"] < direct.metrics["size_bytes"]
    sample = rng.normal(size=(4, 20)).astype(np.float32)
    outputs = [litert.predict(litert.interpreter((a.path / "model.tflite").read_bytes()), sample)
               for a in (direct, folded)]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
