"""The step key covers every component DESIGN.md lists, and nothing else."""

from __future__ import annotations

import dataclasses
import json

import pytest

import toy_plugin
from tinybuild import keys


def plan_keys(ws) -> dict[str, str | None]:
    run = ws.run("plan", str(ws.recipe), "--json")
    assert run.code == 0, run.err
    return {item["step"]: item["key"] for item in json.loads(run.out)}


@pytest.fixture
def built(ws):
    assert ws.build().code == 0
    return plan_keys(ws)


def test_formatting_comments_and_key_order_do_not_change_keys(ws, built):
    text = ws.recipe.read_text()
    # reorder keys inside tables, add comments and blank lines, change spacing
    edited = text.replace('name = "toy"\nseed = 3', 'seed   =   3  # the seed\n# a comment\nname = "toy"')
    edited = edited.replace('[steps.int8]\nuse = "toy-convert"\ninput = "train"\nmode = "int8"',
                            '[steps.int8]\n\nmode = "int8"   # quantized\ninput = "train"\nuse = "toy-convert"')
    ws.write("# header comment\n\n" + edited)
    assert plan_keys(ws) == built


def test_explicit_default_equals_omitted_param(ws, built):
    ws.edit("epochs = 3", "epochs = 3\nlearning_rate = 0.1")  # 0.1 is the default
    assert plan_keys(ws) == built


@pytest.mark.parametrize("edit,changed", [
    (("epochs = 3", "epochs = 4"), "train"),                                 # params
    (("seed = 3", "seed = 4"), "dataset"),                                   # seed
    (("seed = 3", 'seed = 3\nsalt = "v2"'), "dataset"),                     # salt
    (('mode = "int8"', 'mode = "float32"'), "int8"),                       # params of a leaf
    (("[model]\nuse = \"toy-model\"", "[model]\nuse = \"toy-model\"\nwidth = 5"), "model"),
])
def test_recipe_components_change_the_key(ws, built, edit, changed):
    ws.edit(*edit)
    now = plan_keys(ws)
    assert now[changed] is not None and now[changed] != built[changed]


def test_input_content_changes_the_key(ws, built):
    (ws.root / "numbers.txt").write_text("1 2 3 4\n")
    assert plan_keys(ws)["dataset"] != built["dataset"]


def test_input_path_does_not_enter_the_key(ws, built):
    (ws.root / "copy.txt").write_text((ws.root / "numbers.txt").read_text())
    ws.edit('file = "numbers.txt"', 'file = "copy.txt"')
    assert plan_keys(ws)["dataset"] == built["dataset"]


def test_step_type_version_changes_the_key(ws, built, monkeypatch):
    bumped = [dataclasses.replace(st, version="2.0") if st.name == "toy-model" else st for st in toy_plugin.STEP_TYPES]
    monkeypatch.setattr(toy_plugin, "STEP_TYPES", bumped)
    assert plan_keys(ws)["model"] != built["model"]


def test_toolchain_version_changes_the_key(ws, built, monkeypatch):
    real = keys.package_version

    def fake(dist):
        return "99.0" if dist == "numpy" else real(dist)

    monkeypatch.setattr(keys, "package_version", fake)
    now = plan_keys(ws)
    assert now["train"] != built["train"]  # toy-train declares numpy
    assert now["model"] == built["model"]  # toy-model declares nothing
    plan = ws.plan()
    assert plan["train"][1] == [f"numpy {real('numpy')} → 99.0"]


def test_plugin_source_changes_the_key(ws, tmp_path, monkeypatch):
    module = tmp_path / "srcplug.py"
    source = (
        "from tinybuild.api import StepType, Kind, hookimpl\n"
        "def run(ctx, inputs, params):\n"
        "    (ctx.out_dir / 'x.txt').write_text('x')\n"
        "@hookimpl\n"
        "def tinybuild_step_types():\n"
        "    return [StepType('src', '1.0', Kind.DATASET, run, arity=(0, 0))]\n"
    )
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin,src=srcplug")
    ws.write('[recipe]\nname = "s"\n\n[dataset]\nuse = "src"\n')
    assert ws.build().code == 0
    before = plan_keys(ws)["dataset"]
    module.write_text(source + "# a comment is a source change\n")
    assert plan_keys(ws)["dataset"] != before
    assert ws.plan()["dataset"] == ("run", ["plugin src source changed"])


def test_key_material_is_canonical():
    a = {"params": {"b": 1, "a": [1, 2]}, "seed": 0}
    b = {"seed": 0, "params": {"a": [1, 2], "b": 1}}
    assert keys.step_key(a) == keys.step_key(b)
    assert keys.step_key(a) != keys.step_key({**a, "seed": 1})


def test_renaming_a_content_only_step_reruns_only_name_sensitive_steps(ws):
    from toyenv import built_steps

    ws.build()
    text = ws.recipe.read_text().replace("[steps.fp32]", "[steps.float]").replace('inputs = ["fp32", "int8"]', 'inputs = ["float", "int8"]')
    ws.write(text)
    run = ws.build()
    # toy-convert declares uses_names=False: the renamed step is a cache hit;
    # toy-report writes its inputs' names into report.md, so it reruns
    assert built_steps(run) == ["report"]
    assert (ws.root / "build" / "toy" / "report" / "report.md").read_text().startswith("float:")


def test_name_sensitive_steps_with_equal_material_get_different_keys(ws):
    ws.write(ws.recipe.read_text() + '\n[steps.report2]\nuse = "toy-report"\ninputs = ["fp32", "int8"]\n')
    ws.build()
    keys = plan_keys(ws)
    assert keys["report"] != keys["report2"]


def test_a_build_computes_each_key_once(ws, monkeypatch):
    """The plan keys every step before anything runs; the executor then finds
    the same key material in the project's memo instead of computing it again."""
    import tinybuild.plan as plan_module

    calls: list[str] = []
    real = plan_module.key_material

    def counting(step, *args, **kwargs):
        calls.append(step.name)
        return real(step, *args, **kwargs)

    monkeypatch.setattr(plan_module, "key_material", counting)
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    assert ws.build().code == 0
    calls.clear()
    run = ws.build()  # all cached: the plan and the executor both key every step
    assert run.code == 0 and "6 cached" in run.err
    assert sorted(calls) == sorted(["dataset", "model", "train", "fp32", "int8", "report"])


def test_the_key_memo_never_serves_a_key_of_a_file_that_changed_since(ws):
    """A data file edited while earlier steps run is keyed by its new content."""
    from tinybuild.plan import keyed_material
    from tinybuild.project import load_project

    project = load_project(ws.recipe, cache_dir=ws.cache)
    dataset = project.steps["dataset"]
    material, key = keyed_material(project, dataset, {})
    assert keyed_material(project, dataset, {}) == (material, key) and project.keys.computed == 1
    (ws.root / "numbers.txt").write_text("7 8 9 10\n")
    assert keyed_material(project, dataset, {})[1] != key and project.keys.computed == 2


def test_explain_says_whether_a_file_was_added_removed_or_changed():
    from tinybuild.explain import explain

    old = {"files": {"clip a/1.wav": "d1", "clip a/2.wav": "d2"}}
    new = {"files": {"clip a/1.wav": "d1x", "clip a/3.wav": "d3"}}
    assert explain(new, [], old, []) == ["file clip a/1.wav changed", "file clip a/2.wav removed",
                                         "file clip a/3.wav added"]
