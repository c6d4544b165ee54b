"""Builds end to end with the toy plugin: incrementality, failures, outputs."""

from __future__ import annotations

import json
import os

import toy_plugin
from toyenv import built_steps

ALL = ["dataset", "model", "train", "fp32", "int8", "report"]


def objects(ws):
    root = ws.cache / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def actions(ws):
    root = ws.cache / "actions"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_first_build_runs_everything_then_nothing(ws):
    first = ws.build()
    assert first.code == 0, first.err
    assert built_steps(first) == ALL
    again = ws.build()
    assert again.code == 0
    assert built_steps(again) == []
    assert "[1-6/6] 6 steps cached (dataset … report; -v lists each)" in again.err  # one line, not six
    assert "ok: 0 built, 6 cached" in again.err
    report = ws.root / "build" / "toy" / "report" / "report.md"
    assert report.read_text().splitlines()[0].startswith("fp32: tflite")


def test_cached_steps_are_one_line_per_run_and_each_under_verbose(ws):
    ws.build()
    ws.edit("epochs = 3", "epochs = 4")
    lines = [line.split() for line in ws.build().err.splitlines()]
    # dataset and model cached (one line for the run of two), then train... run
    assert lines[0][:4] == ["[1-2/6]", "2", "steps", "cached"]
    assert lines[1][:3] == ["[3/6]", "train", "run"]
    assert not any("cached" in parts for parts in lines[1:-2])  # everything after model reran
    verbose = ws.build("-v").err.splitlines()  # -v takes the normal path and lists each cached step
    listed = [line.split()[1] for line in verbose if line.split()[2:3] == ["cached"]]
    assert listed == ALL
    assert "steps cached" not in "\n".join(verbose)


def test_a_single_cached_step_keeps_its_own_line(ws):
    ws.build()
    lines = [line.split() for line in ws.build("--force", "model").err.splitlines()]
    assert lines[0][:3] == ["[1/6]", "dataset", "cached"]  # a run of one names its step and digest
    assert lines[1][:3] == ["[2/6]", "model", "run"]
    assert lines[3][:4] == ["[3-6/6]", "4", "steps", "cached"]  # model's output is identical: the rest stays cached


def test_changing_one_parameter_reruns_exactly_downstream(ws):
    ws.build()
    ws.edit("epochs = 3", "epochs = 4")
    run = ws.build()
    assert built_steps(run) == ["train", "fp32", "int8", "report"]
    assert "params.epochs 3 → 4" in run.err
    ws.edit('mode = "int8"', 'mode = "float32"')
    run = ws.build()
    # int8 now has exactly fp32's key material: a cache hit under another name.
    # Only report, whose input digests changed, reruns.
    assert built_steps(run) == ["report"]


def test_early_cutoff_stops_propagation(ws):
    ws.build()
    ws.edit("epochs = 3", 'epochs = 3\nnote = "does not change the output"')
    run = ws.build()
    # train reruns (its params changed) but yields identical bytes, so nothing downstream reruns
    assert built_steps(run) == ["train"]


def test_steps_reading_input_metrics_follow_them(ws):
    ws.write(ws.recipe.read_text() + '\n[steps.summary]\nuse = "toy-report"\ninputs = ["train"]\n')
    ws.build()
    ws.edit("epochs = 3", 'epochs = 3\nnote = "same bytes, new metrics"')
    run = ws.build()
    # train's files are unchanged (early cutoff for fp32/int8/report), but its
    # metrics changed, and summary declares that it reads them
    assert built_steps(run) == ["train", "summary"]
    assert "input metrics changed" in run.err


