"""``-j N``: ready steps run concurrently in worker processes, crash-isolated,
with the same outputs as a serial build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tinybuild import workers
from toyenv import BUILTIN_PLUGINS, HERE, TOY_RECIPE, Workspace
from test_kill import verify_cache

PLUGINS = "toy=toy_plugin,toyp=toy_parallel"


@pytest.fixture
def pws(ws, monkeypatch):
    monkeypatch.setenv("TINYBUILD_PLUGINS", PLUGINS)
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    return ws


def outputs(ws: Workspace) -> dict[str, dict]:
    lock = json.loads(ws.recipe.with_name("recipe.lock.json").read_text())
    return {name: step["output"] for name, step in lock["steps"].items()}


def test_jobs_give_the_serial_outputs(tmp_path, capsys, toy_env, monkeypatch):
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    results = {}
    for jobs in ("1", "2"):
        w = Workspace(tmp_path / jobs, capsys)
        w.root.mkdir()
        (w.root / "numbers.txt").write_text("1 2 3\n")
        w.write(TOY_RECIPE)
        run = w.build("-j", jobs)
        assert run.code == 0, run.err
        assert "6 built" in run.err
        results[jobs] = outputs(w)
    assert results["1"] == results["2"] and len(results["2"]) == 6
    # the parallel build's folders hold exactly those files
    for name, out in results["2"].items():
        folder = tmp_path / "2" / "build" / "toy" / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(out["files"])


def test_ready_steps_overlap_and_a_rebuild_is_cached(pws, tmp_path):
    meet = tmp_path / "meet"
    pws.write(f"""\
        [recipe]
        name = "meet"
        [steps.a]
        use = "toy-meet"
        rendezvous = "{meet}"
        others = ["b"]
        [steps.b]
        use = "toy-meet"
        rendezvous = "{meet}"
        others = ["a"]
        [steps.c]
        use = "toy-meet"
        inputs = ["a", "b"]
        rendezvous = "{meet}"
        """)
    run = pws.build("-j2")
    assert run.code == 0, run.err  # serially, a would wait for b forever (and fail after 30 s)
    assert "3 built" in run.err
    again = pws.build("-j2")
    assert again.code == 0 and "0 built, 3 cached" in again.err


def test_heavy_steps_never_overlap_but_light_ones_run_beside_them(pws, tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "cores", lambda: 1)  # one core: one heavy step at a time, one thread per step
    meet = tmp_path / "meet"
    pws.write(f"""\
        [recipe]
        name = "heavy"
        [steps.heavy1]
        use = "toy-meet-heavy"
        rendezvous = "{meet}"
        others = ["light"]
        hold = 0.3
        [steps.heavy2]
        use = "toy-meet-heavy"
        rendezvous = "{meet}"
        hold = 0.3
        [steps.light]
        use = "toy-meet"
        rendezvous = "{meet}"
        others = ["heavy1"]
        """)
    run = pws.build("-j3", "--keep-going")
    assert run.code == 0, run.err
    lock = json.loads(pws.recipe.with_name("recipe.lock.json").read_text())
    assert set(lock["steps"]) == {"heavy1", "heavy2", "light"}
    metrics = json.loads((pws.cache / "actions" / lock["steps"]["light"]["key"][:2] / lock["steps"]["light"]["key"][2:])
                         .read_text())["metrics"]
    assert metrics["threads"] == {"OMP_NUM_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


@pytest.mark.parametrize("how, cause", [("segfault", "killed by SIGSEGV"), ("abort", "killed by SIGABRT"),
                                        ("exit", "exited with code 3")])
def test_a_crashing_worker_is_a_failed_step_not_a_dead_build(pws, tmp_path, how, cause):
    pws.write(TOY_RECIPE + f"""
[steps.boom]
use = "toy-crash"
input = "train"
how = "{how}"
""")
    run = pws.build("-j2", "--keep-going")
    assert run.code == 1
    text = " ".join(run.err.split())
    assert f"boom FAILED" in text and cause in text
    assert f"| about to {how}" in text  # the last lines of its log
    assert "6 built" in text  # every other step finished
    stored = {p.read_bytes() for p in (pws.cache / "objects").rglob("*") if p.is_file()}
    assert b"partial" not in stored
    assert not any((pws.cache / "tmp").iterdir())


def test_a_worker_killed_mid_step_is_retried_once(pws, tmp_path):
    marker = tmp_path / "hanging.pid"
    pws.write(TOY_RECIPE + f"""
