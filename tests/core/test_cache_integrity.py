"""A damaged local cache is never served: objects are verified when copied out,
entries of the wrong shape are treated as absent, and `tinybuild verify`
finds (and with --repair quarantines) every kind of damage."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from toyenv import built_steps


def _object_of(ws, step: str, rel: str) -> Path:
    lock = json.loads((ws.root / "recipe.lock.json").read_text())
    digest = lock["steps"][step]["output"]["files"][rel] if "steps" in lock else lock[step]["output"]["files"][rel]
    return ws.cache / "objects" / digest[:2] / digest[2:]


def _action_of(ws, step: str) -> Path:
    lock = json.loads((ws.root / "recipe.lock.json").read_text())
    key = lock["steps"][step]["key"] if "steps" in lock else lock[step]["key"]
    return ws.cache / "actions" / key[:2] / key[2:]


def _outputs(ws) -> dict[str, bytes]:
    out = ws.root / "build" / "toy"
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".logs" not in p.parts}


def _writable(path: Path) -> None:
    if path.exists() and not path.is_symlink():
        os.chmod(path, 0o644)


def flip(path, tmp):
    _writable(path)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path, tmp):
    _writable(path)
    path.write_bytes(path.read_bytes()[:-3])


def replace(path, tmp):
    _writable(path)
    path.write_bytes(b"model width=999 forged\n")


def symlink_other(path, tmp):
    other = tmp / "elsewhere.txt"
    other.write_bytes(b"some other file\n")
    path.unlink()
    path.symlink_to(other)


def symlink_same_bytes(path, tmp):
    """Even a link to a file with the right bytes is refused: it can change under us."""
    copy = tmp / "copy.txt"
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)


def directory(path, tmp):
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


def fifo(path, tmp):
    path.unlink()
    os.mkfifo(path)


TAMPERS = [flip, truncate, replace, symlink_other, symlink_same_bytes, directory, fifo]


@pytest.mark.parametrize("tamper", TAMPERS, ids=[t.__name__ for t in TAMPERS])
def test_damaged_object_is_quarantined_and_its_step_rebuilt(ws, tamper, tmp_path_factory):
    assert ws.build().code == 0
    good = _outputs(ws)
    obj = _object_of(ws, "train", "model.txt")
    tamper(obj, tmp_path_factory.mktemp("outside"))
    assert ws.run("clean", str(ws.recipe)).code == 0
    run = ws.build()
    assert run.code == 0, run.err
    assert built_steps(run) == ["train"]  # identical bytes: nothing downstream reruns
    warnings = [line for line in run.err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "rebuilding step 'train'" in warnings[0], run.err
    assert "Traceback" not in run.err
    assert _outputs(ws) == good
    assert obj.is_file() and not obj.is_symlink()  # healed by the rebuild
    assert any((ws.cache / "quarantine").iterdir())
    # healed: the next build from scratch is all cached, silently
    ws.run("clean", str(ws.recipe))
    again = ws.build()
    assert again.code == 0 and built_steps(again) == [] and "warning" not in again.err
    assert _outputs(ws) == good


def test_a_link_target_is_never_modified(ws, tmp_path_factory):
    assert ws.build().code == 0
    outside = tmp_path_factory.mktemp("outside") / "precious.txt"
    outside.write_text("precious\n")
    obj = _object_of(ws, "train", "model.txt")
    obj.unlink()
    obj.symlink_to(outside)
    ws.run("clean", str(ws.recipe))
    assert ws.build().code == 0
    assert outside.read_text() == "precious\n"


def test_store_folder_that_is_a_file(ws):
    assert ws.build().code == 0
    good = _outputs(ws)
    folder = _object_of(ws, "train", "model.txt").parent
    for p in folder.iterdir():
        os.chmod(p, 0o644)
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    ws.run("clean", str(ws.recipe))
    run = ws.build()
    assert run.code == 0 and "Traceback" not in run.err
    assert "train" in built_steps(run)
    assert folder.is_dir()
    assert _outputs(ws) == good


@pytest.mark.parametrize("folder", ["objects", "actions", "tmp"])
def test_store_root_that_is_a_file(ws, folder):
    assert ws.build().code == 0
    good = _outputs(ws)
    root = ws.cache / folder
    for p in root.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o644)
    shutil.rmtree(root)
    root.write_text("not a folder")
    ws.run("clean", str(ws.recipe))
    run = ws.build("--force", "train")  # a step that runs needs tmp/ too
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    assert root.is_dir() and _outputs(ws) == good
    assert ws.run("verify", "--cache-dir", str(ws.cache)).code == 0


BAD_ENTRIES = {
    "not_json": b"{not json",
    "a_list": b"[]",
    "a_number": b"42",
    "missing_fields": b'{"kind": "keras-model"}',
    "nan_metrics": None,  # filled from the real entry
    "wrong_types": b'{"kind": 1, "files": [], "digest": null, "metrics": "x"}',
    "digest_as_path": None,
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000,
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("case", [*BAD_ENTRIES, "directory", "symlink", "folder_is_file", "oversized"])
def test_malformed_action_entry_is_a_miss_never_a_traceback(ws, case):
    assert ws.build().code == 0
    good = _outputs(ws)
    action = _action_of(ws, "train")
    os.chmod(action, 0o644)
    real = json.loads(action.read_text())
    if case == "directory":
        action.unlink()
        action.mkdir()
    elif case == "symlink":  # pointing at another step's valid entry
        action.unlink()
        action.symlink_to(_action_of(ws, "model"))
    elif case == "folder_is_file":
        shutil.rmtree(action.parent)
        action.parent.write_text("x")
    elif case == "nan_metrics":
        action.write_text(json.dumps({**real, "metrics": {"epochs": float("nan")}}))
    elif case == "oversized":  # a valid entry, padded past the 16 MiB any entry stays under
        action.write_text(" " * (16 << 20) + json.dumps(real))
    elif case == "digest_as_path":
        (rel,) = real["files"]
        action.write_text(json.dumps({**real, "files": {rel: "../../" + "a" * 58}}))
    else:
        action.write_bytes(BAD_ENTRIES[case])
    assert ws.plan()["train"][0] == "run"
    ws.run("clean", str(ws.recipe))
    run = ws.build()
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    assert "train" in built_steps(run)
    assert _outputs(ws) == good
    assert ws.build().code == 0 and built_steps(ws.build()) == []  # the entry was rewritten


def test_materialized_output_edited_in_place_is_restored(ws, monkeypatch):
    """The stat memo only vouches for a file with the signature it hashed: an
    edit that keeps size and mtime still changes ctime and is caught."""
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    assert ws.build().code == 0
    good = _outputs(ws)
    out = ws.root / "build" / "toy" / "train" / "model.txt"
    st = out.stat()
    data = bytearray(out.read_bytes())
    data[0] ^= 0x01
    out.write_bytes(bytes(data))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ws.build().code == 0
    assert _outputs(ws) == good


# -- tinybuild verify ----------------------------------------------------------


def test_verify_finds_every_kind_of_damage_and_repair_fixes_it(ws, tmp_path_factory):
    assert ws.build().code == 0
    good = _outputs(ws)
    cache = ["--cache-dir", str(ws.cache)]
    clean = ws.run("verify", *cache)
    assert clean.code == 0 and "0 damaged objects, 0 broken action entries" in clean.out

    outside = tmp_path_factory.mktemp("outside")
    flip(_object_of(ws, "train", "model.txt"), outside)
    symlink_other(_object_of(ws, "fp32", "model.tflite"), outside)
    directory(_object_of(ws, "int8", "model.tflite"), outside)
    report = _action_of(ws, "report")
    os.chmod(report, 0o644)
    report.write_text("[]")
    stray = ws.cache / "objects" / "zz"
    stray.write_text("a file where a folder belongs")

    found = ws.run("verify", *cache)
    assert found.code == 1, found.out
    text = found.out
    assert text.count("damaged object ") == 4  # three objects and the stray file
    assert "content does not match its digest" in text and "a symbolic link" in text and "not a regular file" in text
    assert "not a folder" in text
    # entries whose objects are damaged are broken too, and the malformed one
    assert text.count("damaged action entry ") == 4
    assert "run `tinybuild verify --repair`" in text
    assert stray.is_file()  # without --repair nothing moves

    repaired = ws.run("verify", *cache, "--repair")
    assert repaired.code == 1 and "moved 8 of them" in repaired.out
    assert not stray.exists()
    after = ws.run("verify", *cache)
    assert after.code == 0, after.out

    ws.run("clean", str(ws.recipe))
    rebuilt = ws.build()
    assert rebuilt.code == 0 and "warning" not in rebuilt.err
    assert sorted(built_steps(rebuilt)) == ["fp32", "int8", "report", "train"]
    assert _outputs(ws) == good
    assert ws.run("verify", *cache).code == 0


def test_verify_without_a_cache_and_on_a_missing_object(ws):
    empty = ws.run("verify", "--cache-dir", str(ws.root / "nothing-here"))
    assert empty.code == 0 and "checked 0 objects" in empty.out
    assert ws.build().code == 0
    obj = _object_of(ws, "model", "model.txt")
    os.chmod(obj, 0o644)
    obj.unlink()
    run = ws.run("verify", "--cache-dir", str(ws.cache))
    assert run.code == 1 and "is missing" in run.out


def test_local_entry_of_the_wrong_kind_is_a_miss(ws):
    assert ws.build().code == 0
    good = _outputs(ws)
    train = _action_of(ws, "train")
    os.chmod(train, 0o644)
    train.write_bytes(_action_of(ws, "fp32").read_bytes())  # a tflite entry under a keras-model step's key
    assert ws.plan()["train"][0] == "run"
    ws.run("clean", str(ws.recipe))
    run = ws.build()
    assert run.code == 0 and built_steps(run) == ["train"]
    assert _outputs(ws) == good


def test_gc_expires_quarantined_items_after_a_week_and_keeps_recent_ones(ws, monkeypatch):
    assert ws.build().code == 0
    flip(_object_of(ws, "train", "model.txt"), None)
    ws.run("clean", str(ws.recipe))
    assert ws.build().code == 0
    quarantine = ws.cache / "quarantine"
    (recent,) = list(quarantine.iterdir())
    old = quarantine / "objects-old.12345678"
    old.write_text("damaged long ago\n")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))  # ctime stays now: as if moved now, so it is kept too
    gc = ws.run("gc", str(ws.recipe))
    assert gc.code == 0 and "0 quarantined items" in gc.out, gc.out
    assert old.exists() and recent.exists()

    import tinybuild.housekeeping as housekeeping

    monkeypatch.setattr(housekeeping, "QUARANTINE_DAYS", 0)  # as if a week had passed
    gc = ws.run("gc", str(ws.recipe))
    assert gc.code == 0 and "2 quarantined items" in gc.out, gc.out
    assert not any(quarantine.iterdir())


def test_a_planted_quarantine_link_is_replaced_not_written_through(ws, tmp_path_factory):
    assert ws.build().code == 0
    outside = tmp_path_factory.mktemp("outside")
    (ws.cache / "quarantine").symlink_to(outside, target_is_directory=True)
    flip(_object_of(ws, "train", "model.txt"), None)
    ws.run("clean", str(ws.recipe))
    assert ws.build().code == 0
    assert not any(outside.iterdir())
    assert (ws.cache / "quarantine").is_dir() and not (ws.cache / "quarantine").is_symlink()
