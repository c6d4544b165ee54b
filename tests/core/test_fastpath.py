"""The no-op fast path: used only when nothing a build depends on changed."""

from __future__ import annotations

import os

import pytest

from toyenv import built_steps

NOOP = "nothing changed since the last build"


@pytest.fixture
def quiet(ws, monkeypatch):
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_quiet")
    first = ws.build()  # a full build records the stamp...
    assert first.code == 0 and NOOP not in first.err
    return ws


def test_noop_build_takes_the_fast_path(quiet):
    run = quiet.build()
    assert run.code == 0 and NOOP in run.err
    assert "[6/6] report cached" in run.err.replace("  ", " ")


@pytest.mark.parametrize("change", ["param", "data", "output", "lock", "object"])
def test_any_change_falls_back_to_a_real_build(quiet, change):
    ws = quiet
    if change == "param":
        ws.edit("epochs = 3", "epochs = 5")
        expect = ["train", "fp32", "int8", "report"]
    elif change == "data":
        (ws.root / "numbers.txt").write_text("4 5 6\n")
        expect = ["dataset", "model", "train"]  # train's output ignores values: early cutoff
    elif change == "output":
        (ws.root / "build" / "toy" / "fp32" / "model.tflite").write_bytes(b"tampered")
        expect = []
    elif change == "lock":
        (ws.root / "recipe.lock.json").unlink()
        expect = []
    else:
        obj = next(p for p in (ws.cache / "objects").rglob("*") if p.is_file())
        os.chmod(obj, 0o644)
        obj.unlink()
        expect = None
    run = ws.build()
    assert run.code == 0 and NOOP not in run.err
    if expect is not None:
        assert built_steps(run) == expect
    assert NOOP in ws.build().err  # and the next one is fast again


def test_racy_files_are_checked_by_content(tmp_path):
    """A file rewritten within one mtime tick of the stamp keeps its stat
    signature; the stamp then trusts only its content."""
    import json

    from tinybuild import fastpath

    data = tmp_path / "data.txt"
    data.write_text("1 2 3\n")
    st = os.stat(data)
    stamp = tmp_path / "stamp.json"

    def write_stamp(stamped_ns):
        stamp.write_text(json.dumps({
            "format": fastpath.FORMAT, "stamped_ns": stamped_ns, "env": {}, "folders": [],
            "files": [[str(data), st.st_ino, st.st_mtime_ns, st.st_size, fastpath._sha(b"1 2 3\n")]],
            "summary": {"steps": []},
        }))

    write_stamp(st.st_mtime_ns + 1_000_000)  # stamped 1 ms after the file's mtime: racy
    assert fastpath.check(stamp, "", {}) == {"steps": []}
    data.write_text("3 2 1\n")  # same size...
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...same mtime
    assert fastpath.check(stamp, "", {}) is None  # caught by content
    write_stamp(st.st_mtime_ns + 10**9)  # stamped long after: stat is trusted
    assert fastpath.check(stamp, "", {}) == {"steps": []}


def test_env_var_used_by_the_recipe_is_part_of_the_stamp(ws, monkeypatch):
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_quiet")
    ws.edit('file = "numbers.txt"', 'file = "${TOY_DIR:-.}/numbers.txt"')
    ws.build()
    assert NOOP in ws.build().err
    monkeypatch.setenv("TOY_DIR", str(ws.root))
    assert NOOP not in ws.build().err


def test_plugins_observing_hooks_disable_the_fast_path(ws):
    ws.build()
    ws.build()
    assert NOOP not in ws.build().err  # toy_plugin implements lifecycle hooks


def test_only_and_force_never_use_it(quiet):
    assert NOOP not in quiet.build("--only", "train").err
    assert NOOP not in quiet.build().err  # --only dropped the stamp; this build records it again
    assert NOOP in quiet.build().err
    assert built_steps(quiet.build("--force", "report")) == ["report"]