def test_volatile_metrics_stay_out_of_downstream_keys(ws):
    """toy-convert returns a "convert_ms" that changes on every run, as a
    measured time does, and declares it volatile: a forced rerun that writes
    identical files keeps the report (which keys on its inputs' metrics) cached."""
    first = ws.build()
    assert built_steps(first) == ALL
    before = toy_plugin.CONVERT_RUNS[0]
    run = ws.build("--force", "fp32")
    assert toy_plugin.CONVERT_RUNS[0] == before + 1  # it really ran and measured a new figure
    assert built_steps(run) == ["fp32"]
    # the figure is kept with the artifact: `show` prints the new one
    shown = ws.run("show", str(ws.recipe), "fp32", "--cache-dir", str(ws.cache))
    assert f'"convert_ms": {before + 1}' in shown.out, shown.out + shown.err


def test_volatile_metrics_are_dropped_from_key_material_only():
    from tinybuild.keys import stable_metrics

    metrics = {"size": 10, "convert_ms": 3.2}
    assert stable_metrics(metrics, ("convert_ms",)) == {"size": 10}
    assert stable_metrics(metrics, ()) == metrics
    assert metrics == {"size": 10, "convert_ms": 3.2}  # the metrics themselves are untouched


def test_plan_reasons_diff_against_the_lock_file(ws):
    assert set(s for s, _ in ws.plan().values()) == {"run"}
    assert ws.plan()["train"][1] == ["new step"]
    ws.build()
    assert {name: s for name, (s, _) in ws.plan().items()} == {n: "cached" for n in ALL}
    ws.edit("epochs = 3", "epochs = 12")
    ws.edit("seed = 3", "seed = 4")
    plan = ws.plan()
    assert plan["dataset"] == ("run", ["seed 3 → 4"])  # the seed is in every key
    status, reasons = plan["train"]
    assert status == "run"
    assert "params.epochs 3 → 12" in reasons and "seed 3 → 4" in reasons
    assert plan["fp32"][1][0] == "upstream train reruns"


def test_plan_reports_input_and_file_changes(ws):
    ws.build()
    (ws.root / "numbers.txt").write_text("1 2 3 4\n")
    plan = ws.plan()
    assert plan["dataset"] == ("run", ["params.file file changed"])
    ws.build()
    ws.edit("[model]\nuse = \"toy-model\"", "[model]\nuse = \"toy-model\"\nwidth = 8")
    ws.build("--only", "model")
    plan = ws.plan()
    assert plan["train"] == ("run", ["input model changed"])


def test_plan_reports_cache_loss_and_plugin_version(ws, monkeypatch):
    ws.build()
    for p in actions(ws):
        p.unlink()
    plan = ws.plan()
    assert plan["dataset"] == ("run", ["no cache entry"])
    assert plan["fp32"] == ("run", ["upstream train reruns"])
    ws.build()
    import dataclasses

    bumped = [dataclasses.replace(st, version="1.1") if st.name == "toy-train" else st for st in toy_plugin.STEP_TYPES]
    monkeypatch.setattr(toy_plugin, "STEP_TYPES", bumped)
    assert ws.plan()["train"] == ("run", ["plugin toy-train 1.0 → 1.1"])


def test_crash_halfway_leaves_no_partial_object_and_no_action(ws):
    ws.edit("epochs = 3", "epochs = 3\ncrash = true")
    run = ws.build()
    assert run.code == 1
    assert "train" in run.err and "toy-train" in run.err and "simulated crash halfway" in run.err
    assert "skipped because of it: fp32, int8, report" in run.err
    stored = {p.read_bytes() for p in objects(ws)}
    assert b"partial" not in stored
    # only dataset and model were recorded
    assert len(actions(ws)) == 2
    assert not list((ws.cache / "tmp").iterdir())
    lock = json.loads((ws.root / "recipe.lock.json").read_text())
    assert sorted(lock["steps"]) == ["dataset", "model"]


def test_step_error_message_and_traceback_log(ws):
    (ws.root / "numbers.txt").write_text("1 two 3\n")
    run = ws.build()
    assert run.code == 1
    assert "not a list of integers" in run.err
    assert "Traceback" not in run.err


