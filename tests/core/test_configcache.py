"""The configuration cache: ``plan`` and cached builds without plugins or pydantic.

Every key computed from a recorded resolution must equal, byte for byte,
the key the full load computes; anything that could make a record stale
(plugin source, environment variables, disabled plugins, data files) must
be seen; a damaged entry is a miss. The process-level tests run the CLI in
fresh interpreters, as users do: only there is nothing imported yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from toyenv import BUILTIN_PLUGINS, HERE, TOY_RECIPE

from tinybuild import configcache
from tinybuild.hashing import canonical_json
from tinybuild.keys import key_material, source_files, step_input_paths, step_key
from tinybuild.project import load_project

ROOT = HERE.parent.parent

# -- keys from records equal keys from the full load ---------------------------------


def recorded_twin(project, monkeypatch):
    """The project as the configuration cache rebuilds it from its entry."""
    monkeypatch.setattr(configcache, "STARTED_NS", time.time_ns() + 10**12)  # this process's files count as settled
    entry = project.cache.root / "config" / "twin.json"
    assert configcache.record(project, entry, environ=os.environ)
    data = configcache.read_entry(entry)
    return configcache.recorded_project(data, project.recipe.path, project.recipe.origin, cache_dir=str(project.cache.root),
                                out=str(project.out_dir.parent), lock=None)


def fake_digest(path: Path) -> str:
    return "file:" + str(path)  # the path enters the key as the digest would: equal paths, equal keys


def materials(project):
    out = {}
    for name in project.order:
        step = project.steps[name]
        digests = {dep: f"digest-of-{dep}" for dep in step.dependencies}
        metrics = {dep: {"accuracy": 0.5, "seconds": 1.0} for dep in step.inputs}
        material = key_material(step, input_digests=digests, dataset_digest=digests.get(step.dataset),
                                seed=project.recipe.meta.seed, salt=project.recipe.meta.salt, digest=fake_digest,
                                passes=project.registry.passes, recipe_name=project.recipe.meta.name,
                                target=project.recipe.target.model_dump(exclude_none=True), input_metrics=metrics)
        out[name] = (canonical_json(material), step_key(material))
    return out


def assert_twins(project, twin):
    assert twin.order == project.order
    assert materials(twin) == materials(project)
    # the no-op stamp of a build from records covers the plugins' sources, as a full build's,
    # plus every module the full load imported (a build from records does not import them)
    stamped, full = set(source_files(twin.steps.values(), twin.registry)), set(source_files(project.steps.values(), project.registry))
    assert full <= stamped and str(ROOT / "tinybuild" / "recipe.py") in stamped
    assert any("/pydantic/" in f for f in stamped)  # the plugins' libraries too
    for name, step in project.steps.items():
        other = twin.steps[name]
        assert step_input_paths(other) == step_input_paths(step)
        assert (other.dependencies, other.key, other.plugin) == (step.dependencies, step.key, step.plugin)
        for attr in ("name", "version", "produces", "consumes", "uses_names", "uses_target", "uses_input_metrics",
                     "volatile_metrics", "toolchain", "heavy", "gpus", "uses_dataset"):
            assert getattr(other.step_type, attr) == getattr(step.step_type, attr), (name, attr)
        assert (other.spec.table, other.spec.coordinates, other.spec.combination) == \
            (step.spec.table, step.spec.coordinates, step.spec.combination)


def test_recorded_keys_equal_full_load_keys_toy(ws, monkeypatch):
    project = load_project(ws.recipe, cache_dir=ws.cache)
    assert_twins(project, recorded_twin(project, monkeypatch))


def test_recorded_keys_equal_full_load_keys_sweep(ws, monkeypatch):
    ws.write(TOY_RECIPE + '\n[steps.sweep]\nuse = "toy-convert"\ninput = "train"\nmatrix = { mode = ["float32", "int8"] }\n')
    project = load_project(ws.recipe, cache_dir=ws.cache)
    assert any(s.spec.table == "sweep" for s in project.steps.values())
    assert_twins(project, recorded_twin(project, monkeypatch))


def test_recorded_keys_equal_full_load_keys_example(tmp_path, monkeypatch):
    """The example recipe with every built-in plugin: builders, graph passes
    (``key_extras``), [target]-keyed and metrics-keyed steps."""
    monkeypatch.delenv("TINYBUILD_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("TINYBUILD_PLUGINS", raising=False)
    project = load_project(ROOT / "recipes" / "mnist_cnn.toml", cache_dir=tmp_path / "cache", out_dir=tmp_path / "out")
    assert len(project.steps) >= 20
    assert_twins(project, recorded_twin(project, monkeypatch))


def test_values_that_do_not_survive_json_are_not_recorded(ws, monkeypatch):
    """Int dict keys sort differently once JSON made them strings: such a
    step is never recorded (its key from records could differ)."""
    import dataclasses

    project = load_project(ws.recipe, cache_dir=ws.cache)
    monkeypatch.setattr(configcache, "STARTED_NS", time.time_ns() + 10**12)
    entry = project.cache.root / "config" / "x.json"
    assert configcache.record(project, entry, environ=os.environ)
    step = project.steps["fp32"]
    odd = dataclasses.replace(step.step_type, key_extras=lambda params, passes: {2: "a", 10: "b"})
    project.steps["fp32"] = dataclasses.replace(step, step_type=odd)
    entry.unlink()
    assert not configcache.record(project, entry, environ=os.environ) and not entry.exists()


# -- fresh processes: what users run ----------------------------------------------------

#: the params live in a helper module that is neither the plugin's registration
#: module nor fingerprinted: only the configuration cache's signature of every
#: imported source file can notice that a default changed there
PARAMS = '''\
from tinybuild.api import InputFile, Params


class EchoParams(Params):
    value: int = 1
    label: str = "plain"
    data: InputFile | None = None
'''

PLUGIN = '''\
from pathlib import Path
from tinybuild.api import InputFile, Kind, Params, StepType, hookimpl

from cc_params import EchoParams


def run(ctx, inputs, params):
    text = f"{params.value} {params.label}"
    if params.data is not None:
        text += " " + Path(params.data).read_text()
    for a in inputs:
        text += " " + a.file("out.txt").read_text()
    (ctx.out_dir / "out.txt").write_text(text)
    return {"value": params.value}


class ListParams(Params):
    listing: InputFile


def listed(params):
    """The files the listing names: what they are depends on the listing's content."""
    base = Path(params.listing).parent
    return {name: base / name for name in Path(params.listing).read_text().split()}


