"""Plugin loading: entry points, disabling, broken plugins, hook docs, schema."""

from __future__ import annotations

import inspect
import json

import pytest

from tinybuild import hookspecs
from tinybuild.errors import PluginError
from tinybuild.plugins import load_plugins


def write_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("tinybuild_")]


def test_every_hook_is_documented():
    assert len(HOOKS) >= 9
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 30, f"{name} has no real docstring"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name}: parameter {param} undocumented"
        if name in ("tinybuild_step_types", "tinybuild_graph_passes"):
            assert ":return:" in doc


def test_toy_plugin_is_listed(ws):
    run = ws.run("plugins")
    assert run.code == 0
    assert "toy" in run.out and "toy-train" in run.out


def test_disable_plugin_by_flag_and_env(ws, monkeypatch):
    run = ws.run("build", str(ws.recipe), "--disable-plugin", "toy")
    assert run.code == 2 and "unknown step type 'toy-data'" in run.err
    monkeypatch.setenv("TINYBUILD_DISABLE_PLUGINS", ",".join(["toy", *_builtins()]))
    run = ws.run("plan", str(ws.recipe))
    assert run.code == 2 and "unknown step type" in run.err


def test_disabling_an_unknown_plugin_is_an_error(ws):
    run = ws.run("plan", str(ws.recipe), "--disable-plugin", "tyo")
    assert run.code == 2 and "no such plugin" in run.err and "did you mean 'toy'" in run.err


@pytest.mark.parametrize("code, where", [
    ("import sys\nsys.exit(0)\n", "failed to import: called sys.exit(0)"),
    ("import sys\nfrom tinybuild.api import hookimpl\n\n@hookimpl\ndef tinybuild_step_types():\n    sys.exit(0)\n",
     "failed in hook tinybuild_step_types: called sys.exit(0)"),
], ids=["at-import", "in-a-hook"])
def test_a_plugin_that_calls_sys_exit_is_an_error_not_a_silent_success(ws, tmp_path, monkeypatch, code, where):
    write_module(tmp_path, monkeypatch, "exitplug", code)
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,quitter=exitplug")
    for command in ("plan", "build"):
        run = ws.run(command, str(ws.recipe))
        assert run.code == 2, (command, run.err)
        assert f"plugin 'quitter'" in run.err and where in run.err and "Traceback" not in run.err


def test_broken_plugin_names_itself(ws, tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "brokenplug", "import does_not_exist_anywhere\n")
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,broken=brokenplug")
    run = ws.run("plan", str(ws.recipe))
    assert run.code == 2
    assert "plugin 'broken' (brokenplug) failed to import" in run.err
    assert "--disable-plugin broken" in run.err
    assert "Traceback" not in run.err
    # and disabling it makes the recipe work again
    assert ws.run("plan", str(ws.recipe), "--disable-plugin", "broken").code == 0


def test_duplicate_step_type_names_both_plugins(ws, tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "dupplug", (
        "from tinybuild.api import StepType, Kind, hookimpl\n"
        "@hookimpl\n"
        "def tinybuild_step_types():\n"
        "    return [StepType('toy-train', '9.0', Kind.KERAS_MODEL, lambda c, i, p: None)]\n"
    ))
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,dup=dupplug")
    run = ws.run("plan", str(ws.recipe))
    assert run.code == 2
    assert "plugins 'toy' and 'dup' both declare step type 'toy-train'" in run.err


def test_registry_hook_failure_names_plugin_and_hook(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "raiseplug", (
        "from tinybuild.api import hookimpl\n"
        "@hookimpl\n"
        "def tinybuild_step_types():\n"
        "    raise ValueError('boom')\n"
    ))
    with pytest.raises(PluginError, match=r"plugin 'bad' failed in hook tinybuild_step_types: ValueError: boom"):
        load_plugins(environ={"TINYBUILD_PLUGINS": "bad=raiseplug", "TINYBUILD_DISABLE_PLUGINS": ""}, disabled=_builtins())


def test_wrong_declaration_type(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "wrongplug", (
        "from tinybuild.api import hookimpl\n"
        "@hookimpl\n"
        "def tinybuild_step_types():\n"
        "    return ['not a step type']\n"
    ))
    with pytest.raises(PluginError, match="expected tinybuild.api.StepType"):
        load_plugins(environ={"TINYBUILD_PLUGINS": "wrong=wrongplug"}, disabled=_builtins())


