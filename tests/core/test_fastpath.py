"""The no-op fast path: used only when nothing a build depends on changed."""

from __future__ import annotations

import json
import os
import time

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
    assert "[1-6/6] 6 steps cached (dataset … report; -v lists each)" in run.err  # one line, as the normal path


def test_verbose_lists_the_cached_steps(quiet):
    run = quiet.build("-v")
    assert run.code == 0 and "[6/6] report" in run.err and "cached" in run.err


def test_noop_fast_path_imports_no_heavy_library(quiet):
    """The fast path exists to be quick: pydantic (~0.25 s), numpy and
    networkx are the normal path's imports, never the no-op's."""
    import json
    import subprocess
    import sys

    from toyenv import HERE

    script = (
        "import json, sys\n"
        "from tinybuild.cli import main\n"
        "code = main(['build', sys.argv[1], '--plain', '--cache-dir', sys.argv[2]])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'numpy', 'networkx'))\n"
        "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TINYBUILD_NO_FASTPATH"}
    env["PYTHONPATH"] = str(HERE)
    for _ in range(2):  # the first records the stamp for this environment (PYTHONPATH is part of it)
        proc = subprocess.run([sys.executable, "-c", script, str(quiet.recipe), str(quiet.cache)], capture_output=True,
                              text=True, env=env, cwd=quiet.root, timeout=120)
    assert NOOP in proc.stderr, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}


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
    """A file rewritten within one mtime tick of being read keeps its stat
    signature; the stamp then trusts only its content."""
    import json

    from tinybuild import fastpath
    from tinybuild.hashing import stat_signature

    data = tmp_path / "data.txt"
    data.write_text("1 2 3\n")
    st = os.stat(data)
    stamp = tmp_path / "stamp.json"

    def write_stamp(observed_ns):
        stamp.write_text(json.dumps({
            "format": fastpath.FORMAT, "env": {}, "folders": [],
            "files": [[str(data), stat_signature(st), fastpath._sha(b"1 2 3\n"), observed_ns]],
            "summary": {"steps": []},
        }))

    write_stamp(st.st_mtime_ns + 1_000_000)  # read 1 ms after the file's mtime: racy
    assert fastpath.check(stamp, "", {}) == {"steps": []}
    data.write_text("3 2 1\n")  # same size...
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...same mtime...
    st = os.stat(data)  # ...and (pretend) the same ctime: only content can tell
    write_stamp(st.st_mtime_ns + 1_000_000)
    assert fastpath.check(stamp, "", {}) is None  # caught by content
    write_stamp(st.st_mtime_ns + 10**9)  # read long after its mtime: stat is trusted
    assert fastpath.check(stamp, "", {}) == {"steps": []}


def test_mtime_restoring_copies_are_noticed(quiet):
    data = quiet.root / "numbers.txt"
    st = os.stat(data)
    data.write_text("7 8 9\n")  # same size, then the old mtime put back (cp -p, rsync -t)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    run = quiet.build()
    assert NOOP not in run.err
    assert built_steps(run)[:1] == ["dataset"]


def test_an_edit_during_the_build_is_not_hidden(quiet, monkeypatch):
    """The recipe is stamped as the build read it: editing it while a build runs
    (here: between reading and stamping) is caught by the next build."""
    from tinybuild import fastpath

    real = fastpath.record_build

    def edit_then_record(project, *args, **kwargs):
        quiet.edit("epochs = 3", "epochs = 7")
        return real(project, *args, **kwargs)

    quiet.edit("epochs = 3", "epochs = 5")
    quiet.edit("epochs = 5", "epochs = 3")
    monkeypatch.setattr(fastpath, "record_build", edit_then_record)
    quiet.build()
    monkeypatch.setattr(fastpath, "record_build", real)
    run = quiet.build()
    assert NOOP not in run.err
    assert "params.epochs 3 → 7" in run.err


