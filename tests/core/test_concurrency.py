"""Processes that share a build folder or a cache.

Real ``tinybuild`` processes of the toy recipe (no TensorFlow) run at once:
builds of one recipe into one folder, builds of different recipes on one
cache, and ``gc`` racing them. Every build must succeed with the same
outputs, and afterwards every recipe must still be fully cached. The lock
behaviour itself (waiting, ``--no-wait``) is checked in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tinybuild import cli
from tinybuild.buildfolder import MARKER
from toyenv import BUILTIN_PLUGINS, HERE, TOY_RECIPE, Run, built_steps

TINYBUILD = [sys.executable, "-m", "tinybuild"]
RECIPES = 4


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
    env.update(PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]), TINYBUILD_PLUGINS="toy=toy_slow",
               TINYBUILD_DISABLE_PLUGINS=",".join(BUILTIN_PLUGINS), TINYBUILD_NO_FASTPATH="1")
    return env


@pytest.fixture
def fleet(tmp_path, toy_env, monkeypatch):
    """Four recipes (different names and keys) sharing one data file, one cache and one --out."""
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")  # the in-process checks use what the processes use
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_slow")
    (tmp_path / "numbers.txt").write_text("1 2 3\n")
    for i in range(RECIPES):
        text = TOY_RECIPE.replace('name = "toy"', f'name = "toy{i}"').replace('file = "numbers.txt"', f'file = "numbers.txt"\nscale = {i + 1}')
        (tmp_path / f"r{i}.toml").write_text(text)
    return tmp_path


def _args(root: Path, *rest: str) -> list[str]:
    return [*rest, "--cache-dir", str(root / "cache"), "--out", str(root / "out")]


def _start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*TINYBUILD, *_args(root, *args)], cwd=root, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _all_ok(procs: list[subprocess.Popen]) -> list[str]:
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        errs.append(err)
    return errs


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".logs" not in p.parts and p.name != MARKER}


def _matches_its_lock(root: Path, i: int) -> dict[str, str]:
    """The build folder holds exactly what the lock file says, and no leftovers."""
    lock = json.loads((root / f"r{i}.lock.json").read_text())["steps"]
    expected = {f"{step}/{rel}": digest for step, entry in lock.items() for rel, digest in entry["output"]["files"].items()}
    tree = _tree(root / "out" / f"toy{i}")
    assert tree == expected
    return tree


def _fully_cached(root: Path, i: int, capsys) -> None:
    """A rebuild (in-process: cheaper than a fresh interpreter) builds nothing."""
    capsys.readouterr()
    code = cli.main(_args(root, "build", str(root / f"r{i}.toml"), "--plain"))
    err = capsys.readouterr().err
    assert code == 0 and "cached" in err and built_steps(Run(code, "", err)) == [], err


def test_concurrent_builds_of_one_recipe_into_one_folder(fleet, capsys):
    trees = []
    for round_ in range(2):
        (fleet / "numbers.txt").write_text(f"{round_} 2 3\n")
        _all_ok([_start(fleet, "build", "r0.toml", "--plain") for _ in range(4)])
        trees.append(_matches_its_lock(fleet, 0))
    assert trees[0] != trees[1]  # each round really rebuilt
    assert not list((fleet / "cache" / "tmp").iterdir())  # every scratch folder cleaned up
    _fully_cached(fleet, 0, capsys)


def test_concurrent_builds_of_different_recipes_and_gc_on_one_cache(fleet, capsys):
    for round_ in range(2):
        (fleet / "numbers.txt").write_text(f"{round_} 5 7\n")
        procs = [_start(fleet, "build", f"r{i}.toml", "--plain") for i in range(RECIPES)]
        procs.insert(2, _start(fleet, "gc"))  # gc races the builds: it must never drop what they store
        _all_ok(procs)
        trees = [_matches_its_lock(fleet, i) for i in range(RECIPES)]
        assert len({json.dumps(t, sort_keys=True) for t in trees}) == RECIPES  # different recipes, different outputs
    registry = json.loads((fleet / "cache" / "locks.json").read_text())
    assert sorted(Path(p).name for p in registry) == [f"r{i}.lock.json" for i in range(RECIPES)]
    capsys.readouterr()
    assert cli.main(_args(fleet, "gc")) == 0
    gc = capsys.readouterr()
    assert f"referenced by {RECIPES} lock files" in gc.out, gc
    for i in range(RECIPES):
        _fully_cached(fleet, i, capsys)


# -- the locks, in-process ------------------------------------------------------------------


class Holder(threading.Thread):
    """Holds a lock in another thread until told to let go."""

    def __init__(self, make_lock):
        super().__init__(daemon=True)
        self.make_lock = make_lock
        self.held = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        with self.make_lock():
            self.held.set()
            self.release.wait(30)

    def __enter__(self) -> "Holder":
        self.start()
        assert self.held.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.join(10)


def _folder_lock(ws):
    from tinybuild import locks

    return lambda: locks.build_folder(ws.root / "build" / "toy")


def _cache_lock(ws, exclusive: bool):
    from tinybuild import locks

    ws.cache.mkdir(exist_ok=True)
    return lambda: locks.cache_access(ws.cache, exclusive=exclusive)


def test_a_second_build_of_one_folder_fails_fast_with_no_wait(ws):
    with Holder(_folder_lock(ws)):
        run = ws.build("--no-wait")
        clean = ws.run("clean", str(ws.recipe), "--no-wait")
    assert run.code == 2 and f"another build of 'toy' (pid {os.getpid()})" in run.err and "without --no-wait" in run.err
    assert clean.code == 2
    assert not (ws.root / "build" / "toy").exists()  # nothing was written while it was held


def test_a_second_build_of_one_folder_waits_and_says_for_whom(ws):
    with Holder(_folder_lock(ws)) as holder:
        threading.Timer(0.5, holder.release.set).start()
        run = ws.build()
    assert run.code == 0, run.err
    assert f"waiting for another build of 'toy' (pid {os.getpid()})" in run.err
    assert built_steps(run) == ["dataset", "model", "train", "fp32", "int8", "report"]


def test_gc_waits_for_running_builds_or_fails_fast(ws):
    assert ws.build().code == 0
    (ws.root / "recipe.lock.json").unlink()  # everything is garbage now
    with Holder(_cache_lock(ws, exclusive=False)) as build:
        busy = ws.run("gc", "--cache-dir", str(ws.cache), "--no-wait")
        assert busy.code == 2 and "running builds" in busy.err
        assert "removed" not in busy.out and list((ws.cache / "objects").rglob("*"))
        threading.Timer(0.5, build.release.set).start()
        gc = ws.run("gc", "--cache-dir", str(ws.cache))
    assert gc.code == 0 and "waiting for running builds" in gc.err and "removed 6 objects" in gc.out


def test_a_build_waits_for_gc_or_fails_fast(ws):
    with Holder(_cache_lock(ws, exclusive=True)) as gc:
        busy = ws.build("--no-wait")
        assert busy.code == 2 and "gc" in busy.err
        threading.Timer(0.5, gc.release.set).start()
        run = ws.build()
    assert run.code == 0 and "waiting for `tinybuild gc`" in run.err


def test_a_build_never_removes_another_builds_scratch_folder(ws):
    assert ws.build().code == 0
    other = ws.cache / "tmp" / "train-otherbuild"
    (other / "out").mkdir(parents=True)
    (other / "out" / "half.bin").write_bytes(b"half-written by another build")
    assert built_steps(ws.build("--force", "train")) == ["train"]
    assert (other / "out" / "half.bin").read_bytes() == b"half-written by another build"
    assert ws.run("gc", "--cache-dir", str(ws.cache)).code == 0
    assert other.exists()  # young scratch survives gc too (a build on a host without flock)
