"""graph-optimize's ``passes``: checked at plan time, built-in defaults, named reasons.

Planning only (no TensorFlow): a third-party pass is registered from a
module in tmp_path through ``TINYBUILD_PLUGINS``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tinybuild import cli
from tinybuild.plugins import load_plugins
from tinybuild.testing import artifact_from_dir, key_reasons

MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"

RECIPE = f"""\
[recipe]
name = "passes"

[dataset]
use = "idx"
images = "{MNIST}/t10k-images-idx3-ubyte.gz"
labels = "{MNIST}/t10k-labels-idx1-ubyte.gz"
limit = 100

[model]
use = "keras"
architecture = "mlp"

[steps.frozen]
use = "graph-freeze"
input = "model"

[steps.opt]
use = "graph-optimize"
input = "frozen"
"""

THIRD_PARTY = """\
from tinybuild.api import GraphPass, hookimpl

def keep(graph):
    return graph

@hookimpl
def tinybuild_graph_passes():
    return [GraphPass("keep-all", "1.0", True, keep, description="an exact pass that changes nothing")]
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "extra_pass.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    for var in ("TINYBUILD_PLUGINS", "TINYBUILD_DISABLE_PLUGINS", "TINYBUILD_CACHE_DIR", "TINYBUILD_OUT"):
        monkeypatch.delenv(var, raising=False)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return recipe


def plan(recipe: Path, capsys, *args: str):
    capsys.readouterr()
    code = cli.main(["plan", str(recipe), "--cache-dir", str(recipe.parent / "cache"), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_pass_fails_plan(project, capsys):
    project.write_text(RECIPE + 'passes = ["remove-identity", "fold-constans"]\n')
    code, _, err = plan(project, capsys)
    assert code == 2
    assert "steps.opt.passes[1]: unknown graph pass 'fold-constans'" in err
    assert "did you mean 'fold-constants'" in err


def test_pass_of_a_disabled_plugin_names_it(project, capsys):
    project.write_text(RECIPE + 'passes = ["fold-constants"]\n')
    code, _, err = plan(project, capsys, "--disable-plugin", "graph-passes")
    assert code == 2
    assert ("graph pass 'fold-constants' is provided by plugin 'graph-passes', which is disabled "
            "(--disable-plugin/TINYBUILD_DISABLE_PLUGINS)") in err


def test_no_default_passes_when_the_built_ins_are_disabled(project, capsys):
    code, _, err = plan(project, capsys, "--disable-plugin", "graph-passes")
    assert code == 2 and "steps.opt: no 'passes' given and the built-in graph passes are not loaded" in err


def test_a_third_party_pass_is_opt_in(project, capsys, monkeypatch, tmp_path):
    from tinybuild.testing import step_key

    (tmp_path / "g").mkdir()
    graph = artifact_from_dir("frozen", "graphdef", tmp_path / "g")
    _, plain = load_plugins(environ={})
    _, extended = load_plugins(environ={"TINYBUILD_PLUGINS": "extra=extra_pass"})
    optimize = plain.step_type("graph-optimize")
    assert "keep-all" in extended.passes and extended.passes["keep-all"].exact
    # installing a plugin with an exact pass changes no existing step's key
    assert step_key(optimize, {}, [graph], passes=plain.passes) == step_key(optimize, {}, [graph], passes=extended.passes)
    named = {"passes": ["remove-identity", "keep-all"]}
    assert step_key(optimize, named, [graph], passes=extended.passes) != step_key(optimize, {}, [graph], passes=extended.passes)
    # naming it is how a recipe opts in: plan accepts it only where the plugin is installed
    project.write_text(RECIPE + 'passes = ["remove-identity", "keep-all"]\n')
    assert plan(project, capsys)[0] == 2
    monkeypatch.setenv("TINYBUILD_PLUGINS", "extra=extra_pass")
    assert plan(project, capsys)[0] == 0


@pytest.fixture(scope="module")
def optimize_and_passes():
    _, registry = load_plugins(environ={})
    return registry.step_type("graph-optimize"), dict(registry.passes)


def test_reasons_name_the_pass_and_its_versions(optimize_and_passes, tmp_path):
    optimize, passes = optimize_and_passes
    graph = artifact_from_dir("frozen", "graphdef", tmp_path)
    upgraded = {**passes, "fold-constants": dataclasses.replace(passes["fold-constants"], version="1.1")}
    assert key_reasons(optimize, {}, {}, [graph], passes=passes, new_passes=upgraded) == ["pass fold-constants 1.0 → 1.1"]
    extra = dataclasses.replace(passes["remove-dead"], name="my-pass")
    with_extra = {**passes, "my-pass": extra}
    reasons = key_reasons(optimize, {"passes": ["remove-dead"]}, {"passes": ["remove-dead", "my-pass"]}, [graph],
                          passes=with_extra)
    assert "pass my-pass added" in reasons
    reasons = key_reasons(optimize, {"passes": ["remove-dead", "fold-constants"]}, {"passes": ["remove-dead"]},
                          [graph], passes=passes)
    assert "pass fold-constants removed" in reasons