def run_list(ctx, inputs, params):
    (ctx.out_dir / "out.txt").write_text(" ".join(p.read_text().strip() for p in listed(params).values()))


class DirParams(Params):
    folder: str


def dir_files(params):
    return {p.name: p for p in sorted(Path(params.folder).iterdir()) if p.is_file()}


def run_dir(ctx, inputs, params):
    (ctx.out_dir / "out.txt").write_text(" ".join(dir_files(params)))


@hookimpl
def tinybuild_step_types():
    return [StepType(name="cc-echo", version="1", produces=Kind.METRICS, run=run, params=EchoParams,
                     arity=(0, None), uses_names=False),
            StepType(name="cc-list", version="1", produces=Kind.METRICS, run=run_list, params=ListParams,
                     arity=(0, 0), input_files=listed, uses_names=False),
            StepType(name="cc-dir", version="1", produces=Kind.METRICS, run=run_dir, params=DirParams,
                     arity=(0, 0), input_files=dir_files, input_folders=lambda params: [Path(params.folder)],
                     uses_names=False)]
'''

RECIPE = '''\
[recipe]
name = "cc"

[steps.a]
use = "cc-echo"
label = "${CC_LABEL:-x}"
data = "data.txt"

[steps.b]
use = "cc-echo"
input = "a"
value = 2

[steps.c]
use = "cc-echo"
input = "a"
'''

#: runs the CLI and reports, as its last stderr line, which of these it imported
WRAPPER = textwrap.dedent('''\
    import json, sys
    from tinybuild.cli import main
    code = main(sys.argv[1:])
    watched = ("pydantic", "cc_plugin", "networkx", "tinybuild.recipe", "tinybuild.resolve.ValidationError")
    print(json.dumps({"code": code, "loaded": [m for m in watched if m in sys.modules]}), file=sys.stderr)