def test_keep_going_builds_independent_branches(ws):
    ws.write(ws.recipe.read_text() + '\n[steps.bad]\nuse = "toy-report"\ninputs = ["fp32"]\nfail = true\n\n[steps.after]\nuse = "toy-report"\ninputs = ["int8"]\n')
    stop = ws.build()
    assert stop.code == 1
    assert "after" not in built_steps(stop)
    going = ws.build("--keep-going")
    assert going.code == 1
    assert "after" in built_steps(going)


def test_gate_failure_exits_3_and_keeps_the_report(ws):
    ws.edit('inputs = ["fp32", "int8"]', 'inputs = ["fp32", "int8"]\nmax_size = 10')
    run = ws.build()
    assert run.code == 3
    assert "variant fp32: size" in run.err and "budget 10 B" in run.err
    assert (ws.root / "build" / "toy" / "report" / "report.md").exists()
    assert built_steps(ws.build()) == []  # nothing else reruns...
    assert ws.build().code == 3  # ...but the gate is checked every time


def test_only_and_force(ws):
    run = ws.build("--only", "train")
    assert built_steps(run) == ["dataset", "model", "train"]
    run = ws.build("--force", "model")
    assert built_steps(run) == ["model", "fp32", "int8", "report"]
    assert "forced" in run.err
    bad = ws.build("--only", "trian")
    assert bad.code == 2 and "did you mean 'train'" in bad.err


def test_input_changed_during_run_is_not_cached(ws):
    ws.edit("epochs = 3", "epochs = 3\nmutate_input = true")
    run = ws.build("--only", "train")
    assert run.code == 0
    assert "NOT cached" in run.err
    lock = json.loads((ws.root / "recipe.lock.json").read_text())
    assert "train" not in lock["steps"]


def test_outputs_are_restored_from_cache(ws):
    ws.build()
    out = ws.root / "build" / "toy" / "fp32" / "model.tflite"
    content = out.read_bytes()
    out.write_bytes(b"tampered")
    stray = out.parent / "stray.txt"
    stray.write_text("x")
    assert built_steps(ws.build()) == []
    assert out.read_bytes() == content
    assert not stray.exists()


def test_objects_are_read_only_and_content_addressed(ws):
    import hashlib

    ws.build()
    for obj in objects(ws):
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name
        assert not os.access(obj, os.W_OK) or os.geteuid() == 0
        assert oct(obj.stat().st_mode & 0o777) == "0o444"


def test_lifecycle_hooks_reach_plugins(ws):
    toy_plugin.EVENTS.clear()
    ws.build()
    assert ("finished", "train") in toy_plugin.EVENTS
    toy_plugin.EVENTS.clear()
    ws.build()
    assert ("cached", "report") in toy_plugin.EVENTS


def test_show_clean_and_gc(ws):
    ws.build()
    show = ws.run("show", str(ws.recipe), "train", "--cache-dir", str(ws.cache))
    assert show.code == 0
    assert "model.txt" in show.out and '"epochs": 3' in show.out
    missing = ws.run("show", str(ws.recipe), "fp32x", "--cache-dir", str(ws.cache))
    assert missing.code == 2
    # change a step, rebuild: the old train/fp32/int8/report outputs become garbage
    ws.edit("epochs = 3", "epochs = 5")
    ws.build()
    before = len(objects(ws))
    dry = ws.run("gc", "--cache-dir", str(ws.cache), "--dry-run")
    assert dry.code == 0 and "would remove 4 objects" in dry.out
    assert len(objects(ws)) == before
    gc = ws.run("gc", "--cache-dir", str(ws.cache))
    assert "removed 4 objects" in gc.out and "4 action entries" in gc.out
    assert "referenced by 1 lock file\n" in gc.out  # singular for one
    assert built_steps(ws.build()) == []  # everything referenced survived
    clean = ws.run("clean", str(ws.recipe))
    assert clean.code == 0 and not (ws.root / "build" / "toy").exists()
    assert built_steps(ws.build()) == []  # outputs come back from the cache
    assert (ws.root / "build" / "toy" / "report" / "report.md").exists()


