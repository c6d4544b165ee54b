"""statmemo.json and locks.json: wrong shapes are treated as absent, gc
refuses to run on a damaged registry, concurrent updates merge, and a
read-only cache still serves a fully cached build."""

from __future__ import annotations

import builtins
import errno
import io
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

import pytest

from toyenv import built_steps

NOOP = "nothing changed since the last build"
DAMAGED = {
    "list": b"[]", "number": b"42", "garbage": b"\x00\xff{not json", "wrong-entries": b'{"/x": "abcdefg", "/y": [1]}',
    "deep": b"[" * 100_000, "empty": b"",
}


def _plant(path: Path, kind: str) -> None:
    if path.exists():
        path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(DAMAGED[kind])


def _objects(ws) -> list[Path]:
    return sorted(p for p in (ws.cache / "objects").rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", [*DAMAGED, "folder", "fifo"])
def test_a_damaged_stat_memo_is_treated_as_absent(ws, kind):
    assert ws.build().code == 0
    _plant(ws.cache / "statmemo.json", kind)
    run = ws.run("build", str(ws.recipe), "--plain", "--force", "train")
    assert run.code == 0, run.err
    assert "Traceback" not in run.err and built_steps(run) == ["train"]
    if kind != "folder":  # replaced by a valid memo (a FIFO too: rename replaces it)
        assert isinstance(json.loads((ws.cache / "statmemo.json").read_text()), dict)
    else:  # a folder cannot be replaced by a file: a warning, not a failure
        assert "warning: could not update" in run.err


@pytest.mark.parametrize("kind", [*(k for k in DAMAGED if k != "list"), "folder", "fifo", "strings-and-numbers"])
def test_gc_refuses_to_run_on_a_damaged_locks_json_and_builds_leave_it_alone(ws, kind):
    assert ws.build().code == 0
    index = ws.cache / "locks.json"
    if kind == "strings-and-numbers":
        index.write_text('["/a/b.lock.json", 3]')
    else:
        _plant(index, kind)
    before = _objects(ws)
    gc = ws.run("gc", "--cache-dir", str(ws.cache))
    assert gc.code == 1 and "gc removed nothing" in gc.err and "locks.json" in gc.err and "Traceback" not in gc.err
    assert _objects(ws) == before
    build = ws.run("build", str(ws.recipe), "--plain", "--force", "report")
    assert build.code == 0 and "warning:" in build.err and "locks.json" in build.err
    assert ws.run("gc", "--cache-dir", str(ws.cache)).code == 1  # still refused: the build did not paper over it
    if index.is_dir():
        index.rmdir()
    else:
        index.unlink()
    assert ws.build("--force", "report").code == 0  # registers again
    assert ws.run("gc", "--cache-dir", str(ws.cache)).code == 0
    assert built_steps(ws.run("build", str(ws.recipe), "--plain", "--cache-dir", str(ws.cache))) == []


def test_gc_refuses_when_a_registered_lock_file_is_damaged(ws):
    assert ws.build().code == 0
    (ws.root / "recipe.lock.json").write_text('{"format": 1, "steps": [1, 2]}')
    before = _objects(ws)
    gc = ws.run("gc", "--cache-dir", str(ws.cache))
    assert gc.code == 1 and "recipe.lock.json" in gc.err and _objects(ws) == before


def test_a_deleted_lock_file_still_releases_its_entries(ws):
    assert ws.build().code == 0
    (ws.root / "recipe.lock.json").unlink()
    gc = ws.run("gc", "--cache-dir", str(ws.cache))
    assert gc.code == 0 and "removed 6 objects" in gc.out and _objects(ws) == []


# -- concurrent updates merge -------------------------------------------------------------


def _register_many(index: str, worker: int, n: int) -> None:
    from tinybuild import metadata

    for i in range(n):
        metadata.register(Path(index), Path(f"/project/{worker}/recipe{i}.lock.json"))


def _memo_many(path: str, worker: int, n: int) -> None:
    from tinybuild import metadata

    for i in range(n):
        metadata.save_memo(Path(path), {f"{path}.{worker}.{i}": [1, 2, 3, 4, 5, "a" * 64, 6]})
        Path(f"{path}.{worker}.{i}").touch()  # entries of missing files are dropped: make it exist


def _run_workers(target, arg: str, workers: int = 4, n: int = 12) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=(arg, w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_concurrent_registrations_are_never_lost(tmp_path):
    from tinybuild import metadata

    index = tmp_path / "locks.json"
    _run_workers(_register_many, str(index))
    assert len(metadata.read_registry(index)) == 4 * 12


def test_concurrent_stat_memo_saves_merge(tmp_path):
    from tinybuild import metadata

    memo = tmp_path / "statmemo.json"
    for w in range(4):  # the files exist before anyone saves, so no entry is dropped as stale
        for i in range(12):
            Path(f"{memo}.{w}.{i}").touch()
    _run_workers(_memo_many, str(memo))
    assert len(metadata.load_memo(memo)) == 4 * 12


# -- a read-only cache --------------------------------------------------------------------


class ReadOnly:
    """Makes every write under ``root`` fail with EROFS, as a read-only mount
    does (tests run as root, for whom ``chmod a-w`` changes nothing)."""

    def __init__(self, root: Path, monkeypatch):
        self.root = os.path.abspath(root)
        self.refused: list[str] = []
        real = {name: getattr(os, name) for name in ("open", "mkdir", "replace", "rename", "unlink", "remove", "rmdir", "chmod")}
        real_open = builtins.open

        def inside(path) -> bool:
            try:
                p = os.path.abspath(os.fspath(path))
            except TypeError:
                return False  # a descriptor
            return p == self.root or p.startswith(self.root + os.sep)

        def refuse(path):
            self.refused.append(os.fspath(path))
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

        def os_open(path, flags, *args, **kwargs):
            if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
                refuse(path)
            return real["open"](path, flags, *args, **kwargs)

        def opener(path, mode="r", *args, **kwargs):
            if inside(path) and any(c in mode for c in "wax+"):
                refuse(path)
            return real_open(path, mode, *args, **kwargs)

        def guard(name):
            def guarded(path, *args, **kwargs):
                if inside(path) and not (name == "mkdir" and os.path.lexists(path)):
                    refuse(path)
                return real[name](path, *args, **kwargs)
            return guarded

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", opener)
        monkeypatch.setattr(io, "open", opener)
        for name in real:
            if name != "open":
                monkeypatch.setattr(os, name, guard(name))


@pytest.mark.parametrize("registered", [True, False])
def test_a_read_only_cache_serves_a_fully_cached_build(ws, monkeypatch, registered):
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_quiet")  # the fast path is eligible
    assert ws.build().code == 0
    if not registered:
        (ws.cache / "locks.json").unlink()
    for stamp in (ws.cache / "stamps").glob("*.json"):
        stamp.unlink()  # the normal path: every metadata write is attempted
    assert ws.run("clean", str(ws.recipe)).code == 0
    for path in ws.cache.rglob("*"):
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    os.chmod(ws.cache, 0o555)
    ro = ReadOnly(ws.cache, monkeypatch)
    run = ws.build()
    assert run.code == 0, run.err
    assert built_steps(run) == [] and "Traceback" not in run.err
    assert (ws.root / "build" / "toy" / "report" / "report.md").exists()
    assert ro.refused  # writes were attempted and refused...
    warnings = [line for line in run.err.splitlines() if line.startswith("warning:")]
    assert warnings and all("\n" not in w for w in warnings)  # ...each a one-line warning
    assert any("stamp" in w for w in warnings)
    if not registered:
        assert any("locks.json" in w for w in warnings)
    again = ws.build()  # and again: still served
    assert again.code == 0 and built_steps(again) == []
