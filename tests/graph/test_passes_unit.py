"""Each pass on small hand-built GraphDefs whose optimal form is known:
structure (which nodes remain, what they read) and values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

X = np.arange(-6, 6, dtype=np.float32).reshape(4, 3) / 4


def _placeholder(tf: Any, shape: list[int | None] = [None, 3], name: str = "x") -> Any:
    return tf.compat.v1.placeholder(tf.float32, shape, name=name)


def _same_outputs(run_graph: Any, before: Any, after: Any, feeds: dict[str, np.ndarray], atol: float = 0.0) -> None:
    for a, b in zip(run_graph(before, feeds), run_graph(after, feeds)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


# -- remove-identity -------------------------------------------------------------


def identity_chain(tf: Any) -> None:
    x = _placeholder(tf)
    gate = tf.abs(x, name="gate")
    a = tf.identity(x, name="a")
    with tf.control_dependencies([gate]):
        b = tf.identity(a, name="b")
    m = tf.multiply(b, 2.0, name="m")
    with tf.control_dependencies([b]):
        waiter = tf.no_op(name="waiter")
    with tf.control_dependencies([waiter]):
        tf.identity(m, name="out")


def test_remove_identity_bypasses_chains_and_carries_control_inputs(make_graph, passes, nodes, run_graph):
    graph = make_graph(identity_chain, ("out:0",))
    result = passes["remove-identity"].apply(graph)
    after = nodes(result)
    assert "a" not in after and "b" not in after
    assert list(after["waiter"].input) == ["^x", "^gate"]
    # the output identity took over its producer: "out:0" now is the Mul
    assert "m" not in after and after["out"].op == "Mul"
    assert list(after["out"].input) == ["x", "m/y", "^gate", "^waiter"]
    _same_outputs(run_graph, graph, result, {"x:0": X})


def test_remove_identity_handles_identity_n_and_keeps_signature_identities(make_graph, passes, nodes, run_graph):
    def build(tf):
        x = _placeholder(tf)
        c = tf.constant([1.0, 2.0, 3.0], name="c")
        split = tf.raw_ops.IdentityN(input=[x, c], name="idn")
        s = tf.add(split[1], split[0], name="s")
        tf.identity(tf.identity(s, name="inner"), name="out")

    graph = make_graph(build, ("out:0",))
    result = passes["remove-identity"].apply(graph)
    after = nodes(result)
    assert set(after) == {"x", "c", "out"}
    assert after["out"].op == "AddV2" and list(after["out"].input) == ["c", "x"]
    _same_outputs(run_graph, graph, result, {"x:0": X})


def test_a_signature_identity_takes_over_its_producer_only_when_nothing_else_reads_it(
        make_graph, passes, nodes, run_graph):
    def build(tf):
        x = _placeholder(tf)
        tf.identity(tf.multiply(x, 2.0, name="s"), name="out1")
        t = tf.abs(x, name="t")
        tf.identity(t, name="out2")
        tf.negative(t, name="u")
        tf.identity(x, name="echo")  # reads a signature input: stays

    graph = make_graph(build, ("out1:0", "out2:0", "u:0", "echo:0"))
    result = passes["remove-identity"].apply(graph)
    after = nodes(result)
    assert "s" not in after and after["out1"].op == "Mul"
    assert after["out2"].op == "Identity" and after["t"].op == "Abs"
    assert after["echo"].op == "Identity"
    _same_outputs(run_graph, graph, result, {"x:0": X})


def test_colocation_hints_naming_removed_nodes_are_dropped(make_graph, passes, nodes, run_graph):
    def build(tf):
        x = _placeholder(tf)
        a = tf.identity(x, name="a")
        with tf.compat.v1.colocate_with(a):
            m = tf.multiply(a, 2.0, name="m")
        tf.identity(m, name="out")

    graph = make_graph(build, ("out:0",))
    assert list(nodes(graph)["m"].attr["_class"].list.s) == [b"loc:@a"]
    result = passes["remove-identity"].apply(graph)
    assert "a" not in nodes(result) and "_class" not in nodes(result)["out"].attr
    _same_outputs(run_graph, graph, result, {"x:0": X})  # imports: no dangling colocation


def test_a_bare_graphdef_keeps_its_sinks_and_placeholders(make_graph, passes, nodes):
    graph = make_graph(dead_graph, ("out:0",), ("x:0", "unused_input:0"))
    result = passes["remove-dead"].apply(graph.graph_def)  # no signature: every sink is an output
    assert result.inputs == ("x:0", "unused_input:0") and result.outputs == ("dead2:0", "out:0")
    assert set(nodes(result)) == set(nodes(graph))


def test_passes_never_mutate_their_input(make_graph, passes):
    graph = make_graph(identity_chain, ("out:0",))
    before = graph.serialize()
    for graph_pass in passes.values():
        graph_pass.apply(graph)
    assert graph.serialize() == before


# -- remove-noop -----------------------------------------------------------------


def noop_graph(tf: Any) -> None:
    x = _placeholder(tf)
    a, b = tf.abs(x, name="a"), tf.negative(x, name="b")
    with tf.control_dependencies([a, b]):
        n = tf.no_op(name="n")
    with tf.control_dependencies([n]):
        tf.identity(x, name="out")
    # a NoOp whose rewiring would multiply edges (3 x 3) stays
    preds = [tf.square(x, name=f"p{i}") for i in range(3)]
    with tf.control_dependencies(preds):
        hub = tf.no_op(name="hub")
    for i in range(3):
        with tf.control_dependencies([hub]):
            tf.identity(x, name=f"s{i}")


def test_remove_noop_rewires_control_dependencies(make_graph, passes, nodes, run_graph):
    graph = make_graph(noop_graph, ("out:0", "s0:0", "s1:0", "s2:0"))
    result = passes["remove-noop"].apply(graph)
    after = nodes(result)
    assert "n" not in after
    assert list(after["out"].input) == ["x", "^a", "^b"]
    assert after["hub"].op == "NoOp" and list(after["s0"].input) == ["x", "^hub"]
    _same_outputs(run_graph, graph, result, {"x:0": X})


# -- fold-constants --------------------------------------------------------------


def constant_graph(tf: Any) -> None:
    x = _placeholder(tf)
    m = tf.multiply(tf.constant(2.0, name="c1"), tf.constant([1.0, 2.0, 3.0], name="c2"), name="m")
    s = tf.add(x, m, name="s")
    big = tf.fill(tf.constant([400, 3], name="dims"), tf.constant(1.5, name="value"), name="big")
    r = tf.reduce_sum(big, axis=0, name="r")
    cat = tf.concat([s + r, big], axis=0, name="cat")
    noise = tf.random.stateless_uniform([3], seed=[1, 2], name="noise")
    fq = tf.quantization.fake_quant_with_min_max_vars(tf.constant([0.1, 0.5, 0.9], name="w"), -1.0, 1.0, name="fq")
    tf.identity(cat * noise[0] + fq[0], name="out")


def test_fold_constants_folds_in_place_and_respects_limits(make_graph, passes, nodes, run_graph):
    graph = make_graph(constant_graph, ("out:0",))
    result = passes["fold-constants"].apply(graph)
    after = nodes(result)
    from tinybuild_plugins.sdk.tfgraph import const_array

    assert after["m"].op == "Const" and "c1" not in after and "c2" not in after
    np.testing.assert_array_equal(const_array(after["m"]), [2.0, 4.0, 6.0])
    assert after["r"].op == "Const"
    np.testing.assert_array_equal(const_array(after["r"]), [600.0, 600.0, 600.0])
    assert after["big"].op == "Fill"  # 4800 bytes from 12: stays an op
    assert after["fq"].op.startswith("FakeQuant")  # QAT ranges must survive
    assert any(n.op.startswith("StatelessRandom") for n in after.values())  # random ops are not folded
    assert after["s"].op == "AddV2"  # depends on x
    _same_outputs(run_graph, graph, result, {"x:0": X})


def test_fold_constants_materializes_known_shapes(make_graph, passes, nodes, run_graph):
    def build(tf):
        x = _placeholder(tf, [4, 3])
        n = tf.size(x, name="n")
        tf.identity(tf.cast(n, tf.float32, name="nf") + tf.reduce_sum(x), name="out")

    graph = make_graph(build, ("out:0",))
    result = passes["fold-constants"].apply(graph)
    after = nodes(result)
    from tinybuild_plugins.sdk.tfgraph import const_array

    assert "n" not in after  # folded into nf, then unused
    assert after["nf"].op == "Const" and const_array(after["nf"]) == 12.0
    _same_outputs(run_graph, graph, result, {"x:0": X})


def test_fold_constants_splits_multi_output_nodes_into_constants(make_graph, passes, nodes, run_graph):
    def build(tf):
        x = _placeholder(tf)
        low, high = tf.split(tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], name="table"), 2, name="halves")
        tf.identity(x * low + high, name="out")

    graph = make_graph(build, ("out:0",))
    result = passes["fold-constants"].apply(graph)
    after = nodes(result)
    assert "halves" not in after and "table" not in after
    assert after["halves/folded_0"].op == after["halves/folded_1"].op == "Const"
    assert passes["fold-constants"].apply(result).serialize() == result.serialize()
    _same_outputs(run_graph, graph, result, {"x:0": X})


# -- remove-dead -----------------------------------------------------------------


def dead_graph(tf: Any) -> None:
    x = _placeholder(tf)
    _placeholder(tf, name="unused_input")
    used = tf.multiply(x, 2.0, name="used")
    tf.abs(tf.add(x, 5.0, name="dead"), name="dead2")
    keep = tf.square(x, name="ordered")
    with tf.control_dependencies([keep]):
        tf.identity(used, name="out")


def test_remove_dead_keeps_what_outputs_depend_on(make_graph, passes, nodes, run_graph):
    graph = make_graph(dead_graph, ("out:0",), ("x:0", "unused_input:0"))
    result = passes["remove-dead"].apply(graph)
    assert set(nodes(result)) == {"x", "unused_input", "used", "used/y", "ordered", "out"}
    _same_outputs(run_graph, graph, result, {"x:0": X, "unused_input:0": X})


# -- reduce-control-edges --------------------------------------------------------


def control_graph(tf: Any) -> None:
    x = _placeholder(tf)
    a = tf.abs(x, name="a")
    b = tf.negative(a, name="b")
    d = tf.square(x, name="d")
    tf.constant(1.0, name="k")
    c = tf.add(b, tf.ones([]), name="c")
    tf.identity(c, name="out")


def _with_control_inputs(graph: Any) -> Any:
    """TF's graph builder prunes control inputs it deems redundant; add them by hand."""
    from tinybuild_plugins.sdk.graph_edit import Graph

    graph_def = type(graph.graph_def)()
    graph_def.CopyFrom(graph.graph_def)
    next(n for n in graph_def.node if n.name == "c").input.extend(["^a", "^d", "^k", "^b"])
    return Graph(graph_def, graph.inputs, graph.outputs)


