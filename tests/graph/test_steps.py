"""The graph-freeze and graph-optimize step types, through tinybuild.testing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinybuild.api import GraphPass, Kind, StepError
from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.graph.steps import OptimizeParams, tinybuild_step_types

STEPS = {s.name: s for s in tinybuild_step_types()}


def _optimize(frozen: Any, passes: dict[str, GraphPass], params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return run_step(STEPS["graph-optimize"], [frozen], params or {}, passes=passes, step="optimized", **kwargs)


def _graph(artifact: Any) -> Any:
    from tinybuild_plugins.sdk.graphdef import load_graphdef
    from tinybuild_plugins.sdk.graph_edit import Graph

    graph_def, signature = load_graphdef(artifact)
    return Graph(graph_def, tuple(s["tensor"] for s in signature["inputs"]),
                 tuple(s["tensor"] for s in signature["outputs"]))


# -- graph-freeze ------------------------------------------------------------------


def test_freeze_writes_a_graph_that_computes_the_keras_model(frozen_artifact, basic_cnn, run_graph):
    signature = json.loads(frozen_artifact.file("signature.json").read_text())
    (entry,) = signature["inputs"]
    assert entry["shape"] == [None, 28, 28, 1] and entry["dtype"] == "float32"
    assert signature["outputs"] == [{"name": "output_0", "tensor": "Identity:0", "shape": [None, 10],
                                     "dtype": "float32"}]
    assert frozen_artifact.metrics["ops"]["Placeholder"] == 1
    assert "VarHandleOp" not in frozen_artifact.metrics["ops"]  # variables are constants now
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    (value,) = run_graph(_graph(frozen_artifact), {entry["tensor"]: x})
    np.testing.assert_allclose(value, basic_cnn(x, training=False).numpy(), atol=1e-5)


def test_freeze_is_byte_deterministic_within_and_across_processes(frozen_artifact, keras_artifact, tmp_path):
    again = run_step(STEPS["graph-freeze"], [keras_artifact], step="frozen")
    assert again.digest == frozen_artifact.digest
    script = textwrap.dedent(f"""
        import sys
        from tinybuild.api import Kind
        from tinybuild.testing import artifact_from_dir, run_step
        from tinybuild_plugins.graph.steps import tinybuild_step_types
        freeze = next(s for s in tinybuild_step_types() if s.name == "graph-freeze")
        model = artifact_from_dir("model", Kind.KERAS_MODEL, {str(keras_artifact.path)!r})
        print(run_step(freeze, [model], out_dir={str(tmp_path / "out")!r}, step="frozen").digest)
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == frozen_artifact.digest


def test_a_graph_frozen_with_a_fixed_batch_is_verified_batch_by_batch(keras_artifact, passes, small_dataset):
    frozen = run_step(STEPS["graph-freeze"], [keras_artifact], {"batch_size": 1}, step="frozen1")
    signature = json.loads(frozen.file("signature.json").read_text())
    assert signature["inputs"][0]["shape"] == [1, 28, 28, 1]
    result = _optimize(frozen, passes, {"samples": 5}, dataset=small_dataset)
    verdict = result.metrics["verification"]
    assert verdict["samples"] == 5 and verdict["inputs"] == "dataset test split" and verdict["passed"]


# -- graph-optimize ----------------------------------------------------------------