def _builtins():
    from toyenv import BUILTIN_PLUGINS

    return BUILTIN_PLUGINS


def test_schema_includes_plugin_params(ws):
    run = ws.run("schema")
    assert run.code == 0
    schema = json.loads(run.out)
    assert schema["properties"]["steps"]["additionalProperties"] == {"$ref": "#/$defs/step"}
    step = schema["$defs"]["step"]
    assert set(step["properties"]["use"]["enum"]) == {"toy-model", "toy-train", "toy-convert", "toy-report"}
    # discriminated on use: one if/then per step type, no undiscriminated oneOf
    assert {"if": {"properties": {"use": {"const": "toy-train"}}, "required": ["use"]},
            "then": {"$ref": "#/$defs/step.toy-train"}} in step["allOf"]
    train = schema["$defs"]["step.toy-train"]
    assert train["properties"]["epochs"]["default"] == 2
    assert train["properties"]["use"] == {"const": "toy-train", "description": "step type toy-train"}
    assert train["additionalProperties"] is False
    assert schema["properties"]["dataset"]["properties"]["use"]["enum"] == ["toy-data"]
    assert "flash_kb" in schema["properties"]["target"]["properties"]
    assert "oneOf" not in json.dumps(schema)


def test_python_dash_m_entry_point(ws):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tinybuild", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("tinybuild ")


# -- plugin UX: disabled, broken, duplicate, checked at plan time --------------


def test_disabled_plugins_step_type_names_the_plugin(ws):
    run = ws.run("plan", str(ws.recipe), "--disable-plugin", "toy")
    assert run.code == 2
    assert ("step type 'toy-data' is provided by plugin 'toy', which is disabled "
            "(--disable-plugin/TINYBUILD_DISABLE_PLUGINS)") in run.err


def test_plugins_listing_survives_a_broken_plugin(ws, tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "brokenplug", "import does_not_exist_anywhere\n")
    write_module(tmp_path, monkeypatch, "raiseplug2", (
        "from tinybuild.api import hookimpl\n"
        "@hookimpl\n"
        "def tinybuild_graph_passes():\n"
        "    raise ValueError('boom')\n"
    ))
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,broken=brokenplug,raising=raiseplug2")
    run = ws.run("plugins")
    assert run.code == 0
    assert "toy-train" in run.out  # the healthy plugin is listed in full
    assert "BROKEN" in run.out
    assert "broken plugin 'broken': plugin 'broken' (brokenplug) failed to import: ModuleNotFoundError" in run.err
    assert "broken plugin 'raising': plugin 'raising' failed in hook tinybuild_graph_passes: ValueError: boom" in run.err
    # a build still refuses to run without a plugin it may need
    assert ws.run("plan", str(ws.recipe)).code == 2


def test_duplicate_step_type_inside_one_plugin(ws, tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "twiceplug", (
        "from tinybuild.api import StepType, Kind, hookimpl\n"
        "@hookimpl\n"
        "def tinybuild_step_types():\n"
        "    st = StepType('twice', '1.0', Kind.KERAS_MODEL, lambda c, i, p: None)\n"
        "    return [st, st]\n"
    ))
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,twice=twiceplug")
    run = ws.run("plan", str(ws.recipe))
    assert run.code == 2
    assert "plugin 'twice' declares step type 'twice' twice in tinybuild_step_types" in run.err
    assert "plugins 'twice' and 'twice'" not in run.err


def test_the_same_plugin_named_twice_loads_once(ws, monkeypatch):
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,toy=toy_plugin")
    assert ws.run("plan", str(ws.recipe)).code == 0


def test_step_type_check_fails_plan_with_the_key(ws, tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "checkplug", (
        "from tinybuild.api import StepType, Kind, Params, ParamProblem, hookimpl\n"
        "class P(Params):\n"
        "    friends: tuple[str, ...] = ()\n"
        "def check(params, registry):\n"
        "    return [ParamProblem(f'friends[{i}]', f'unknown step type {n!r}', registry.missing_hint('step type', n, registry.step_types))\n"
        "            for i, n in enumerate(params.friends) if n not in registry.step_types]\n"
        "@hookimpl\n"
        "def tinybuild_step_types():\n"
        "    return [StepType('checked', '1.0', Kind.REPORT, lambda c, i, p: None, params=P, arity=(0, 0), check=check)]\n"
    ))
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,chk=checkplug")
    ws.write(ws.recipe.read_text() + '\n[steps.chk]\nuse = "checked"\nfriends = ["toy-train", "toy-trian"]\n')
    run = ws.run("plan", str(ws.recipe))
    assert run.code == 2
    assert "steps.chk.friends[1]: unknown step type 'toy-trian'" in run.err
    assert "did you mean 'toy-train'" in run.err
    ws.edit('"toy-trian"', '"toy-convert"')
    assert ws.run("plan", str(ws.recipe)).code == 0