def test_reduce_control_edges_keeps_only_needed_ordering(make_graph, passes, nodes, run_graph):
    graph = _with_control_inputs(make_graph(control_graph, ("out:0",)))
    assert list(nodes(graph)["c"].input) == ["b", "ones", "^a", "^d", "^k", "^b"]
    result = passes["reduce-control-edges"].apply(graph)
    # a -> b -> c already orders a before c; k is a constant; b is a data input
    assert list(nodes(result)["c"].input) == ["b", "ones", "^d"]
    _same_outputs(run_graph, graph, result, {"x:0": X})


# -- fold-batchnorm --------------------------------------------------------------

RNG = np.random.default_rng(7)
W = RNG.normal(size=(3, 3, 2, 4)).astype(np.float32)
BIAS = RNG.normal(size=4).astype(np.float32)
SCALE, OFFSET = RNG.uniform(0.5, 2, 4).astype(np.float32), RNG.normal(size=4).astype(np.float32)
MEAN, VAR = RNG.normal(size=4).astype(np.float32), RNG.uniform(0.5, 2, 4).astype(np.float32)
IMAGES = RNG.normal(size=(2, 5, 5, 2)).astype(np.float32)


def conv_bn_graph(tf: Any) -> None:
    x = _placeholder(tf, [None, 5, 5, 2])
    conv = tf.nn.conv2d(x, tf.constant(W, name="w"), 1, "SAME", name="conv")
    biased = tf.nn.bias_add(conv, tf.constant(BIAS, name="b"), name="biased")
    bn = tf.raw_ops.FusedBatchNormV3(
        x=biased, scale=tf.constant(SCALE, name="scale"), offset=tf.constant(OFFSET, name="offset"),
        mean=tf.constant(MEAN, name="mean"), variance=tf.constant(VAR, name="var"),
        epsilon=0.001, is_training=False, name="bn")
    tf.nn.relu(bn[0], name="out")
    # in training mode the statistics come from the batch: must stay
    train = tf.raw_ops.FusedBatchNormV3(
        x=tf.nn.conv2d(x, tf.constant(W, name="w2"), 1, "SAME", name="conv2"),
        scale=tf.constant(SCALE), offset=tf.constant(OFFSET), mean=tf.constant([], dtype=tf.float32),
        variance=tf.constant([], dtype=tf.float32), is_training=True, name="bn_train")
    tf.identity(train[0], name="out_train")