def test_optimize_runs_exact_passes_to_a_fixed_point_and_verifies(frozen_artifact, passes, run_graph):
    result = _optimize(frozen_artifact, passes)
    metrics = result.metrics
    assert metrics["passes"] == ["remove-identity", "remove-noop", "reduce-control-edges", "fold-constants",
                                 "simplify-arithmetic", "remove-dead"]  # exact ones only, by default
    assert metrics["converged"] and metrics["nodes_after"] < metrics["nodes_before"]
    assert metrics["ops_before"]["Identity"] == 5 and metrics["ops_before"]["BiasAdd"] == 2
    # a fresh model's biases are zero: x + 0 goes; the output identity takes over the MatMul
    assert not {"Identity", "NoOp", "BiasAdd"} & metrics["ops_after"].keys()
    assert metrics["nodes_after"] == 9
    first = metrics["history"][0]
    assert first["pass"] == "remove-identity" and first["round"] == 1 and first["changed"]
    assert first["ops_before"]["Identity"] == 5 and "Identity" not in first["ops_after"]
    last_round = [h for h in metrics["history"] if h["round"] == metrics["rounds"]]
    assert not any(h["changed"] for h in last_round)
    verdict = metrics["verification"]
    assert verdict == {"max_abs_diff": 0.0, "samples": 16, "inputs": "random (seed 0)", "tolerance": 1e-6,
                       "exact": True, "passed": True}
    assert result.file("signature.json").read_text() == frozen_artifact.file("signature.json").read_text()
    x = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    before, after = _graph(frozen_artifact), _graph(result)
    np.testing.assert_array_equal(run_graph(before, {before.inputs[0]: x})[0], run_graph(after, {after.inputs[0]: x})[0])
    assert _optimize(frozen_artifact, passes).digest == result.digest  # deterministic bytes


def test_optimize_verifies_on_the_dataset_test_split(frozen_artifact, passes, small_dataset):
    result = _optimize(frozen_artifact, passes, {"samples": 50}, dataset=small_dataset)
    assert result.metrics["verification"]["inputs"] == "dataset test split"
    assert result.metrics["verification"]["samples"] == 12  # the whole test split


def test_optimize_uses_the_tolerance_once_an_inexact_pass_applies(bn_graph, bn_signature, passes, tmp_path):
    from tinybuild_plugins.sdk.graphdef import save_graphdef

    save_graphdef(tmp_path, bn_graph.graph_def, bn_signature)
    frozen = artifact_from_dir("frozen", Kind.GRAPHDEF, tmp_path)
    result = _optimize(frozen, passes, {"passes": ["remove-identity", "fold-batchnorm", "remove-dead"],
                                        "tolerance": 1e-5})
    verdict = result.metrics["verification"]
    assert result.metrics["applied"][:2] == ["remove-identity", "fold-batchnorm"]
    assert verdict["exact"] is False and verdict["tolerance"] == 1e-5 and verdict["max_abs_diff"] <= 1e-5
    assert "FusedBatchNormV3" not in result.metrics["ops_after"]


def test_optimize_records_passes_that_skip_graphs_they_do_not_understand(while_graph, passes, tmp_path):
    from tinybuild_plugins.sdk.graphdef import save_graphdef

    signature = {"inputs": [{"name": "x", "tensor": while_graph.inputs[0], "shape": [None, 3], "dtype": "float32"}],
                 "outputs": [{"name": "output_0", "tensor": while_graph.outputs[0], "shape": [None, 3],
                              "dtype": "float32"}]}
    save_graphdef(tmp_path, while_graph.graph_def, signature)
    result = _optimize(artifact_from_dir("frozen", Kind.GRAPHDEF, tmp_path), passes)
    assert result.metrics["nodes_after"] == result.metrics["nodes_before"]
    assert result.metrics["skipped"]["remove-identity"].startswith("graph has control flow (")
    assert result.file("graph.pb").read_bytes() == (tmp_path / "graph.pb").read_bytes()


def _perturb_first_weight(graph: Any) -> Any:
    """A deliberately wrong 'exact' pass: adds 0.5 to the first float weight
    (once: it marks what it touched, like a real pass reaching its fixed point)."""
    from tinybuild_plugins.sdk.tfgraph import const_array, const_attrs

    graph_def = type(graph.graph_def)()
    graph_def.CopyFrom(graph.graph_def)
    for node in graph_def.node:
        if node.op == "Const" and const_array(node).dtype == np.float32 and const_array(node).size > 1:
            if "_perturbed" in node.attr:
                return graph
            node.attr["value"].CopyFrom(const_attrs(const_array(node) + np.float32(0.5))["value"])
            node.attr["_perturbed"].b = True
            break
    return dataclasses.replace(graph, graph_def=graph_def)