@pytest.mark.parametrize("old, new, key", [
    ("epochs = 3", 'epochs = "3"', "steps.train.epochs"),
    ("seed = 3", 'seed = "3"', "recipe.seed"),
    ("[dataset]", '[target]\nflash_kb = "32"\n\n[dataset]', "target.flash_kb"),
])
def test_quoted_numbers_are_rejected_like_the_schema_does(ws, old, new, key):
    ws.edit(old, new)
    run = ws.run("plan", str(ws.recipe))
    assert run.code == 2
    assert key in run.err and "Traceback" not in run.err


# -- StepType.check_inputs: params checked against the recipe's DAG -------------------------

PICKY = (
    "from tinybuild.api import StepType, Kind, Params, ParamProblem, hookimpl\n"
    "from tinybuild.errors import did_you_mean\n"
    "SEEN = []\n"
    "class P(Params):\n"
    "    pick: str = ''\n"
    "    crash: bool = False\n"
    "def check_inputs(params, inputs):\n"
    "    SEEN.append(tuple(inputs))\n"
    "    if params.crash:\n"
    "        raise RuntimeError('boom')\n"
    "    upstream = [n for view in inputs for n in (view.name, *view.inputs)]\n"
    "    if params.pick and params.pick not in upstream:\n"
    "        return [ParamProblem('pick', f'no step {params.pick!r} upstream',\n"
    "                             f\"{did_you_mean(params.pick, upstream)} upstream: {', '.join(upstream)}\")]\n"
    "    return []\n"
    "def run(ctx, inputs, params):\n"
    "    (ctx.out_dir / 'picked.txt').write_text(params.pick)\n"
    "@hookimpl\n"
    "def tinybuild_step_types():\n"
    "    return [StepType('picky', '1.0', Kind.REPORT, run, consumes=(Kind.TFLITE,), params=P, arity=(1, None),\n"
    "                     check_inputs=check_inputs)]\n"
)


@pytest.fixture
def picky(ws, tmp_path, monkeypatch):
    """A step type whose ``pick`` must name one of its inputs or one of theirs."""
    import sys

    write_module(tmp_path, monkeypatch, "pickyplug", PICKY)
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,picky=pickyplug")
    monkeypatch.delitem(sys.modules, "pickyplug", raising=False)
    return ws


def _artifacts(ws) -> list:
    """Every file a step wrote into the cache or the build folder."""
    return [p for root in (ws.cache, ws.root / "build") if root.exists() for p in root.rglob("*")
            if p.is_file() and p.suffix in (".txt", ".tflite", ".json", ".md")]


def test_check_inputs_fails_plan_and_build_before_anything_runs(picky):
    import pickyplug

    picky.write(picky.recipe.read_text() + '\n[steps.pick]\nuse = "picky"\ninputs = ["fp32", "int8"]\npick = "trian"\n')
    run = picky.run("plan", str(picky.recipe))
    assert run.code == 2, run.err
    assert "recipe.toml" in run.err and "steps.pick.pick: no step 'trian' upstream" in run.err
    assert "did you mean 'train'?" in run.err and "upstream: fp32, train, int8, train" in run.err
    # what the hook saw: one read-only view per input, in order, with the input's own inputs
    views = pickyplug.SEEN[-1]
    assert [(v.name, v.use, v.produces, v.inputs) for v in views] == [
        ("fp32", "toy-convert", "tflite", ("train",)), ("int8", "toy-convert", "tflite", ("train",))]
    with pytest.raises(AttributeError):
        views[0].name = "other"
    run = picky.run("build", str(picky.recipe), "--plain", "--out", str(picky.root / "build"))
    assert run.code == 2 and "steps.pick.pick" in run.err
    assert _artifacts(picky) == []  # nothing ran: no step wrote anything
    picky.edit('pick = "trian"', 'pick = "train"')
    assert picky.run("plan", str(picky.recipe)).code == 0