def test_fold_batchnorm_folds_conv_bias_and_fused_batchnorm(make_graph, passes, nodes, run_graph):
    from tinybuild_plugins.sdk.tfgraph import const_array

    graph = make_graph(conv_bn_graph, ("out:0", "out_train:0"))
    result = passes["fold-batchnorm"].apply(graph)
    after = nodes(result)
    multiplier = SCALE.astype(np.float64) / np.sqrt(VAR.astype(np.float64) + 0.001)
    assert after["bn"].op == "BiasAdd" and after["bn"].input[0] == "conv"
    assert not {"biased", "b", "scale", "offset", "mean", "var", "w"} & set(after)
    np.testing.assert_allclose(const_array(after[after["conv"].input[1]]), W * multiplier, rtol=1e-6)
    np.testing.assert_allclose(const_array(after[after["bn"].input[1]]),
                               (BIAS - MEAN) * multiplier + OFFSET, rtol=1e-6, atol=1e-6)
    assert after["bn_train"].op == "FusedBatchNormV3"
    _same_outputs(run_graph, graph, result, {"x:0": IMAGES}, atol=1e-5)


def test_fold_batchnorm_handles_depthwise_and_unfused_dense_form(make_graph, passes, nodes, run_graph):
    depthwise = RNG.normal(size=(3, 3, 2, 2)).astype(np.float32)  # 2 channels x multiplier 2
    dense = RNG.normal(size=(4, 3)).astype(np.float32)

    def build(tf):
        x = _placeholder(tf, [None, 5, 5, 2])
        conv = tf.nn.depthwise_conv2d(x, tf.constant(depthwise), [1, 1, 1, 1], "VALID", name="dw")
        bn = tf.raw_ops.FusedBatchNormV3(x=conv, scale=SCALE, offset=OFFSET, mean=MEAN, variance=VAR,
                                         epsilon=0.001, is_training=False, name="bn")
        pooled = tf.reduce_mean(bn[0], axis=[1, 2], name="pool")
        y = tf.nn.bias_add(tf.matmul(pooled, tf.constant(dense), name="mm"), tf.constant([0.1, 0.2, 0.3]))
        y = tf.multiply(y, tf.constant([2.0, -1.0, 0.5]), name="scaled")   # unfused BN: x * s
        tf.add(y, tf.constant([1.0, 1.0, 1.0]), name="out")                # ... + t

    graph = make_graph(build, ("out:0",))
    result = passes["fold-batchnorm"].apply(graph)
    after = nodes(result)
    assert after["bn"].op == "BiasAdd" and after["bn"].input[0] == "dw"
    assert after["out"].op == "BiasAdd" and after["out"].input[0] == "mm"
    assert "scaled" not in after and not any(n.op == "Mul" for n in after.values())
    _same_outputs(run_graph, graph, result, {"x:0": IMAGES}, atol=1e-5)


