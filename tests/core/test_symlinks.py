"""Removal and writes never follow a symlink and never leave their root.

Each test plants a link where tinybuild deletes or writes (the build
folder, a step folder, ``.logs``, the cache's shards, scratch and metadata)
pointing at a "victim" folder outside, then runs the command and checks
that the victim is byte-for-byte untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tinybuild.buildfolder import MARKER
from toyenv import built_steps


class Victim:
    """A folder outside every tinybuild root, with files a careless
    removal would delete (named like what tinybuild writes)."""

    NAMES = ("model.txt", "train.log", "train.traceback.txt", "report.md", "data.json", "keep.txt")

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        for name in self.NAMES:
            (root / name).write_text(f"precious {name}\n")
        (root / "sub").mkdir()
        (root / "sub" / "deep.txt").write_text("precious deep\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, bytes]:
        return {p.relative_to(self.root).as_posix(): p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file()}

    def untouched(self) -> bool:
        return self.root.is_dir() and not self.root.is_symlink() and self.snapshot() == self.before


@pytest.fixture
def victim(tmp_path) -> Victim:
    return Victim(tmp_path / "victim")


def _plant(link: Path, target: Path) -> None:
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=target.is_dir())


def _mark(ws) -> None:
    """Make ``build/toy`` a build folder tinybuild owns (as a first build
    would), so a link planted there is met by the write, not by the ownership check."""
    folder = ws.root / "build" / "toy"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("tinybuild\n")


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


# -- the build folder -------------------------------------------------------------------


@pytest.mark.parametrize("built_first", [False, True])
def test_step_folder_link_is_replaced_not_followed(ws, victim, built_first):
    if built_first:
        assert ws.build().code == 0
    _mark(ws)
    step = ws.root / "build" / "toy" / "train"
    _plant(step, victim.root)
    run = ws.build()
    assert run.code == 0, run.err
    assert victim.untouched()
    assert _real_dir(step) and (step / "model.txt").read_text().startswith("model width=4")


def test_links_inside_a_step_folder_are_removed_not_followed(ws, victim):
    assert ws.build().code == 0
    step = ws.root / "build" / "toy" / "train"
    _plant(step / "model.txt", victim.root / "model.txt")      # a file link at an output's name
    _plant(step / "stray", victim.root)                        # a folder link beside the outputs
    _plant(step / "sub", victim.root / "sub")
    run = ws.build()
    assert run.code == 0, run.err
    assert victim.untouched()
    assert sorted(p.name for p in step.iterdir()) == ["model.txt"] and not (step / "model.txt").is_symlink()


@pytest.mark.parametrize("what", ["folder", "log", "traceback"])
def test_logs_links_are_not_followed(ws, victim, what):
    _mark(ws)
    logs = ws.root / "build" / "toy" / ".logs"
    if what == "folder":
        _plant(logs, victim.root)
    elif what == "log":
        _plant(logs / "train.log", victim.root / "train.log")
    else:
        _plant(logs / "train.traceback.txt", victim.root / "train.traceback.txt")
    ws.edit("epochs = 3", "epochs = 3\nnoise = true\ncrash = true" if what == "traceback" else "epochs = 3\nnoise = true")
    run = ws.build()
    assert run.code == (1 if what == "traceback" else 0), run.err
    assert victim.untouched()
    assert _real_dir(logs)
    if what == "traceback":
        assert "simulated crash halfway" in (logs / "train.traceback.txt").read_text()
        assert not (logs / "train.traceback.txt").is_symlink()
    else:
        assert "native noise" in (logs / "train.log").read_text()


def test_a_gate_failure_keeps_its_output_without_following_a_link(ws, victim):
    ws.edit('inputs = ["fp32", "int8"]', 'inputs = ["fp32", "int8"]\nmax_size = 1')
    _mark(ws)
    report = ws.root / "build" / "toy" / "report"
    _plant(report, victim.root)
    run = ws.build()
    assert run.code == 3, run.err
    assert victim.untouched()
    assert _real_dir(report) and (report / "report.md").exists()


def test_a_symlinked_build_folder_is_refused_and_clean_removes_only_the_link(ws, victim):
    folder = ws.root / "build" / "toy"
    _plant(folder, victim.root)
    run = ws.build()
    assert run.code == 2 and "is a symbolic link" in run.err and "Traceback" not in run.err
    assert victim.untouched()
    clean = ws.run("clean", str(ws.recipe))
    assert clean.code == 0, clean.err
    assert "symbolic link" in clean.err and not os.path.lexists(folder)
    assert victim.untouched()
    assert ws.build().code == 0 and _real_dir(folder)


def test_clean_does_not_follow_links_inside_the_build_folder(ws, victim):
    assert ws.build().code == 0
    _plant(ws.root / "build" / "toy" / "train" / "elsewhere", victim.root)
    _plant(ws.root / "build" / "toy" / ".logs", victim.root)
    assert ws.run("clean", str(ws.recipe)).code == 0
    assert victim.untouched() and not (ws.root / "build" / "toy").exists()


# -- the cache ----------------------------------------------------------------------------


def _fill_like_a_shard(victim: Victim, n: int = 3) -> None:
    """Files named like cache entries (62 hex chars), so gc would take them for garbage."""
    for i in range(n):
        (victim.root / (f"{i:x}" * 62)[:62]).write_text(f"looks like an entry {i}\n")
    victim.before = victim.snapshot()


@pytest.mark.parametrize("store", ["objects", "actions"])
def test_gc_never_deletes_through_a_symlinked_shard(ws, victim, store):
    assert ws.build().code == 0
    _fill_like_a_shard(victim)
    _plant(ws.cache / store / "zz", victim.root)
    (ws.root / "recipe.lock.json").unlink()  # nothing is referenced: gc removes every real entry
    gc = ws.run("gc", "--cache-dir", str(ws.cache))
    assert gc.code == 0, gc.err
    assert victim.untouched()
    assert "left alone" in gc.err and "zz" in gc.err
    assert not [p for p in (ws.cache / store).rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.parametrize("store", ["objects", "actions", "tmp"])
def test_gc_never_enters_a_symlinked_store(ws, victim, store):
    assert ws.build().code == 0
    (victim.root / "ab").mkdir()
    (victim.root / "ab" / ("c" * 62)).write_text("looks like an entry\n")
    old = time.time() - 10 * 3600
    os.utime(victim.root / "sub", (old, old))  # an "old scratch folder" for the tmp case
    victim.before = victim.snapshot()
    _plant(ws.cache / store, victim.root)
    (ws.root / "recipe.lock.json").unlink()
    gc = ws.run("gc", "--cache-dir", str(ws.cache))
    assert gc.code == 0, gc.err
    assert victim.untouched() and "left alone" in gc.err


def test_gc_removes_an_unreferenced_entry_that_is_a_folder_or_a_link(ws, victim):
    assert ws.build().code == 0
    shard = ws.cache / "objects" / "ff"
    shard.mkdir(exist_ok=True)
    (shard / ("0" * 62)).mkdir()
    (shard / ("0" * 62) / "inner").symlink_to(victim.root)
    (shard / ("1" * 62)).symlink_to(victim.root / "keep.txt")
    gc = ws.run("gc", "--cache-dir", str(ws.cache))
    assert gc.code == 0, gc.err
    assert victim.untouched()
    assert not os.path.lexists(shard / ("0" * 62)) and not os.path.lexists(shard / ("1" * 62))
    assert built_steps(ws.build("--force", "report")) == ["report"]  # the live entries survived


def _shard_of(ws, step: str) -> str:
    lock = json.loads((ws.root / "recipe.lock.json").read_text())
    return next(iter(lock["steps"][step]["output"]["files"].values()))[:2]


def test_cache_writes_replace_planted_shard_links(ws, victim, tmp_path):
    assert ws.build().code == 0
    lock = json.loads((ws.root / "recipe.lock.json").read_text())
    obj_shard = _shard_of(ws, "train")
    act_shard = lock["steps"]["train"]["key"][:2]
    shutil.rmtree(ws.cache / "objects" / obj_shard)
    shutil.rmtree(ws.cache / "actions" / act_shard)
    _plant(ws.cache / "objects" / obj_shard, victim.root)
    _plant(ws.cache / "actions" / act_shard, victim.root / "sub")
    _plant(ws.cache / "tmp", victim.root)
    run = ws.build("--force", "train")
    assert run.code == 0, run.err
    assert victim.untouched()
    for folder in (ws.cache / "objects" / obj_shard, ws.cache / "actions" / act_shard, ws.cache / "tmp"):
        assert _real_dir(folder)
    assert ws.plan()["train"][0] == "cached"


def test_metadata_links_are_replaced_and_their_targets_untouched(ws, victim, monkeypatch):
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_quiet")  # no lifecycle observers: the stamp is written
    _plant(ws.cache / "statmemo.json", victim.root / "data.json")
    _plant(ws.cache / "stamps", victim.root)
    run = ws.build()
    assert run.code == 0, run.err
    assert victim.untouched()
    assert (ws.cache / "statmemo.json").is_file() and not (ws.cache / "statmemo.json").is_symlink()
    assert _real_dir(ws.cache / "stamps") and list((ws.cache / "stamps").glob("*.json"))
    assert "nothing changed" in ws.build().err


# -- overlapping folders ------------------------------------------------------------------


@pytest.mark.parametrize("out,cache", [("shared", "shared"), ("shared/inner", "shared"), ("shared", "shared/cache")])
@pytest.mark.parametrize("command", ["build", "clean", "plan"])
def test_out_and_cache_dir_that_overlap_are_a_usage_error(ws, out, cache, command):
    args = [command, str(ws.recipe), "--out", str(ws.root / out), "--cache-dir", str(ws.root / cache)]
    run = ws.run(*args)
    assert run.code == 2 and "--out" in run.err and "--cache-dir" in run.err and "Traceback" not in run.err
    assert not (ws.root / "shared").exists() or not any((ws.root / "shared").rglob("*"))


def test_a_recipe_named_like_the_object_store_cannot_clean_it(ws):
    assert ws.build("--cache-dir", str(ws.root / "store")).code == 0
    ws.edit('name = "toy"', 'name = "objects"')
    objects = sorted((ws.root / "store" / "objects").rglob("*"))
    run = ws.run("clean", str(ws.recipe), "--out", str(ws.root / "store"), "--cache-dir", str(ws.root / "store"))
    assert run.code == 2
    assert sorted((ws.root / "store" / "objects").rglob("*")) == objects


def test_a_build_folder_that_would_hold_the_recipe_is_refused(ws):
    project = ws.root / "proj"
    project.mkdir()
    recipe = project / "recipe.toml"
    recipe.write_text(ws.recipe.read_text().replace('name = "toy"', 'name = "proj"'))
    cache = Path(tempfile.mkdtemp(prefix="tb-cache-"))  # beside neither
    try:
        run = ws.run("clean", str(recipe), "--out", str(ws.root), "--cache-dir", str(cache))
    finally:
        shutil.rmtree(cache)
    assert run.code == 2 and "would contain the recipe" in run.err
    assert recipe.exists()


def test_stray_files_where_folders_belong_are_replaced(ws):
    assert ws.build().code == 0
    folder = ws.root / "build" / "toy"
    for stray in (folder / "train", folder / ".logs", ws.cache / "tmp", ws.cache / "stamps"):
        shutil.rmtree(stray, ignore_errors=True)
        stray.write_text("a file where a folder belongs\n")
    ws.edit("epochs = 3", "epochs = 3\nnoise = true")
    run = ws.build()
    assert run.code == 0 and "Traceback" not in run.err, run.err
    assert _real_dir(folder / "train") and _real_dir(folder / ".logs") and _real_dir(ws.cache / "tmp")


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "folder"])
def test_planted_lock_files_are_replaced_never_written_through(ws, victim, kind):
    """The build-folder lock file receives the holder's pid: never into a planted file."""
    lock_file = ws.root / "build" / ".toy.lock"
    lock_file.parent.mkdir()
    cache_lock = ws.cache / "cache.lock"
    ws.cache.mkdir()
    for path in (lock_file, cache_lock):
        if kind == "symlink":
            path.symlink_to(victim.root / "keep.txt")
        elif kind == "hardlink":
            os.link(victim.root / "keep.txt", path)
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            path.mkdir()
    run = ws.build()
    assert run.code == 0 and "Traceback" not in run.err, run.err
    assert victim.untouched()
    assert lock_file.is_file() and not lock_file.is_symlink() and os.stat(lock_file).st_nlink == 1