def test_check_inputs_sees_sweep_members_and_points_at_the_matrix_entry(picky):
    text = picky.recipe.read_text().replace('mode = "int8"', 'matrix = { mode = ["int8", "float32"] }')
    picky.write(text + '\n[steps.pick]\nuse = "picky"\ninputs = ["int8"]\npick = "int8-mode_float32"\n')
    run = picky.run("plan", str(picky.recipe))
    assert run.code == 0, run.err
    picky.edit('pick = "int8-mode_float32"', 'matrix = { pick = ["int8-mode_int8", "int8"] }')
    run = picky.run("plan", str(picky.recipe))
    assert run.code == 2
    assert "steps.pick.matrix.pick[1]: no step 'int8' upstream" in run.err
    assert "upstream: int8-mode_int8, train, int8-mode_float32, train" in run.err


def test_a_crashing_check_inputs_is_exit_2_naming_the_step_type(picky):
    picky.write(picky.recipe.read_text() + '\n[steps.pick]\nuse = "picky"\ninputs = ["fp32"]\ncrash = true\n')
    run = picky.run("plan", str(picky.recipe))
    assert run.code == 2 and "Traceback" not in run.err
    assert "steps.pick: the input check of step type 'picky' failed: RuntimeError: boom" in run.err


def test_check_inputs_is_skipped_when_an_input_is_unknown(picky):
    import pickyplug

    picky.write(picky.recipe.read_text() + '\n[steps.pick]\nuse = "picky"\ninputs = ["fp33"]\npick = "x"\n')
    count = len(pickyplug.SEEN)
    run = picky.run("plan", str(picky.recipe))
    assert run.code == 2 and "no step named 'fp33'" in run.err
    assert len(pickyplug.SEEN) == count and "steps.pick.pick" not in run.err


def test_check_inputs_never_enters_the_cache_key():
    import dataclasses

    from tinybuild.testing import params_problems, step_key
    from toy_plugin import STEP_TYPES

    report = next(st for st in STEP_TYPES if st.name == "toy-report")
    checked = dataclasses.replace(report, check_inputs=lambda params, inputs: [])
    assert step_key(checked) == step_key(report)
    # the testing helper runs it when given views
    from tinybuild.api import ParamProblem, StepView

    failing = dataclasses.replace(report, check_inputs=lambda params, inputs: [
        ParamProblem("max_size", f"{len(inputs)} inputs")])
    problems = params_problems(failing, {}, inputs=[StepView("a", "toy-convert", "tflite", ("b",))])
    assert [(p.key, p.message) for p in problems] == [("steps.test.max_size", "1 inputs")]
    assert params_problems(failing, {}) == []


def test_distribution_names_and_versions_are_read_as_importlib_reads_them(tmp_path):
    """plugins.name_and_version parses only METADATA's header block (a README
    in the description made every full load parse thousands of lines): it must
    give what ``Distribution.name`` and ``.version`` give, for every installed
    distribution."""
    from importlib import metadata

    from tinybuild.plugins import name_and_version

    dists = list(metadata.distributions())
    assert len(dists) > 10  # tinybuild and what it installs
    for dist in dists:
        assert name_and_version(dist) == (dist.name, dist.version), getattr(dist, "_path", dist)
    # the shapes the venv may not hold: an .egg-info file, folded headers, CRLF, PKG-INFO only, nothing
    (tmp_path / "eggfile-1.2.3.egg-info").write_text("Metadata-Version: 1.1\nName: eggfile\nVersion: 1.2.3\n")
    odd = {"fold-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: fold\nVersion:\n 1.0\n\nbody\n",
           "crlf-2.0.dist-info/METADATA": "Metadata-Version: 2.1\r\nName: crlf\r\nVersion: 2.0\r\n\r\nbody\r\n",
           "pkginfo-3.0.dist-info/PKG-INFO": "Metadata-Version: 2.1\nName: pkginfo\nVersion: 3.0\n",
           "bare-4.0.dist-info/RECORD": ""}
    for rel, text in odd.items():
        (tmp_path / rel).parent.mkdir()
        (tmp_path / rel).write_bytes(text.encode())
    for path in tmp_path.iterdir():
        dist = metadata.PathDistribution(path)
        assert name_and_version(dist) == (dist.name, dist.version), path.name