def test_fold_batchnorm_leaves_shared_convolutions_alone(make_graph, passes):
    def build(tf):
        x = _placeholder(tf, [None, 5, 5, 2])
        conv = tf.nn.conv2d(x, tf.constant(W), 1, "SAME", name="conv")
        bn = tf.raw_ops.FusedBatchNormV3(x=conv, scale=SCALE, offset=OFFSET, mean=MEAN, variance=VAR,
                                         is_training=False, name="bn")
        tf.identity(bn[0], name="out")
        tf.identity(conv, name="raw")  # someone else reads the unnormalized conv

    graph = make_graph(build, ("out:0", "raw:0"))
    assert passes["fold-batchnorm"].apply(graph).graph_def is graph.graph_def


# -- simplify-arithmetic ---------------------------------------------------------


def arithmetic_graph(tf: Any) -> None:
    x = _placeholder(tf)
    y = tf.multiply(x, tf.constant(1.0), name="times_one")
    y = tf.add(y, tf.zeros([3]), name="plus_zeros")
    y = tf.subtract(y, tf.constant(0.0), name="minus_zero")
    y = tf.realdiv(y, tf.constant(1.0), name="over_one")
    y = tf.raw_ops.Cast(x=y, DstT=tf.float32, name="same_cast")
    y = tf.reshape(tf.reshape(y, [-1, 3, 1], name="r1"), [-1, 3], name="r2")
    cube = tf.reshape(y, [-1, 3, 1], name="cube")
    t = tf.transpose(tf.transpose(cube, [2, 0, 1], name="t1"), [1, 2, 0], name="t2")
    u = tf.transpose(tf.transpose(cube, [1, 0, 2], name="u1"), [0, 2, 1], name="u2")  # composes to [1, 2, 0]
    v = tf.nn.relu(tf.nn.relu(t, name="relu1"), name="relu2")
    w = tf.negative(tf.negative(v, name="neg1"), name="neg2")
    widened = tf.add(x, tf.zeros([2, 1, 3]), name="widened")  # broadcasting grows x: must stay
    tf.identity(w, name="out_w")
    tf.identity(u, name="out_u")
    tf.identity(widened, name="out_widened")
    tf.multiply(tf.subtract(tf.constant(0.0), x, name="zero_minus"), 1.0, name="out_times_one")