@pytest.mark.parametrize("content", [b"[]", b"42", b'{"format": 3, "env": {}, "folders": 5}', b"\xff", "fifo"])
def test_a_damaged_or_hostile_stamp_falls_back_to_a_real_build(ws, monkeypatch, content):
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_quiet")
    assert ws.build().code == 0
    stamps = list((ws.cache / "stamps").glob("*.json"))
    assert len(stamps) == 1
    stamps[0].unlink()
    if content == "fifo":
        os.mkfifo(stamps[0])  # reading it would block forever
    else:
        stamps[0].write_bytes(content)
    run = ws.build()
    assert run.code == 0 and "nothing changed" not in run.err and "Traceback" not in run.err
    assert "nothing changed" in ws.build().err  # a fresh stamp replaced it


def test_a_stamp_pointing_at_a_device_is_not_read(ws, monkeypatch):
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_quiet")
    assert ws.build().code == 0
    stamp = next((ws.cache / "stamps").glob("*.json"))
    data = json.loads(stamp.read_text())
    st = os.stat("/dev/zero")
    # a forged entry whose signature matches /dev/zero and claims to be "racy" (content-checked)
    data["files"].append(["/dev/zero", [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size], "0" * 64, st.st_mtime_ns])
    stamp.write_text(json.dumps(data))
    run = ws.build()
    assert run.code == 0 and "nothing changed" not in run.err