def test_graph_formats(ws):
    text = ws.run("graph", str(ws.recipe))
    assert text.code == 0
    assert "└── train (toy-train → keras-model)" in text.out
    dot = ws.run("graph", str(ws.recipe), "--format", "dot")
    assert '"train" -> "fp32";' in dot.out and '"dataset" -> "model" [style=dashed];' in dot.out
    mermaid = ws.run("graph", str(ws.recipe), "--format", "mermaid")
    assert mermaid.out.startswith("flowchart LR")


def test_raw_output_of_a_step_goes_to_its_log_file(ws):
    ws.edit("epochs = 3", "epochs = 3\nnoise = true")
    run = ws.build()
    assert run.code == 0
    assert "noise" not in run.err + run.out
    log = (ws.root / "build" / "toy" / ".logs" / "train.log").read_text()
    assert "native noise on fd 2" in log and "native noise on fd 1" in log and "python print" in log
    assert not (ws.root / "build" / "toy" / ".logs" / "fp32.log").exists()  # silent steps leave no log


def test_unexpected_exception_shows_the_log_tail_and_traceback_file(ws):
    ws.edit("epochs = 3", "epochs = 3\nnoise = true\ncrash = true")
    run = ws.build()
    assert run.code == 1
    assert "RuntimeError: simulated crash halfway" in run.err
    assert "native noise on fd 2" in run.err  # the tail of the step's output
    trace = ws.root / "build" / "toy" / ".logs" / "train.traceback.txt"
    assert "Traceback" in trace.read_text() and "Traceback" not in run.err


def test_a_plugin_calling_sys_exit_fails_its_step(ws):
    ws.edit("epochs = 3", "epochs = 3\nexit_with = 0")
    run = ws.build()
    assert run.code == 1
    assert "plugin 'toy' called sys.exit(0) in step 'train'" in run.err


def test_clean_refuses_anything_but_a_build_folder(tmp_path):
    import pytest

    from tinybuild.errors import CacheError
    from tinybuild.housekeeping import clean_outputs

    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(CacheError):
        clean_outputs(project, "toy")  # not named after the recipe
    with pytest.raises(CacheError):
        clean_outputs(tmp_path / "..", "..")
    assert project.exists()


def test_gc_defaults_to_the_recipe_in_the_current_folder(ws, monkeypatch):
    ws.run("build", str(ws.recipe), "--plain")  # default cache: .tinybuild beside the recipe
    monkeypatch.chdir(ws.root)
    run = ws.run("gc", "--dry-run")
    assert run.code == 0 and "would remove 0 objects" in run.out


def test_run_wrapped_in_partial_is_fingerprinted_by_its_own_module():
    import functools

    from tinybuild.keys import defining_module

    assert defining_module(functools.partial(toy_plugin.run_train, None)) == "toy_plugin"


def test_renamed_or_removed_steps_leave_no_stale_output_folder(ws, tmp_path):
    assert ws.build().code == 0
    folder = ws.root / "build" / "toy"
    (folder / "notes").mkdir()  # not a step the lock file knows: never touched
    (folder / "notes" / "mine.txt").write_text("keep\n")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep\n")
    ws.edit('[steps.int8]', '[steps.int8b]')
    ws.edit('inputs = ["fp32", "int8"]', 'inputs = ["fp32", "int8b"]')
    import shutil

    shutil.rmtree(folder / "fp32")
    (folder / "fp32").symlink_to(victim, target_is_directory=True)  # a link where a live step's folder was
    run = ws.build()
    assert run.code == 0, run.err
    assert not (folder / "int8").exists() and (folder / "int8b").is_dir()
    assert (folder / "notes" / "mine.txt").read_text() == "keep\n"
    assert (victim / "precious.txt").read_text() == "keep\n"
    # a step dropped from the recipe goes too
    ws.edit('[steps.fp32]\nuse = "toy-convert"\ninput = "train"\n', '')
    ws.edit('inputs = ["fp32", "int8b"]', 'inputs = ["int8b"]')
    assert ws.build().code == 0
    assert not os.path.lexists(folder / "fp32")
    assert (victim / "precious.txt").read_text() == "keep\n"