def test_a_broken_pass_is_caught_and_named(frozen_artifact, passes):
    broken = GraphPass("perturb-const", "1", True, _perturb_first_weight)
    with pytest.raises(StepError) as error:
        _optimize(frozen_artifact, {**passes, "perturb-const": broken},
                  {"passes": ["remove-identity", "perturb-const", "remove-dead"]})
    message = str(error.value)
    assert "differ from the original by" in message and "allowed 1e-06" in message
    assert "Culprit: pass 'perturb-const' (round 1) changes outputs by up to" in message
    assert "remove-identity'" not in message.split("Culprit:")[1]  # the innocent pass is not blamed


def test_a_pass_that_mutates_its_input_or_drops_an_output_is_named(frozen_artifact, passes):
    def mutate(graph: Any) -> Any:
        graph.graph_def.node[-1].name = "renamed"
        return graph

    def drop_output(graph: Any) -> Any:
        graph_def = type(graph.graph_def)()
        graph_def.CopyFrom(graph.graph_def)
        del graph_def.node[-1]
        return graph_def

    for name, apply, expected in (("mutator", mutate, "modified its input"),
                                  ("dropper", drop_output, "removed signature node(s) ['Identity']")):
        with pytest.raises(StepError, match=f"graph pass '{name}' {expected}".replace("(", r"\(")
                           .replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
            _optimize(frozen_artifact, {name: GraphPass(name, "1", True, apply)}, {"passes": [name]})


def test_unknown_pass_names_list_the_registered_ones(frozen_artifact, passes):
    with pytest.raises(StepError, match=r"unknown graph pass\(es\) 'fold-everything'; registered passes: "
                                        r"fold-batchnorm, fold-constants"):
        _optimize(frozen_artifact, passes, {"passes": ["remove-dead", "fold-everything"]})


def test_params_are_validated_and_key_extras_carry_pass_versions(passes):
    with pytest.raises(ValueError, match="listed twice"):
        OptimizeParams(passes=("remove-dead", "remove-dead"))
    with pytest.raises(ValueError, match="at least one pass"):
        OptimizeParams(passes=())
    with pytest.raises(ValueError):
        OptimizeParams(tolerance=0)
    extras = STEPS["graph-optimize"].key_extras(OptimizeParams(), passes)
    assert ["remove-identity", "1.0", True] in [entry[:3] for entry in extras["graph_passes"]]
    assert "fold-batchnorm" not in [name for name, *_ in extras["graph_passes"]]
    bumped = {**passes, "remove-dead": dataclasses.replace(passes["remove-dead"], version="2.0")}
    assert STEPS["graph-optimize"].key_extras(OptimizeParams(), bumped) != extras


def test_key_extras_follow_the_code_of_third_party_passes(passes, tmp_path, monkeypatch):
    """Editing a pass's code (same name, same version) changes graph-optimize's key."""
    from tinybuild.api import GraphPass

    module = tmp_path / "my_pass_impl.py"
    module.write_text("def apply(graph):\n    return graph\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    impl = importlib.import_module("my_pass_impl")
    mine = {**passes, "my-pass": GraphPass("my-pass", "1.0", True, impl.apply)}
    params = OptimizeParams(passes=("my-pass",))
    before = STEPS["graph-optimize"].key_extras(params, mine)
    module.write_text("def apply(graph):\n    return graph  # rewritten\n")
    assert STEPS["graph-optimize"].key_extras(params, mine) != before


def test_the_tflite_step_converts_the_optimized_graph(frozen_artifact, passes, tmp_path):
    from tinybuild_plugins.tflite.convert import tinybuild_step_types as tflite_steps

    optimized = _optimize(frozen_artifact, passes)
    (tflite,) = [s for s in tflite_steps() if s.name == "tflite"]
    model = run_step(tflite, [optimized], {"quantize": "float32"}, step="graph_tflite")
    assert model.metrics["source_kind"] == Kind.GRAPHDEF and Path(model.file("model.tflite")).stat().st_size > 1000