def test_a_step_folder_linked_to_an_exact_copy_is_still_replaced(ws, tmp_path, monkeypatch):
    """The quick "outputs already in place" check of a cached step must not
    accept a link, even one whose target holds the very same files."""
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    assert ws.build().code == 0
    step = ws.root / "build" / "toy" / "train"
    copy = tmp_path / "copy"
    shutil.copytree(step, copy, copy_function=shutil.copy2)
    shutil.rmtree(step)
    step.symlink_to(copy, target_is_directory=True)
    run = ws.build()
    assert run.code == 0, run.err
    assert _real_dir(step) and sorted(p.name for p in step.iterdir()) == ["model.txt"]
    assert sorted(p.name for p in copy.iterdir()) == ["model.txt"]


def test_a_cached_rebuild_removes_strays_and_restores_edited_outputs(ws, monkeypatch):
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    assert ws.build().code == 0
    step = ws.root / "build" / "toy" / "train"
    model = step / "model.txt"
    good = model.read_bytes()
    time.sleep(0.06)  # past the racy window: the memo vouches for the built file
    assert ws.build().code == 0
    (step / ".hidden").write_text("stray\n")
    model.write_bytes(bytes(reversed(good)))  # same size, other content
    run = ws.build()
    assert run.code == 0, run.err
    assert sorted(p.name for p in step.iterdir()) == ["model.txt"]
    assert model.read_bytes() == good