def test_the_same_words_from_another_folder_are_another_build(quiet, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(quiet.root)
    assert quiet.run("build", str(quiet.recipe), "--plain", "--out", "out", "--cache-dir", str(quiet.cache)).code == 0
    monkeypatch.chdir(other)
    run = quiet.run("build", str(quiet.recipe), "--plain", "--out", "out", "--cache-dir", str(quiet.cache))
    assert NOOP not in run.err
    assert (other / "out" / "toy" / "report" / "report.md").exists()


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


def test_import_path_changes_fall_back(quiet, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    assert NOOP not in quiet.build().err


def test_fingerprinted_helpers_outside_the_plugin_package_are_stamped(ws, tmp_path, monkeypatch):
    helper = tmp_path / "toyhelper.py"
    helper.write_text("FACTOR = 2\n")
    (tmp_path / "helperplug.py").write_text(
        "from tinybuild.api import StepType, Kind, hookimpl\n"
        "def run(ctx, inputs, params):\n"
        "    import toyhelper\n"
        "    (ctx.out_dir / 'v.txt').write_text(str(toyhelper.FACTOR))\n"
        "@hookimpl\n"
        "def tinybuild_step_types():\n"
        "    return [StepType('calc', '1.0', Kind.DATASET, run, arity=(0, 0), fingerprint_modules=('toyhelper',))]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TINYBUILD_PLUGINS", "calc=helperplug")
    ws.write('[recipe]\nname = "h"\n\n[dataset]\nuse = "calc"\n')
    assert ws.build().code == 0
    import time

    time.sleep(0.01)
    helper.write_text("FACTOR = 3\n")
    run = ws.build()
    assert NOOP not in run.err
    assert "plugin calc source changed" in run.err


def test_python_m_keeps_the_fast_path_when_a_file_appears_in_the_current_folder(quiet, monkeypatch):
    """``python -m`` puts the current folder on sys.path: a new file there
    (a log, the build folder) keeps the fast path, a new module does not."""
    import subprocess
    import sys

    from toyenv import HERE

    monkeypatch.setenv("PYTHONPATH", str(HERE))
    cmd = [sys.executable, "-m", "tinybuild", "build", "recipe.toml", "--plain", "--cache-dir", str(quiet.cache)]

    def build(code: int = 0) -> str:
        proc = subprocess.run(cmd, cwd=quiet.root, capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stderr
        return proc.stderr

    assert NOOP not in build()  # another interpreter and sys.path: its own stamp, recorded now
    assert NOOP in build()
    (quiet.root / "notes.txt").write_text("a file that no import can find")
    (quiet.root / "logs").mkdir()
    assert NOOP in build()
    shadow = quiet.root / "toy_plugin.py"  # now found before the real toy plugin's module
    shadow.write_text("# shadows the toy plugin's module\n")
    assert "cannot import name 'STEP_TYPES'" in build(code=2)  # the normal path saw it; a stale stamp would not
    shadow.unlink()
    assert NOOP not in build()
    assert NOOP in build()

def test_a_file_added_to_a_listed_folder_falls_back_to_a_real_build(ws, monkeypatch):
    """A step that lists a folder (``input_files`` from ``iterdir``) declares
    it in ``input_folders``: a new file there must rebuild, not say "nothing
    changed" (the stamp held only the files the old listing returned)."""
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_listing")
    data = ws.root / "numbers"
    data.mkdir()
    (data / "a.txt").write_text("1 2\n")
    ws.write(f"""\
        [recipe]
        name = "listing"

        [dataset]
        use = "toy-folder"
        folder = "{data}"
        """)
    past = time.time() - 10  # no racy folder: the stamp is recorded
    os.utime(data, (past, past))
    assert built_steps(ws.build()) == ["dataset"]
    assert NOOP in ws.build().err
    (data / "b.txt").write_text("3\n")
    os.utime(data, (past + 1, past + 1))  # listing changed; mtime clearly not racy
    run = ws.build()
    assert run.code == 0 and NOOP not in run.err and built_steps(run) == ["dataset"]
    assert json.loads((ws.root / "build" / "listing" / "dataset" / "data.json").read_text()) == [1, 2, 3]
    assert NOOP in ws.build().err  # stamped again


def test_the_normal_path_key_covers_a_folder_listing(ws, monkeypatch):
    """Without the fast path the listing is re-read: a new file changes the key."""
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_listing")
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    data = ws.root / "numbers"
    data.mkdir()
    (data / "a.txt").write_text("1 2\n")
    ws.write(f'[recipe]\nname = "listing"\n\n[dataset]\nuse = "toy-folder"\nfolder = "{data}"\n')
    assert built_steps(ws.build()) == ["dataset"]
    assert built_steps(ws.build()) == []
    (data / "b.txt").write_text("3\n")
    assert built_steps(ws.build()) == ["dataset"]


def test_a_recipe_with_a_byte_order_mark_takes_the_fast_path(quiet):
    """The stamp hashes the file's bytes (BOM included), the loader parses them
    without the BOM: the two agree, so an unchanged file is a no-op."""
    quiet.recipe.write_bytes(b"\xef\xbb\xbf" + quiet.recipe.read_bytes())
    first = quiet.build()  # other bytes: a real build, which finds every step cached
    assert first.code == 0 and NOOP not in first.err and built_steps(first) == [], first.err
    assert NOOP in quiet.build().err


def test_an_empty_variable_is_another_stamp(ws, monkeypatch):
    """${VAR:-default} takes the default for an empty VAR as for an unset one;
    the stamp still tells them apart (a real build, which runs nothing)."""
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_quiet")
    ws.edit('file = "numbers.txt"', 'file = "${TOY_DIR:-.}/numbers.txt"')
    monkeypatch.delenv("TOY_DIR", raising=False)
    assert ws.build().code == 0
    monkeypatch.setenv("TOY_DIR", "")
    run = ws.build()
    assert run.code == 0 and NOOP not in run.err and built_steps(run) == [], run.err
    assert NOOP in ws.build().err