[steps.victim]
use = "toy-crash"
input = "train"
how = "hang-once"
marker = "{marker}"
""")

    def killer():
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(int(marker.read_text()), signal.SIGKILL)

    import threading

    thread = threading.Thread(target=killer)
    thread.start()
    run = pws.build("-j2")
    thread.join()
    assert run.code == 0, run.err
    assert "was killed by SIGKILL; retrying it once" in " ".join(run.err.split())
    stored = {p.read_bytes() for p in (pws.cache / "objects").rglob("*") if p.is_file()}
    assert b"whole" in stored and b"partial" not in stored
    assert verify_cache(pws.cache) == 7


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYBUILD_", "RAY_"))}
    env.update({"TINYBUILD_PLUGINS": PLUGINS, "PYTHONPATH": str(HERE), "TINYBUILD_NO_FASTPATH": "1",
                "TINYBUILD_DISABLE_PLUGINS": ",".join(BUILTIN_PLUGINS)})
    return env


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-to-the-group", "sigterm-to-the-driver"])
def test_interrupting_the_driver_stops_every_worker(pws, tmp_path, sig, group):
    marker = tmp_path / "hanging.pid"
    pws.write(TOY_RECIPE + f"""
[steps.victim]
use = "toy-crash"
input = "train"
how = "hang-once"
marker = "{marker}"
""")
    proc = subprocess.Popen([sys.executable, "-m", "tinybuild", "build", str(pws.recipe), "--plain", "-j2",
                             "--cache-dir", str(pws.cache)], env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    worker = int(marker.read_text())
    if group:
        os.killpg(proc.pid, sig)  # what a terminal does on Ctrl-C
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # the worker is gone
    assert not any((pws.cache / "tmp").iterdir())
    stored = {p.read_bytes() for p in (pws.cache / "objects").rglob("*") if p.is_file()}
    assert b"partial" not in stored
    verify_cache(pws.cache)
    run = pws.build("-j2")  # the marker exists now: the step finishes
    assert run.code == 0, run.err
    assert pws.run("verify", "--cache-dir", str(pws.cache)).code == 0


def test_bad_jobs_is_a_usage_error(pws, capsys):
    with pytest.raises(SystemExit) as exc:
        pws.build("-j", "0")
    assert exc.value.code == 2
    assert "-j 0: give a whole number of jobs" in capsys.readouterr().err


NO_HEAVY = """
import json, sys
from tinybuild.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "tensorflow", "tf_keras", "multiprocessing"))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_a_noop_build_with_jobs_or_ray_imports_neither(pws, tmp_path):
    """Cached builds start no worker and import neither Ray nor TensorFlow
    (nor multiprocessing: no pool is even created), on both build paths."""
    env = {k: v for k, v in _env(tmp_path).items() if k != "TINYBUILD_DISABLE_PLUGINS"}  # built-ins loaded too
    args = ["build", str(pws.recipe), "--plain", "--cache-dir", str(pws.cache)]
    first = subprocess.run([sys.executable, "-c", NO_HEAVY, *args, "-j2"], env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(first.stderr.strip().splitlines()[-1])["code"] == 0, first.stderr
    for fast in (False, True):
        run_env = {k: v for k, v in env.items() if not (fast and k == "TINYBUILD_NO_FASTPATH")}
        for extra in (["-j2"], ["--executor", "ray"]):
            proc = subprocess.run([sys.executable, "-c", NO_HEAVY, *args, *extra], env=run_env, capture_output=True,
                                  text=True, timeout=300)
            assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, proc.stderr


def test_live_display_shows_every_running_step():
    """Two steps running at once: one progress display, a bar each, and it
    stays up until the last one finishes."""
    import io

    from rich.console import Console

    from tinybuild.console import ConsoleReporter

    stream = io.StringIO()
    reporter = ConsoleReporter(live=True, stream=stream)
    reporter.console = Console(file=stream, force_terminal=True, width=100)
    reporter.tinybuild_build_started("r.toml", ["a", "b", "c"])
    reporter.tinybuild_step_started("a", "train", [])
    reporter.tinybuild_step_started("b", "prune", [])
    reporter.tinybuild_step_progress("a", 1, 3, "epoch 1/3")
    reporter.tinybuild_step_progress("b", 2, 4, "epoch 2/4")
    bars = {t.fields["step"]: (t.completed, t.total, t.description) for t in reporter._progress.tasks}
    assert bars == {"a": (1, 3, "epoch 1/3"), "b": (2, 4, "epoch 2/4")}
    reporter.tinybuild_step_finished("a", "train", "f" * 64, 1.0, {})
    assert [t.fields["step"] for t in reporter._progress.tasks] == ["b"]
    reporter.tinybuild_step_failed("b", "prune", "boom", [])
    assert reporter._progress is None
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())  # the terminal's colours and cursor moves
    assert "[1/3] a" in text and "built" in text and "[2/3] b" in text and "FAILED" in text


@pytest.mark.parametrize("setting, code, message", [("max_size = 1", 3, "size"), ("fail = true", 1, "report was told to fail")])
def test_step_errors_and_gates_in_a_worker_are_reported_like_serial_ones(pws, setting, code, message):
    pws.edit('use = "toy-report"', f'use = "toy-report"\n{setting}')
    run = pws.build("-j2")
    assert run.code == code
    text = " ".join(run.err.split())
    assert "report FAILED [toy-report]" in text and message in text and "Traceback" not in run.err
    if code == 3:  # a failed gate still leaves its report in the build folder
        assert (pws.root / "build" / "toy" / "report" / "report.md").is_file()
