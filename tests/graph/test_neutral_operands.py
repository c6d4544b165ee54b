"""``simplify-arithmetic`` on computed neutral operands (``ZerosLike``,
``OnesLike``, ``Fill``): removed exactly when the result is ``x`` itself,
kept when the neutral tensor could broadcast ``x`` larger, and the end-to-end
effect on the converted .tflite."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

X = np.arange(-6, 6, dtype=np.float32).reshape(4, 3) / 4
ARITHMETIC = frozenset({"Add", "AddV2", "Sub", "Mul", "BiasAdd"})
FILLS = frozenset({"ZerosLike", "OnesLike", "Fill"})


def _x(tf: Any, shape: list[int | None] = [None, 3]) -> Any:
    return tf.compat.v1.placeholder(tf.float32, shape, name="x")


def _simplify(passes: Any, graph: Any) -> Any:
    return passes["simplify-arithmetic"].apply(graph)


def _ops(graph: Any) -> set[str]:
    return {node.op for node in graph.graph_def.node}


@pytest.mark.parametrize("expression", [
    lambda tf, x: tf.add(x, tf.zeros_like(x)),
    lambda tf, x: tf.add(tf.zeros_like(x), x),
    lambda tf, x: tf.raw_ops.AddV2(x=x, y=tf.zeros_like(x)),
    lambda tf, x: tf.subtract(x, tf.zeros_like(x)),
    lambda tf, x: tf.multiply(x, tf.ones_like(x)),
    lambda tf, x: tf.multiply(tf.ones_like(x), x),
    lambda tf, x: tf.add(x, tf.fill([3], 0.0)),       # a Fill that matches x's last dimension
    lambda tf, x: tf.multiply(x, tf.fill([1, 3], 1.0)),
    lambda tf, x: tf.add(x, tf.fill([], 0.0)),        # a scalar fill
    lambda tf, x: tf.nn.bias_add(x, tf.zeros_like(tf.constant([1.0, 2.0, 3.0]))),
], ids=["x+zeros_like(x)", "zeros_like(x)+x", "AddV2", "x-zeros_like(x)", "x*ones_like(x)", "ones_like(x)*x",
        "x+fill([3],0)", "x*fill([1,3],1)", "x+fill([],0)", "bias_add(zeros_like(b))"])
def test_a_computed_neutral_operand_is_removed_and_the_result_is_x(expression, make_graph, passes, run_graph, nodes):
    def build(tf):
        x = _x(tf)
        tf.nn.relu(expression(tf, x), name="out")

    graph = make_graph(build, ("out:0",))
    result = _simplify(passes, graph)
    assert list(nodes(result)["out"].input) == ["x"]
    # the neutral operand and what computed it are gone (tf.fill([], v) also
    # leaves an unused Const of its own, which remove-dead deals with)
    assert _ops(result).isdisjoint(ARITHMETIC | FILLS), sorted(_ops(result))
    for feed in (X, X[:1]):  # any batch: zeros_like follows x's run-time shape
        before, = run_graph(graph, {"x:0": feed})
        after, = run_graph(result, {"x:0": feed})
        assert after.shape == before.shape
        np.testing.assert_array_equal(after, before)


def test_a_signature_output_keeps_its_name_as_an_identity(make_graph, passes, nodes, run_graph):
    def build(tf):
        x = _x(tf)
        tf.add(x, tf.zeros_like(x), name="out")

    graph = make_graph(build, ("out:0",))
    result = _simplify(passes, graph)
    assert set(nodes(result)) == {"x", "out"}
    assert nodes(result)["out"].op == "Identity" and list(nodes(result)["out"].input) == ["x"]
    np.testing.assert_array_equal(run_graph(result, {"x:0": X})[0], X)


@pytest.mark.parametrize("expression, shape", [
    # zeros of a fully known larger shape: [None, 3] + [4, 3] is [4, 3] when the batch is 1
    (lambda tf, x, y: tf.add(x, tf.fill([4, 3], 0.0)), [None, 3]),
    # zeros_like(y) for another tensor y broadcasting x's size-1 axis to 3
    (lambda tf, x, y: tf.add(x, tf.zeros_like(y)), [None, 1]),
    # zeros_like(y) with an unknown dimension: could be n > 1 where x has 1
    (lambda tf, x, y: tf.add(x, tf.zeros_like(y)), [4, 3]),
    # not the neutral element of the op
    (lambda tf, x, y: tf.add(x, tf.ones_like(x)), [None, 3]),
    (lambda tf, x, y: tf.multiply(x, tf.zeros_like(x)), [None, 3]),
    (lambda tf, x, y: tf.subtract(tf.zeros_like(x), x), [None, 3]),  # 0 - x is -x
    (lambda tf, x, y: tf.add(x, tf.fill([3], 0.5)), [None, 3]),
], ids=["fill-larger", "zeros_like-broadcasts", "zeros_like-unknown-dim", "x+ones", "x*zeros", "zeros-x", "fill-0.5"])
def test_an_operand_that_could_change_x_is_kept(expression, shape, make_graph, passes):
    def build(tf):
        x = _x(tf, shape)
        y = tf.compat.v1.placeholder(tf.float32, [None, 3] if shape == [4, 3] else [2, 3], name="y")
        tf.nn.relu(expression(tf, x, y), name="out")

    graph = make_graph(build, ("out:0",), ("x:0", "y:0"))
    result = _simplify(passes, graph)
    assert result.graph_def is graph.graph_def  # nothing changed


def test_zeros_of_another_dtype_are_not_looked_through(make_graph, passes):
    """Binary ops require one dtype, so zeros of another type reach x only
    through a Cast; the pass does not reason about conversions and keeps it."""
    def build(tf):
        x = _x(tf)
        counts = tf.compat.v1.placeholder(tf.int32, [None, 3], name="counts")
        tf.nn.relu(x + tf.cast(tf.zeros_like(counts), tf.float32), name="out")

    graph = make_graph(build, ("out:0",), ("x:0", "counts:0"))
    result = _simplify(passes, graph)
    assert {"ZerosLike", "Cast", "AddV2"} <= _ops(result)


def test_the_rewrite_is_idempotent(make_graph, passes):
    def build(tf):
        x = _x(tf)
        y = tf.multiply(tf.add(x, tf.zeros_like(x)), tf.ones_like(x))
        tf.identity(tf.subtract(y, tf.fill([3], 0.0)), name="out")

    graph = make_graph(build, ("out:0",))
    once = _simplify(passes, graph)
    assert {"ZerosLike", "OnesLike", "Fill"}.isdisjoint(_ops(once))
    assert _simplify(passes, once).serialize() == once.serialize()


# -- end to end: what ships -------------------------------------------------------


def test_graph_optimize_removes_zeros_like_from_the_shipped_tflite(tf, passes, tmp_path):
    """A Keras model holding ``x + zeros_like(x)``: converted from the frozen
    graph the .tflite keeps ZEROS_LIKE and ADD; after graph-optimize (default,
    exact passes) it has two ops fewer and computes the same."""
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
    inputs = layers.Input((6, 6, 1))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    x = x + tf.zeros_like(x)
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(x)))
    save_keras_model(model, tmp_path / "model")

    steps = {s.name: s for s in graph_steps()}
    frozen = run_step(steps["graph-freeze"], [artifact_from_dir("model", Kind.KERAS_MODEL, tmp_path / "model")],
                      step="frozen")
    optimized = run_step(steps["graph-optimize"], [frozen], passes=passes, step="optimized")
    tflite = tflite_steps()[0]
    plain = run_step(tflite, [frozen], step="plain")
    slim = run_step(tflite, [optimized], step="slim")

    assert plain.metrics["ops"].get("ZEROS_LIKE") == 1
    assert "ZEROS_LIKE" not in slim.metrics["ops"] and "ADD" not in slim.metrics["ops"]
    assert sum(slim.metrics["ops"].values()) == sum(plain.metrics["ops"].values()) - 2
    assert slim.metrics["size_bytes"] < plain.metrics["size_bytes"]
    sample = np.random.default_rng(0).random((1, 6, 6, 1), dtype=np.float32)
    outputs = [litert.predict(litert.interpreter((a.path / "model.tflite").read_bytes()), sample)
               for a in (plain, slim)]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=1e-6)