''')


class Proc:
    def __init__(self, root: Path):
        self.root = root
        self.recipe = root / "recipe.toml"
        self.plugin = root / "cc_plugin.py"
        self.params = root / "cc_params.py"
        self.lock = root / "recipe.lock.json"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
        self.env.update(PYTHONPATH=str(root), TINYBUILD_PLUGINS="cc=cc_plugin", TINYBUILD_NO_FASTPATH="1",
                        TINYBUILD_DISABLE_PLUGINS=",".join(BUILTIN_PLUGINS))
        self.env.pop("CC_LABEL", None)

    def populate(self) -> "Proc":
        """Write the plugin, its params module, the recipe and its data file, all settled."""
        files = {self.plugin: PLUGIN, self.params: PARAMS, self.recipe: RECIPE, self.root / "data.txt": "data one\n"}
        for path, text in files.items():
            path.write_text(text)
            self.settle(path)
        return self

    def settle(self, path: Path, age: float = 5.0) -> None:
        """Date a file as written ``age`` seconds ago: a file written while
        (or just before) a process ran is never recorded (see configcache)."""
        when = time.time() - age
        os.utime(path, (when, when))

    def edit(self, path: Path, old: str, new: str) -> None:
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
        self.settle(path, age=2.0)  # another mtime than before: only the signature tells

    def run(self, *args: str, cache: bool = True, env: dict[str, str] | None = None) -> tuple[int, str, str, list[str]]:
        environ = {**self.env, **(env or {})}
        if not cache:
            environ["TINYBUILD_NO_CONFIG_CACHE"] = "1"
        command = [sys.executable, "-c", WRAPPER, *args, str(self.recipe), *(["--plain"] if args[0] == "build" else [])]
        proc = subprocess.run(command, capture_output=True, text=True, env=environ, cwd=self.root, timeout=120)
        *lines, last = proc.stderr.strip().splitlines()
        report = json.loads(last)
        return report["code"], proc.stdout, "\n".join(lines), report["loaded"]


@pytest.fixture
def proc(tmp_path) -> Proc:
    p = Proc(tmp_path).populate()
    code, _, err, _ = p.run("build")
    assert code == 0, err
    return p


def lock_keys(p: Proc) -> dict[str, str]:
    return {name: entry["key"] for name, entry in json.loads(p.lock.read_text())["steps"].items()}


def without_times(text: str) -> str:
    import re

    return re.sub(r"in [0-9.]+s", "in Xs", text)


def test_plan_and_noop_build_import_no_pydantic_and_no_plugin(proc):
    lock = proc.lock.read_bytes()
    code, out, err, loaded = proc.run("plan")
    assert code == 0 and loaded == [], err
    full = proc.run("plan", cache=False)
    assert full[3] != [] and "pydantic" in full[3]  # the full load: what the cache saves
    assert (code, out, err) == full[:3]  # the same answer
    assert "3 cached, 0 to run" in out

    code, out, err, loaded = proc.run("build")
    assert code == 0 and loaded == [], err
    full = proc.run("build", cache=False)
    assert without_times(err) == without_times(full[2]) and "ok: 0 built, 3 cached" in err
    assert proc.lock.read_bytes() == lock  # the same lock file, byte for byte


@pytest.mark.parametrize("options", [["--only", "b"], ["--force", "c"], ["--json"], ["--only", "nope"]])
def test_plan_options_answer_as_the_full_load(proc, options):
    served = proc.run("plan", *options)
    assert served[:3] == proc.run("plan", *options, cache=False)[:3]
    if "nope" in options:  # an error: reported by the full load, word for word as before
        assert served[0] == 2 and "no step named 'nope'" in served[2] and "pydantic" in served[3]
    else:
        assert served[0] == 0 and "pydantic" not in served[3]


def test_edited_plugin_default_is_seen(proc):
    assert proc.run("plan")[3] == []  # served from the configuration cache...
    proc.edit(proc.params, "value: int = 1", "value: int = 5")
    code, out, err, loaded = proc.run("plan")
    assert code == 0 and "cc_plugin" in loaded  # ...until a source file the plugin imported changed
    assert "run     a" in out and "run     c" in out and "params.value 1 → 5" in out, out
    assert "source changed" not in out  # not the fingerprint: the params default alone
    assert (code, out) == proc.run("plan", cache=False)[:2]
    assert proc.run("build")[0] == 0
    assert "5 x data one" in (proc.root / "build" / "cc" / "a" / "out.txt").read_text()
    assert proc.run("plan")[3] == []  # recorded again


def test_edited_plugin_module_is_seen(proc):
    assert proc.run("plan")[3] == []
    proc.edit(proc.plugin, 'version="1"', 'version="2"')
    code, out, _, loaded = proc.run("plan")
    assert code == 0 and "cc_plugin" in loaded and "run     a" in out and "1 → 2" in out, out
    assert (code, out) == proc.run("plan", cache=False)[:2]


def test_changed_environment_variable_is_seen(proc):
    before = lock_keys(proc)
    assert proc.run("plan")[3] == []
    code, out, err, loaded = proc.run("plan", env={"CC_LABEL": "y"})
    assert code == 0 and "run     a" in out and "params.label" in out, out
    assert "pydantic" in loaded
    assert proc.run("build", env={"CC_LABEL": "y"})[0] == 0
    after = lock_keys(proc)
    assert after["a"] != before["a"]
    assert proc.run("plan", env={"CC_LABEL": "y"})[3] == []  # the entry for the new value


def test_changed_step_reruns_alone_with_identical_keys_elsewhere(proc):
    before = lock_keys(proc)
    proc.recipe.write_text(RECIPE.replace("value = 2", "value = 3"))
    code, _, err, _ = proc.run("build")
    assert code == 0 and "ok: 1 built, 2 cached" in err, err
    after = lock_keys(proc)
    assert after["b"] != before["b"] and {k: after[k] for k in "ac"} == {k: before[k] for k in "ac"}
    code, _, err, loaded = proc.run("build")  # recorded by that full load: served again
    assert code == 0 and loaded == [] and "ok: 0 built, 3 cached" in err
    assert lock_keys(proc) == after


def test_replaced_data_file_is_hashed_afresh(proc):
    before = lock_keys(proc)
    (proc.root / "data.txt").write_text("data two\n")
    code, out, _, loaded = proc.run("plan")
    assert code == 0 and loaded == [] and "run     a" in out  # paths from the record, contents hashed now
    code, _, err, _ = proc.run("build")  # a step must run: the full load runs it
    assert code == 0 and "ok: 3 built, 0 cached" in err, err
    assert lock_keys(proc)["a"] != before["a"]
    assert "data two" in (proc.root / "build" / "cc" / "c" / "out.txt").read_text()


def test_files_a_step_lists_from_its_input_file_are_seen(proc):
    """``input_files`` read the listing: a new name in it is a miss, and the
    keys then include the new file, as the full load's do."""
    proc.recipe.write_text(RECIPE + '\n[steps.d]\nuse = "cc-list"\nlisting = "listing.txt"\n')
    for name, text in (("listing.txt", "one.txt"), ("one.txt", "1"), ("two.txt", "2")):
        (proc.root / name).write_text(text)
        proc.settle(proc.root / name)
    assert proc.run("build")[0] == 0
    assert proc.run("plan")[3] == []
    proc.edit(proc.root / "listing.txt", "one.txt", "one.txt two.txt")
    code, out, err, loaded = proc.run("plan", "--json")
    assert code == 0 and "pydantic" in loaded, err
    assert out == proc.run("plan", "--json", cache=False)[1]
    assert [i["status"] for i in json.loads(out) if i["step"] == "d"] == ["run"]
    assert proc.run("build")[0] == 0
    assert (proc.root / "build" / "cc" / "d" / "out.txt").read_text() == "1 2"
    served = proc.run("plan", "--json")
    assert served[3] == [] and served[1] == proc.run("plan", "--json", cache=False)[1]


def test_files_a_step_lists_from_a_folder_are_seen(proc):
    """``input_folders``: a file added to a listed folder is a miss."""
    clips = proc.root / "clips"
    clips.mkdir()
    (clips / "one.txt").write_text("1")
    proc.recipe.write_text(RECIPE + f'\n[steps.e]\nuse = "cc-dir"\nfolder = "{clips}"\n')
    for path in (proc.recipe, clips / "one.txt", clips):
        proc.settle(path)
    assert proc.run("build")[0] == 0
    assert proc.run("plan")[3] == []
    (clips / "two.txt").write_text("2")
    proc.settle(clips / "two.txt")
    proc.settle(clips, age=2.0)
    code, out, err, loaded = proc.run("plan", "--json")
    assert code == 0 and "pydantic" in loaded, err
    assert out == proc.run("plan", "--json", cache=False)[1]
    assert proc.run("build")[0] == 0
    assert (proc.root / "build" / "cc" / "e" / "out.txt").read_text() == "one.txt two.txt"


def test_disabled_plugin_reports_what_the_full_load_reports(proc):
    env = {"TINYBUILD_DISABLE_PLUGINS": ",".join([*BUILTIN_PLUGINS, "cc"])}
    served = proc.run("plan", env=env)
    full = proc.run("plan", env=env, cache=False)
    assert served[0] == 2 and served[:3] == full[:3]
    assert "unknown step type 'cc-echo'" in served[2]


def test_missing_input_file_reports_what_the_full_load_reports(proc):
    (proc.root / "data.txt").unlink()
    served = proc.run("build")
    full = proc.run("build", cache=False)
    assert served[0] == 2 and served[:3] == full[:3] and "data.txt" in served[2]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "shape", "symlink", "folder"])
def test_damaged_entry_is_a_miss(proc, damage):
    entries = list((proc.root / ".tinybuild" / "config").glob("*.json"))
    assert len(entries) == 1
    entry = entries[0]
    good = entry.read_bytes()
    if damage == "garbage":
        entry.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    elif damage == "shape":
        data = json.loads(good)
        data["steps"] = [{"name": "a"}]
        entry.write_text(json.dumps(data))
    elif damage == "symlink":
        elsewhere = proc.root / "elsewhere.json"
        elsewhere.write_bytes(good)
        entry.unlink()
        entry.symlink_to(elsewhere)
    else:
        entry.unlink()
        entry.mkdir()
    code, out, err, loaded = proc.run("plan")
    assert code == 0 and "3 cached, 0 to run" in out and "pydantic" in loaded, err
    code, _, err, _ = proc.run("build")
    assert code == 0 and "ok: 0 built, 3 cached" in err
    if damage in ("garbage", "truncated", "shape"):  # rewritten by the full load, served again
        assert proc.run("plan")[3] == []


def test_concurrent_builds_leave_a_whole_entry(proc):
    proc.recipe.write_text(RECIPE.replace("value = 2", "value = 4"))
    procs = [subprocess.Popen([sys.executable, "-c", WRAPPER, "build", str(proc.recipe)], env=proc.env, cwd=proc.root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    code, out, err, loaded = proc.run("plan")
    assert code == 0 and loaded == [] and "3 cached, 0 to run" in out, err
    assert not [f for f in (proc.root / ".tinybuild" / "config").iterdir() if f.name.startswith(".")]  # no leftovers


def test_disabled_by_environment(proc):
    assert proc.run("plan", cache=False)[3] != []
    code, _, _, loaded = proc.run("build", env={"TINYBUILD_NO_CONFIG_CACHE": "1"})
    assert code == 0 and "pydantic" in loaded


def test_a_recipe_with_a_byte_order_mark_is_answered_from_records(proc):
    """The entry records the digest of the recipe's bytes as read, BOM included,
    and the loader drops the BOM only to parse: the next plan is answered from records."""
    proc.recipe.write_bytes(b"\xef\xbb\xbf" + proc.recipe.read_bytes())
    proc.settle(proc.recipe, age=2.0)
    first = proc.run("plan")  # other bytes: the full load, which records them
    assert first[0] == 0 and "pydantic" in first[3], first[2]
    code, out, err, loaded = proc.run("plan")
    assert code == 0 and loaded == [], err
    assert (code, out, err) == first[:3]