def test_plan_does_not_guess_that_pending_inputs_change_their_metrics(ws):
    """Downstream of a step that must run, the inputs' metrics are unknown:
    the plan says the upstream reruns, not that metrics changed."""
    ws.write(ws.recipe.read_text() + '\n[steps.summary]\nuse = "toy-report"\ninputs = ["train"]\n')
    assert ws.build().code == 0
    ws.edit("epochs = 3", 'epochs = 3\nnote = "same bytes"')
    run = ws.run("plan", str(ws.recipe))
    assert run.code == 0
    line = next(line for line in run.out.splitlines() if " summary " in f" {line} ")
    assert "upstream train reruns" in line and "input metrics changed" not in line, run.out


def test_show_with_only_a_recipe_asks_for_the_step(ws):
    run = ws.run("show", str(ws.recipe))
    assert run.code == 2 and "name the step to show" in run.err and "Traceback" not in run.err


def test_the_cycle_collector_is_off_for_bookkeeping_and_on_for_a_step_s_own_code(ws, monkeypatch):
    """cli.main turns it off (walking 2 MB of parsed JSON again and again
    costs a large rebuild tens of milliseconds) but a plugin's run, which
    may build reference cycles (training), has it on; main restores it."""
    import gc

    from tinybuild import lockfile

    seen: dict[str, bool] = {}

    class RecordingJson:
        def __getattr__(self, name):
            return getattr(json, name)

        def dumps(self, *args, **kwargs):
            seen["step"] = gc.isenabled()
            seen["bookkeeping frozen"] = gc.get_freeze_count() > 0  # not walked by the step's collections
            return json.dumps(*args, **kwargs)

    real_lock_text = lockfile.lock_text

    def lock_text(*args, **kwargs):
        seen["bookkeeping"] = gc.isenabled()
        return real_lock_text(*args, **kwargs)

    monkeypatch.setattr(toy_plugin, "json", RecordingJson())
    monkeypatch.setattr(lockfile, "lock_text", lock_text)
    assert gc.isenabled()
    assert ws.run("build", str(ws.recipe), "--plain").code == 0
    assert seen == {"step": True, "bookkeeping frozen": True, "bookkeeping": False}
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()  # a caller that keeps it off gets it back off
    try:
        assert ws.run("plan", str(ws.recipe)).code == 0
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_cycle_collector_stays_on_for_parallel_drivers_and_remote_caches(ws, monkeypatch, tmp_path):
    """Where other code runs long in the CLI's process: a -j driver replays
    every forwarded event into observers, fsspec clients run asyncio."""
    import gc

    from tinybuild import lockfile
    from tinybuild.executor import Executor

    seen: list[tuple[str, bool]] = []
    real_record_run, real_lock_text = Executor.record_run, lockfile.lock_text

    def record_run(self, *args, **kwargs):
        seen.append(("driver", gc.isenabled()))
        return real_record_run(self, *args, **kwargs)

    def lock_text(*args, **kwargs):
        seen.append(("lock", gc.isenabled()))
        return real_lock_text(*args, **kwargs)

    monkeypatch.setattr(Executor, "record_run", record_run)
    monkeypatch.setattr(lockfile, "lock_text", lock_text)
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    assert ws.run("build", str(ws.recipe), "--plain", "-j", "2").code == 0
    assert ("driver", True) in seen and ("driver", False) not in seen, seen
    seen.clear()
    ws.edit("epochs = 3", "epochs = 4")
    remote = tmp_path / "remote"
    assert ws.run("build", str(ws.recipe), "--plain", "--remote-cache", remote.as_uri()).code == 0
    assert seen and all(on for _, on in seen), seen
    assert gc.isenabled()
