"""``tinybuild build --watch``: rebuilds in one process, restarts for new code, stops cleanly."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from toyenv import BUILTIN_PLUGINS

# A plugin of its own (a file the test edits), which logs when it is imported
# and each time a step's params are validated: a delta rebuild validates only
# the edited step, the full load every step.
PLUGIN = '''
import os
from pathlib import Path

from pydantic import field_validator

from tinybuild.api import InputFile, Kind, Params, StepError, StepType, hookimpl

LOG = Path(os.environ["WATCH_LOG"])
VERSION = "v1"
with LOG.open("a") as log:
    log.write("imported\\n")


class NoteParams(Params):
    note: str = ""

    @field_validator("note")
    @classmethod
    def _validated(cls, value):
        with LOG.open("a") as log:
            log.write(f"validated {value}\\n")
        return value


class DataParams(NoteParams):
    file: InputFile | None = None


def run_data(ctx, inputs, params):
    text = params.file.read_text() if params.file else ""
    if "bad" in text:
        raise StepError(f"{params.file}: bad data")
    (ctx.out_dir / "data.txt").write_text(params.note + text + "\\n")


def run_leaf(ctx, inputs, params):
    if params.note.startswith("slow"):
        import time

        time.sleep(1.5)
    (ctx.out_dir / "leaf.txt").write_text(f"{params.note} {VERSION}\\n")


@hookimpl
def tinybuild_step_types():
    return [StepType("w-data", "1.0", Kind.DATASET, run_data, params=DataParams, arity=(0, 0), uses_names=False),
            StepType("w-leaf", "1.0", Kind.REPORT, run_leaf, params=NoteParams, arity=(0, 0), uses_dataset=True,
                     uses_names=False)]
'''

RECIPE = """\
[recipe]
name = "w"

[dataset]
use = "w-data"
note = "d"
file = "numbers.txt"

[steps.a]
use = "w-leaf"
note = "{a}"

[steps.b]
use = "w-leaf"
note = "b"
"""


class Watching:
    """A ``tinybuild build --watch`` subprocess and the lines it writes."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "tinybuild", "build", "recipe.toml", "--plain", "--watch"],
                                     cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def until_watching(self) -> str:
        """Everything written up to the next "watching ..." line."""
        seen = []
        while True:
            line = self.lines.get(timeout=120)
            assert line is not None, "the watch ended:\n" + "".join(seen)
            seen.append(line)
            if line.startswith("watching "):
                return "".join(seen)

    def stop(self, signum: int = signal.SIGTERM) -> str:
        """Send ``signum``; the watch must end with status 130. What it wrote meanwhile."""
        self.proc.send_signal(signum)
        assert self.proc.wait(timeout=60) == 130
        seen = []
        while (line := self.lines.get(timeout=60)) is not None:
            seen.append(line)
        return "".join(seen)


def start(tmp_path: Path, recipe: str | None = RECIPE.format(a="a1"), files: dict[str, str] | None = None):
    """A watch of ``recipe.toml`` (``recipe``, unless None: made by the caller)
    with the plugin, ``numbers.txt`` and ``files`` written first."""
    for name, text in {"wplugin.py": PLUGIN, "numbers.txt": "1 2\n", **(files or {})}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    if recipe is not None:
        (tmp_path / "recipe.toml").write_text(recipe)
    log = tmp_path / "plugin.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
    env.update(PYTHONPATH=str(tmp_path), WATCH_LOG=str(log), TINYBUILD_PLUGINS="w=wplugin",
               TINYBUILD_DISABLE_PLUGINS=",".join(BUILTIN_PLUGINS))
    time.sleep(0.1)  # sources changed within a filesystem tick of the start are not trusted (a restart)
    return Watching(tmp_path, env), tmp_path, log


@pytest.fixture
def watched(tmp_path):
    started = start(tmp_path)
    yield started
    if started[0].proc.poll() is None:
        started[0].proc.kill()
        started[0].proc.wait()


