"""The delta rebuild: after an edit of a few step tables, only the touched
steps are resolved, keyed and run; every other step is trusted from the
checked no-op stamp and the configuration entry.

What must hold: the result (lock file keys, outputs) is exactly what the full
load gives; any edit the delta cannot absorb, any stale record or stamp, any
error, takes the normal path, which reports as it always has. The tests run
the CLI in fresh interpreters, as users do (a process that already imported
the plugins never answers from records).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from test_configcache import RECIPE, Proc, lock_keys

#: runs the CLI and reports, as its last stderr line, whether the full load ran
WRAPPER = textwrap.dedent('''\
    import json, sys
    import tinybuild.project as project
    full = []
    real = project.load_project
    def load_project(*args, **kwargs):
        full.append(1)
        return real(*args, **kwargs)
    project.load_project = load_project
    from tinybuild.cli import main
    code = main(sys.argv[1:])
    print(json.dumps({"code": code, "full": bool(full), "modules": sorted(sys.modules)}), file=sys.stderr)
''')

NOOP = "nothing changed since the last build"


class DeltaProc(Proc):
    """:class:`test_configcache.Proc` with the no-op fast path on (the delta needs its stamp)."""

    def __init__(self, root):
        super().__init__(root)
        del self.env["TINYBUILD_NO_FASTPATH"]

    def build(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, bool]:
        """(exit code, stderr, whether the full load ran)."""
        command = [sys.executable, "-c", WRAPPER, "build", str(self.recipe), "--plain", *args]
        proc = subprocess.run(command, capture_output=True, text=True, env={**self.env, **(env or {})},
                              cwd=self.root, timeout=120)
        *lines, last = proc.stderr.strip().splitlines()
        report = json.loads(last)
        self.modules = set(report["modules"])  # what the last build imported
        return report["code"], "\n".join(lines), report["full"]

    def write(self, text: str) -> None:
        self.recipe.write_text(text)
        self.settle(self.recipe, age=2.0)

    def out(self, step: str) -> str:
        return (self.root / "build" / "cc" / step / "out.txt").read_text()


@pytest.fixture
def dp(tmp_path) -> DeltaProc:
    p = DeltaProc(tmp_path).populate()
    code, err, full = p.build()
    assert code == 0 and full, err  # the first build loads everything and records both
    return p


def full_keys(p: DeltaProc, tmp_path_factory) -> dict[str, str]:
    """The keys a from-scratch full build of the same recipe and data gives."""
    other = DeltaProc(tmp_path_factory.mktemp("scratch"))
    for name in ("cc_plugin.py", "cc_params.py", "recipe.toml", "data.txt"):
        shutil.copy2(p.root / name, other.root / name)
    code, err, full = other.build(env={"TINYBUILD_NO_FASTPATH": "1", "TINYBUILD_NO_CONFIG_CACHE": "1"})
    assert code == 0 and full, err
    return lock_keys(other)


def test_an_edited_leaf_reruns_alone_without_the_full_load(dp, tmp_path_factory):
    before = lock_keys(dp)
    dp.write(RECIPE.replace('input = "a"\nvalue = 2', 'input = "a"\nvalue = 3'))
    code, err, full = dp.build()
    assert code == 0 and not full, err
    assert "ok: 1 built, 2 cached" in err and "params.value 2 → 3" in err, err
    # the edited table is checked without the recipe module, whose [recipe]/[target] models cost 9 ms
    assert "tinybuild.steptables" in dp.modules and "tinybuild.recipe" not in dp.modules
    after = lock_keys(dp)
    assert after["b"] != before["b"] and after["a"] == before["a"] and after["c"] == before["c"]
    assert after == full_keys(dp, tmp_path_factory)  # byte for byte the full load's keys
    assert dp.out("b").startswith("3 plain")
    # the untouched entries' lines are reused, not encoded again: the file is still canonical
    from tinybuild.lockfile import lock_text

    assert dp.lock.read_text() == lock_text("cc", json.loads(dp.lock.read_text())["steps"])


def test_after_a_delta_the_no_op_and_the_next_edit_are_fast_again(dp, tmp_path_factory):
    dp.write(RECIPE.replace("value = 2", "value = 3"))
    assert dp.build()[0] == 0
    code, err, full = dp.build()
    assert code == 0 and NOOP in err and not full  # the delta stamped its build
    dp.write(RECIPE.replace("value = 2", "value = 4"))
    code, err, full = dp.build()
    assert code == 0 and not full and "ok: 1 built, 2 cached" in err, err  # the delta recorded its entry
    assert lock_keys(dp) == full_keys(dp, tmp_path_factory)


def test_an_edited_upstream_step_reruns_everything_downstream(dp, tmp_path_factory):
    dp.write(RECIPE.replace('label = "${CC_LABEL:-x}"', 'label = "${CC_LABEL:-z}"'))
    code, err, full = dp.build()
    assert code == 0 and not full and "ok: 3 built, 0 cached" in err, err
    assert lock_keys(dp) == full_keys(dp, tmp_path_factory)
    assert dp.out("c") == "1 plain 1 z data one\n"


def test_a_comment_only_edit_runs_nothing_and_loads_nothing(dp):
    before = dp.lock.read_bytes()
    dp.write("# a comment\n" + RECIPE)
    code, err, full = dp.build()
    assert code == 0 and not full and "ok: 0 built, 3 cached" in err, err
    assert dp.lock.read_bytes() == before
    assert NOOP in dp.build()[1]


@pytest.mark.parametrize("edit", [
    pytest.param(lambda r: r.replace('use = "cc-echo"\ninput = "a"\nvalue = 2', 'use = "cc-echo"\nvalue = 2'), id="input"),
    pytest.param(lambda r: r.replace('name = "cc"', 'name = "cc"\nseed = 9'), id="recipe-table"),
    pytest.param(lambda r: r + '\n[steps.d]\nuse = "cc-echo"\n', id="new-step"),
    pytest.param(lambda r: r.replace("[steps.c]", "[steps.cc]"), id="renamed"),
    pytest.param(lambda r: r.replace("value = 2", "matrix = { value = [5, 6] }"), id="sweep"),
    pytest.param(lambda r: r.replace("value = 2", 'value = 2\nlabel = "${CC_OTHER:-o}"'), id="new-variable"),
])
def test_edits_the_delta_does_not_take_go_the_full_way(dp, tmp_path_factory, edit):
    dp.write(edit(RECIPE))
    code, err, full = dp.build()
    assert code == 0 and full, err
    assert lock_keys(dp) == full_keys(dp, tmp_path_factory)


def test_an_invalid_edit_is_reported_as_the_full_load_reports_it(dp):
    dp.write(RECIPE.replace("value = 2", 'value = "two"'))
    code, err, full = dp.build()
    assert code == 2 and full and "steps.b.value" in err, err
    assert "Traceback" not in err


def test_an_unknown_param_is_reported_as_the_full_load_reports_it(dp):
    dp.write(RECIPE.replace("value = 2", "valeu = 2"))
    code, err, full = dp.build()
    assert code == 2 and full and "steps.b.valeu" in err and "did you mean" in err, err


def test_a_stale_stamp_is_not_trusted(dp):
    """An output tampered with since the last build: the stamp no longer
    holds, so the untouched steps cannot be trusted; the full way repairs it."""
    (dp.root / "build" / "cc" / "a" / "out.txt").write_text("tampered")
    dp.write(RECIPE.replace("value = 2", "value = 3"))
    code, err, full = dp.build()
    assert code == 0 and full and "ok: 1 built, 2 cached" in err, err
    assert dp.out("a") == "1 x data one\n"


def test_a_changed_data_file_with_an_edit_goes_the_full_way(dp):
    (dp.root / "data.txt").write_text("data two\n")
    dp.write(RECIPE.replace("value = 2", "value = 3"))
    code, err, full = dp.build()
    assert code == 0 and full and "ok: 3 built, 0 cached" in err, err
    assert dp.out("c").endswith("data two\n")


def test_a_failing_touched_step_fails_the_build_and_the_next_build_recovers(dp):
    dp.write(RECIPE.replace("value = 2", 'value = 2\ndata = "missing.txt"'))
    code, err, full = dp.build()
    assert code == 2 and "missing.txt" in err, err
    dp.write(RECIPE.replace("value = 2", "value = 7"))
    code, err, _ = dp.build()
    assert code == 0 and "ok: 1 built, 2 cached" in err, err
    assert dp.out("b").startswith("7 plain")


def test_an_edited_plugin_is_never_answered_from_records(dp):
    dp.edit(dp.params, "value: int = 1", "value: int = 5")
    dp.write(RECIPE.replace("value = 2", "value = 3"))
    code, err, full = dp.build()
    assert code == 0 and full and "ok: 3 built, 0 cached" in err, err
    assert dp.out("a").startswith("5 x")


def test_disabled_with_the_fast_path_or_the_configuration_cache(dp):
    for variable in ("TINYBUILD_NO_FASTPATH", "TINYBUILD_NO_CONFIG_CACHE"):
        dp.write(RECIPE.replace("value = 2", f"value = {len(variable)}"))
        code, err, full = dp.build(env={variable: "1"})
        assert code == 0 and full, err


def test_the_stamp_a_delta_writes_still_guards_every_output(dp):
    """The delta keeps the stamp entries of the steps it did not touch: they
    must still catch a tampered output of such a step."""
    dp.write(RECIPE.replace("value = 2", "value = 3"))
    assert dp.build()[0] == 0
    (dp.root / "build" / "cc" / "c" / "out.txt").write_text("tampered")
    code, err, _ = dp.build()
    assert code == 0 and NOOP not in err, err
    assert dp.out("c") == "1 plain 1 x data one\n"


SWEPT = RECIPE + '''
[steps.s]
use = "cc-echo"
input = "a"
matrix = { value = [5, 6] }

[steps.after]
use = "cc-echo"
input = "s"
'''


def test_a_recipe_with_a_sweep_takes_the_delta_for_other_steps(dp, tmp_path_factory):
    dp.write(SWEPT)
    assert dp.build()[0] == 0
    dp.write(SWEPT.replace("value = 2", "value = 3"))
    code, err, full = dp.build()
    assert code == 0 and not full and "ok: 1 built, 6 cached" in err, err
    dp.write(SWEPT.replace("value = 2", "value = 3").replace('input = "s"', 'input = "s"\nlabel = "y"'))
    code, err, full = dp.build()  # a step downstream of a sweep is swept too: resolved the full way
    assert code == 0 and full and "ok: 2 built, 5 cached" in err, err
    assert lock_keys(dp) == full_keys(dp, tmp_path_factory)


def test_a_step_that_reads_the_recipe_is_not_trusted_after_an_edit(dp, tmp_path_factory):
    """The stamp's entry for the recipe is skipped by the delta; a step that
    reads the recipe as an input file must see the edit as its own."""
    reading = RECIPE.replace('data = "data.txt"', 'data = "recipe.toml"')
    dp.write(reading)
    assert dp.build()[0] == 0
    dp.write(reading.replace("value = 2", "value = 3"))
    code, err, full = dp.build()
    assert code == 0 and full and "ok: 3 built, 0 cached" in err, err
    assert "value = 3" in dp.out("a")
    assert lock_keys(dp) == full_keys(dp, tmp_path_factory)


TOUCH_PLUGIN = '''\
from pathlib import Path
from tinybuild.api import Kind, Params, StepType, hookimpl


class TouchParams(Params):
    note: str = ""
    edit: str = ""


def run(ctx, inputs, params):
    if params.edit:  # as if someone edited this file while the build ran
        path = Path(params.edit)
        path.write_text(path.read_text() + "\\n# edited while a build ran\\n")
    (ctx.out_dir / "out.txt").write_text(params.note)


@hookimpl
def tinybuild_step_types():
    return [StepType(name="cc-touch", version="1", produces=Kind.METRICS, run=run, params=TouchParams,
                     arity=(0, 0), uses_names=False)]
'''


def test_plugin_code_edited_while_a_delta_runs_is_seen_next_time(tmp_path):
    """The stamp a delta writes keeps the untouched steps' sources as they were
    checked before the build ran, not as they are after it."""
    p = DeltaProc(tmp_path).populate()
    p.env["TINYBUILD_PLUGINS"] = "cc=cc_plugin,tp=touch_plugin"
    (tmp_path / "touch_plugin.py").write_text(TOUCH_PLUGIN)
    p.settle(tmp_path / "touch_plugin.py")
    recipe = RECIPE + '\n[steps.t]\nuse = "cc-touch"\nnote = "1"\n'
    p.write(recipe)
    assert p.build()[0] == 0
    p.write(recipe.replace('note = "1"', f'note = "2"\nedit = "{p.plugin}"'))
    code, err, full = p.build()
    assert code == 0 and not full and "ok: 1 built, 3 cached" in err, err
    code, err, _ = p.build()
    assert code == 0 and NOOP not in err and "ok: 3 built, 1 cached" in err, err  # a, b, c: their plugin changed


def test_an_unknown_section_named_like_a_step_table_is_an_error(dp):
    dp.write(RECIPE.replace("[steps.c]", '["steps.c"]'))
    code, err, full = dp.build()
    assert code == 2 and full and "unknown section 'steps.c'" in err, err


def test_nesting_is_limited_as_deep_as_in_the_whole_recipe():
    from tinybuild.steptables import MAX_DEPTH, edited_step_spec

    problems: list = []
    value: list = [1]
    for _ in range(MAX_DEPTH - 2):  # within the table's own limit, past the recipe's
        value = [value]
    assert edited_step_spec("x", "steps.x", {"use": "a", "blob": value}, {}, problems, {}) is None
    assert problems and "nested more than" in problems[0].message and problems[0].key.startswith("steps.x.blob")


def test_an_error_of_an_edited_step_names_the_empty_variable(dp):
    env = {"EMPTYV": ""}
    with_var = RECIPE.replace('data = "data.txt"', 'data = "${EMPTYV}data.txt"')
    dp.write(with_var)
    assert dp.build(env=env)[0] == 0
    dp.write(with_var.replace('"${EMPTYV}data.txt"', '"${EMPTYV}/data.txt"'))
    code, err, _ = dp.build(env=env)
    assert code == 2 and "/data.txt" in err and "EMPTYV" in err, err


def test_a_default_edited_in_a_plugin_helper_module_is_no_no_op(dp):
    """The no-op stamp covers every module the build imported, not only the
    fingerprinted ones: a params default lives in a helper module here."""
    assert NOOP in dp.build()[1]
    dp.edit(dp.params, "value: int = 1", "value: int = 5")
    code, err, _ = dp.build()
    assert code == 0 and NOOP not in err and "params.value 1 → 5" in err, err
    assert dp.out("a").startswith("5 x")
