"""Every pass on real frozen graphs: a Keras model (outputs must not move) and
a tf.while_loop function (must pass through untouched and still run)."""

from __future__ import annotations

import numpy as np
import pytest

from tinybuild_plugins.graph.passes import DEFAULT_ORDER

ALL_PASSES = list(DEFAULT_ORDER)


@pytest.fixture(scope="module")
def runner(bn_signature):
    from tinybuild_plugins.graph.verify import Runner, sample_inputs

    return Runner(sample_inputs(bn_signature, None, samples=8, seed=0))


@pytest.mark.parametrize("name", ALL_PASSES)
def test_each_pass_keeps_a_keras_models_outputs(bn_graph, passes, runner, name):
    graph_pass = passes[name]
    result = graph_pass.apply(bn_graph)
    difference, failure = runner.difference(bn_graph, result)
    assert failure is None
    if graph_pass.exact:
        assert difference == 0.0, f"{name} claims to be exact"
    else:
        assert difference <= 1e-5
    assert graph_pass.apply(result).serialize() == result.serialize(), f"{name} is not idempotent"


def test_passes_together_strip_a_keras_graph_to_its_computation(bn_graph, passes, runner):
    from tinybuild_plugins.sdk.graph_edit import op_counts
    from tinybuild_plugins.graph.optimize import run_to_fixed_point

    result = run_to_fixed_point(bn_graph, [passes[n] for n in ALL_PASSES], max_rounds=6)
    assert result.converged
    before, after = op_counts(bn_graph.graph_def), op_counts(result.graph.graph_def)
    assert before["Identity"] > 10 and before["FusedBatchNormV3"] == 2 and before["NoOp"] == 1
    assert not {"Identity", "NoOp", "FusedBatchNormV3", "Mul", "Sub", "Rsqrt"} & after.keys()
    nodes = {n.name: n for n in result.graph.graph_def.node}
    assert nodes["Identity"].op == "Softmax"  # the output tensor kept its name
    # weights, one bias per linear op, the residual Add and the pooling axes
    assert sum(after.values()) < sum(before.values()) / 2
    difference, failure = runner.difference(bn_graph, result.graph)
    assert failure is None and difference <= 1e-5


@pytest.mark.parametrize("name", ALL_PASSES)
def test_control_flow_graphs_pass_through_unchanged_and_still_run(while_graph, passes, run_graph, name):
    result = passes[name].apply(while_graph)
    assert result.serialize() == while_graph.serialize()
    assert "control flow" in result.skipped and "While" in result.skipped
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    expected = x
    for _ in range(3):
        expected = expected * 0.5 + 1.0
    (value,) = run_graph(result, {while_graph.inputs[0]: x})
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_stateful_and_default_placeholder_graphs_are_left_alone(make_graph, passes):
    def with_default(tf):
        x = tf.compat.v1.placeholder_with_default(tf.ones([2, 3]), [None, 3], name="x")
        tf.identity(tf.identity(x * 1.0), name="out")

    def with_assert(tf):
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        check = tf.raw_ops.Assert(condition=tf.reduce_all(x > -100.0), data=[x], name="check")
        with tf.control_dependencies([check]):
            tf.identity(tf.identity(x), name="out")

    for build, reason in ((with_default, "PlaceholderWithDefault"), (with_assert, "stateful ops (Assert)")):
        graph = make_graph(build, ("out:0",))
        for name, graph_pass in passes.items():
            result = graph_pass.apply(graph)
            assert result.graph_def is graph.graph_def, name
            assert reason in result.skipped