@pytest.fixture
def starter(tmp_path):
    """start(...) with other files; the watch is killed at the end."""
    started = []
    yield lambda **kw: started.append(start(tmp_path, **kw)) or started[-1]
    for w, _, _ in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def test_watch_rebuilds_edits_in_one_process_and_restarts_for_new_code(watched):
    w, root, log = watched
    first = w.until_watching()
    assert "ok: 3 built, 0 cached" in first and "restarting" not in first
    leaf = root / "build" / "w" / "a" / "leaf.txt"
    assert leaf.read_text() == "a1 v1\n"

    # an edit of one step: rebuilt here (the plugin is not imported again) as a delta (only it is validated)
    log.write_text("")
    (root / "recipe.toml").write_text(RECIPE.format(a="a2"))
    out = w.until_watching()
    assert "recipe.toml changed: rebuilding" in out and "ok: 1 built, 2 cached" in out, out
    assert log.read_text() == "validated a2\n"
    assert leaf.read_text() == "a2 v1\n"

    # an output removed by hand is put back
    (root / "build" / "w" / "b" / "leaf.txt").unlink()
    out = w.until_watching()
    assert "changed: rebuilding" in out and "ok: 0 built, 3 cached" in out, out
    assert (root / "build" / "w" / "b" / "leaf.txt").read_text() == "b v1\n"

    # a broken recipe is reported, and the watch goes on
    (root / "recipe.toml").write_text(RECIPE.format(a="a3") + "[steps.c\n")
    out = w.until_watching()
    assert "invalid TOML" in out and "Traceback" not in out, out
    (root / "recipe.toml").write_text(RECIPE.format(a="a3"))
    out = w.until_watching()
    assert "ok: 1 built, 2 cached" in out, out
    assert leaf.read_text() == "a3 v1\n"

    # an editor's swap file beside the recipe (a folder on the import path too) changes nothing
    (root / ".recipe.toml.swp").write_text("swap")
    (root / "recipe.toml").write_text(RECIPE.format(a="a4"))
    out = w.until_watching()
    assert "restarting" not in out and "ok: 1 built, 2 cached" in out, out

    # new plugin code: the process restarts, imports it, and builds with it
    log.write_text("")
    plugin = root / "wplugin.py"
    plugin.write_text(plugin.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    out = w.until_watching()
    assert "wplugin.py changed: restarting" in out and "ok: 3 built, 0 cached" in out, out
    assert log.read_text().startswith("imported\n")
    assert leaf.read_text() == "a4 v2\n"

    # the plugin and the recipe changed at once (a checkout): never the old code with the new recipe
    plugin.write_text(plugin.read_text().replace('VERSION = "v2"', 'VERSION = "v3"'))
    (root / "recipe.toml").write_text(RECIPE.format(a="a5"))
    out = w.until_watching()
    assert "restarting" in out and " v2" not in leaf.read_text(), out
    if "ok:" not in out:  # the recipe was seen first: rebuilt after the restart
        out = w.until_watching()
    assert leaf.read_text() == "a5 v3\n", out

    assert "stopped watching" in w.stop(signal.SIGINT)


def test_what_changes_while_a_build_runs_is_built_next(watched):
    w, root, _ = watched
    w.until_watching()
    (root / "recipe.toml").write_text(RECIPE.format(a="slow1"))  # the step sleeps 1.5 s
    while "run [w-leaf]" not in w.lines.get(timeout=60):
        pass
    (root / "recipe.toml").write_text(RECIPE.format(a="a6"))
    w.until_watching()  # the slow build
    out = w.until_watching()
    assert "ok: 1 built, 2 cached" in out, out
    assert (root / "build" / "w" / "a" / "leaf.txt").read_text() == "a6 v1\n"
    w.stop()


def test_after_a_failed_build_fixing_the_data_in_place_rebuilds(watched):
    w, root, _ = watched
    w.until_watching()
    numbers = root / "numbers.txt"
    numbers.write_text("bad\n")
    out = w.until_watching()
    assert "bad data" in out and "ok:" not in out, out
    numbers.write_text("3 4\n")  # in place: the folder's mtime stays
    out = w.until_watching()
    assert "ok: 3 built, 0 cached" in out, out
    assert (root / "build" / "w" / "dataset" / "data.txt").read_text() == "d3 4\n\n"
    w.stop()


def test_a_fifo_for_a_recipe_is_an_error_not_a_hang(watched):
    w, root, _ = watched
    w.until_watching()
    recipe = root / "recipe.toml"
    recipe.unlink()
    os.mkfifo(recipe)
    out = w.until_watching()
    assert "recipe.toml" in out and "ok:" not in out, out
    recipe.unlink()
    recipe.write_text(RECIPE.format(a="a7"))
    out = w.until_watching()
    assert "ok: 1 built, 2 cached" in out, out
    w.stop()


def test_sigterm_stops_a_watch_right_after_a_rebuild(watched):
    """A signal that lands while the collector runs finalizers after a build
    used to be swallowed, and the watch went on."""
    w, root, _ = watched
    w.until_watching()
    for note in ("x1", "x2", "x3"):
        (root / "recipe.toml").write_text(RECIPE.format(a=note))
        w.until_watching()
    w.stop()


def test_a_watch_started_in_process_ends_when_code_changes_under_a_build(tmp_path, monkeypatch):
    """``cli.main(argv)`` cannot replace its caller's process: a source
    edited after its import (here, while a build runs) ends the watch."""
    from tinybuild import watch

    module = tmp_path / "edited_under_watch.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import edited_under_watch  # noqa: F401

    time.sleep(0.1)  # older than the watch by more than a filesystem tick
    notes: list[str] = []
    builds = []

    def build() -> int:
        builds.append(1)
        module.write_text("X = 22\n")
        return 0

    code = watch.watch(tmp_path / "recipe.toml", lambda: tmp_path / "stamps" / "s.json", build, can_restart=False,
                       started_ns=time.time_ns(), note=notes.append)
    assert code == 0 and builds == [1]
    assert notes == [f"{module} changed: run the command again to build with the new code"]


def test_changed_paths_are_shown_even_when_the_current_folder_is_gone(tmp_path, monkeypatch):
    from tinybuild.watch import _shown

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert _shown(["/a/b.py", "/c/d.py"]) == "/a/b.py, /c/d.py"


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to see the exec happen")
def test_a_signal_during_a_restart_still_stops_the_watch_cleanly(watched):
    """Sent while the new process starts (before it has handlers: the
    default SIGTERM would kill it, status -15): the signals are blocked across
    execv, then handled as any other stop."""
    w, root, _ = watched
    w.until_watching()
    plugin = root / "wplugin.py"
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    while "changed: restarting" not in w.lines.get(timeout=60):
        pass
    environ = Path(f"/proc/{w.proc.pid}/environ")
    deadline = time.monotonic() + 30
    while b"TINYBUILD_WATCH_RESTARTED=1" not in environ.read_bytes():  # the new process exists
        assert time.monotonic() < deadline
    assert "Traceback" not in w.stop()


def test_a_plugin_saved_just_after_the_recipe_is_never_built_as_the_old_code(watched):
    """A checkout or "save all" writes the plugin a moment after the recipe:
    the rebuild may start in between. Its keys are never computed from the
    new source while the old module runs (the cache would keep old code's
    output under the new code's key): the process restarts and builds anew."""
    w, root, _ = watched
    w.until_watching()
    plugin = root / "wplugin.py"
    (root / "recipe.toml").write_text(RECIPE.format(a="a8"))
    time.sleep(0.03)
    plugin.write_text(plugin.read_text().replace('VERSION = "v1"', 'VERSION = "v9"'))
    seen = ""
    while "restarting" not in seen:  # the restarted process's build is in the same part
        seen += w.until_watching()
    assert (root / "build" / "w" / "a" / "leaf.txt").read_text() == "a8 v9\n", seen
    assert (root / "build" / "w" / "b" / "leaf.txt").read_text() == "b v9\n", seen
    w.stop()


def test_a_retargeted_symlinked_recipe_is_never_a_false_no_op(starter, tmp_path):
    """The no-op stamp is named after the recipe as it resolves at each build, not at the start."""
    (tmp_path / "r1.toml").write_text(RECIPE.format(a="a1"))
    (tmp_path / "r2.toml").write_text(RECIPE.format(a="a1").replace('note = "b"', 'note = "b-two"'))
    link = tmp_path / "recipe.toml"
    link.symlink_to("r1.toml")
    w, _, _ = starter(recipe=None)
    w.until_watching()
    leaf = tmp_path / "build" / "w" / "b" / "leaf.txt"
    for target, expected in (("r2.toml", "b-two v1\n"), ("r1.toml", "b v1\n")):
        link.unlink()
        link.symlink_to(target)
        out = w.until_watching()
        assert "nothing changed" not in out and leaf.read_text() == expected, out
    w.stop()


def test_a_data_fix_after_a_first_build_that_failed_rebuilds(starter):
    """No stamp was ever written; the configuration entry's data files are watched."""
    recipe = RECIPE.format(a="a1").replace('file = "numbers.txt"', 'file = "data/numbers.txt"')
    w, root, _ = starter(recipe=recipe, files={"data/numbers.txt": "bad\n"})
    out = w.until_watching()
    assert "bad data" in out, out
    (root / "data" / "numbers.txt").write_text("5 6\n")  # in a subfolder, in place: no folder changes
    out = w.until_watching()
    assert "ok: 3 built, 0 cached" in out, out
    w.stop()


def test_only_importable_names_on_the_import_path_count(tmp_path):
    """An editor's lock file (`.#x.py`, a dangling link) or a script with a dash cannot be imported:
    creating one is no reason to restart a watch or to miss the no-op fast path."""
    from tinybuild.fastpath import module_names

    (tmp_path / "good.py").write_text("")
    (tmp_path / "not-a-module.py").write_text("")
    (tmp_path / ".#good.py").symlink_to("user@host.1234:1")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "__init__.py").write_text("")
    assert module_names(str(tmp_path)) == ["good.py", "pkg/"]


def test_a_module_inside_a_zip_is_watched_through_its_archive(tmp_path):
    """Its member has no signature of its own; without the archive's, a watch restarted forever."""
    import zipfile

    from tinybuild.hashing import path_signature
    from tinybuild.watch import source_signature

    archive = tmp_path / "helpers.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zhelper.py", "X = 1\n")
    assert source_signature(str(archive / "zhelper.py")) == path_signature(str(archive)) is not None
    assert source_signature(str(tmp_path / "gone.py")) is None


def test_keys_refuse_a_source_that_differs_from_what_the_watch_imported(tmp_path, monkeypatch):
    """What closes the race of a plugin saved while a build runs: its key would name new code run by the old."""
    from tinybuild import configcache, keys
    from tinybuild.hashing import path_signature

    source = tmp_path / "edited_plugin.py"
    source.write_text("X = 1\n")
    as_imported = path_signature(str(source))
    source.write_text("X = 22\n")
    assert len(keys._source_digest(str(source))) == 64  # outside a watch: keyed as it is
    monkeypatch.setattr(configcache, "imported_sources", {str(source): as_imported})
    with pytest.raises(keys.SourceChanged, match="changed after this process imported it"):
        keys._source_digest(str(source))