def test_simplify_arithmetic_removes_neutral_operations(make_graph, passes, nodes, run_graph):
    graph = make_graph(arithmetic_graph, ("out_w:0", "out_u:0", "out_widened:0", "out_times_one:0"))
    result = passes["simplify-arithmetic"].apply(graph)
    after = nodes(result)
    gone = {"times_one", "plus_zeros", "minus_zero", "over_one", "same_cast", "r1", "r2", "t1", "t2",
            "relu2", "neg1", "neg2", "u1"}
    assert not gone & set(after)
    assert after["cube"].input[0] == "x"
    assert after["relu1"].input[0] == "cube"
    assert after["out_w"].input[0] == "relu1"
    assert after["u2"].input[0] == "cube"  # the two transposes became one
    from tinybuild_plugins.sdk.tfgraph import const_array

    np.testing.assert_array_equal(const_array(after[after["u2"].input[1]]), [1, 2, 0])
    assert after["widened"].op == "AddV2"
    assert after["zero_minus"].op == "Sub"  # 0 - x is not x
    assert after["out_times_one"].op == "Identity"  # a signature output keeps its name
    _same_outputs(run_graph, graph, result, {"x:0": X})


# -- every pass: idempotent, and a fixed point reaches the known optimum ----------

HAND_BUILT = {
    "identity_chain": (identity_chain, ("out:0",), ("x:0",)),
    "noop_graph": (noop_graph, ("out:0", "s0:0", "s1:0", "s2:0"), ("x:0",)),
    "constant_graph": (constant_graph, ("out:0",), ("x:0",)),
    "dead_graph": (dead_graph, ("out:0",), ("x:0", "unused_input:0")),
    "control_graph": (control_graph, ("out:0",), ("x:0",)),
    "conv_bn_graph": (conv_bn_graph, ("out:0", "out_train:0"), ("x:0",)),
    "arithmetic_graph": (arithmetic_graph, ("out_w:0", "out_u:0", "out_widened:0", "out_times_one:0"), ("x:0",)),
}


@pytest.mark.parametrize("graph_name", sorted(HAND_BUILT))
def test_every_pass_is_idempotent(make_graph, passes, graph_name):
    build, outputs, inputs = HAND_BUILT[graph_name]
    graph = make_graph(build, outputs, inputs)
    if build is control_graph:
        graph = _with_control_inputs(graph)
    for name, graph_pass in passes.items():
        once = graph_pass.apply(graph)
        twice = graph_pass.apply(once)
        assert twice.serialize() == once.serialize(), f"{name} is not idempotent on {graph_name}"


def test_all_passes_together_reach_the_minimal_graph(make_graph, passes, nodes, run_graph):
    from tinybuild_plugins.graph.optimize import run_to_fixed_point
    from tinybuild_plugins.graph.passes import DEFAULT_ORDER

    graph = make_graph(identity_chain, ("out:0",))
    result = run_to_fixed_point(graph, [passes[n] for n in DEFAULT_ORDER], max_rounds=5)
    assert result.converged
    # identities, NoOp and redundant control edges are gone; the ordering
    # "gate before m" is not implied by data flow, so it is kept
    assert {n: list(node.input) for n, node in nodes(result.graph).items()} == {
        "x": [], "gate": ["x"], "m/y": [], "out": ["x", "m/y", "^gate"],
    }
    _same_outputs(run_graph, graph, result.graph, {"x:0": X})
