"""``tinybuild build --watch``: build, wait for a change, build again, in one process.

What users do most is edit the recipe and rebuild. A new ``tinybuild build``
pays its start before any step runs: the interpreter, pydantic (needed to
validate the edited step's params) and the plugins take 0.2-0.3 s, whatever
the recipe's size (README, "The edit-rebuild loop"). A watching build pays
that once. After each build it waits for any file the build depends on to
change, and builds again in the same process, through the same path a new
command would take (no-op fast path, delta rebuild, configuration cache or
full load: each decides from the files).

Only code is process state. Each module's source is recorded as it was when
imported (:class:`Sources`), and when one differs from that, or a
``sys.path`` folder gains or loses something importable (a package
installed), the process restarts itself (``os.execv`` with the same command
line): that build is a new command's build. This is checked again right
before every build in this process, so a source and the recipe changed
together (a ``git checkout``) are never built with the old code, and
:mod:`tinybuild.keys` refuses to key a step from a source that differs from
what was imported (``configcache.imported_sources``): a source saved while a build
runs stops it, and the process restarts.

Every other change is rebuilt here. What the next change is measured against
(:class:`Baseline`) is what the build read, not what is there after it: the
recipe's signature taken before the build, and the signatures the build's
no-op stamp recorded for the lock file, data files, cached objects and
outputs (as read or as written). An edit made while a build runs is
therefore built next. After a build that wrote no stamp (it failed; or
``--only``, ``--force``, a remote cache, a plugin observing builds) the files
of the last stamp and the data files the configuration entry records are
watched from their state after the build, with the recipe's folder (a data
file the build missed may be created there).

Files are polled with ``stat``: the stamp already names every file a build
depends on, on any filesystem, and polling needs no watcher process or
inotify limits. The recipe, the file most likely edited, is polled every
20 ms (one ``stat``; the wake-ups alone cost about 0.8% of a core on a small
VM); the rest at an interval that keeps polling them near 1% of a core
(every 0.1 to 1 s).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import configcache, fastpath
from .hashing import path_signature

RECIPE_POLL_S = 0.02
SETTLE_S = 0.02  # an editor writing the recipe in several calls is read once it stops
MIN_POLL_S = 0.1  # every watched file
MAX_POLL_S = 1.0
POLL_SHARE = 0.01  # of one core, for polling every watched file
#: set in the environment of a restarted watch: SIGINT and SIGTERM arrive blocked
#: (a signal sent during the restart waits for the new process's handlers)
RESTARTED = "TINYBUILD_WATCH_RESTARTED"


def source_signature(path: str) -> list[int] | None:
    """A source's signature; for a module inside a zip or egg on ``sys.path``,
    the archive's (its member has no signature of its own)."""
    sig = path_signature(path)
    parent = os.path.dirname(path)
    while sig is None and parent and parent != os.path.dirname(parent):
        if os.path.isfile(parent):
            return path_signature(parent)
        parent = os.path.dirname(parent)
    return sig


class Sources:
    """The source file of every imported module, with its signature as it was
    imported, as far as ``stat`` can tell: a module first seen in a check
    made at time T was imported after the previous check; if its change time
    is before that check (less one filesystem tick), the file is what was
    imported. If not, it may have changed after its import, and it counts as
    changed (a restart reads it again)."""

    def __init__(self, started_ns: int):
        self.since_ns = started_ns  # nothing this process runs was imported before
        self.imported: dict[str, list[int] | None] = {}
        self.unsure: list[str] = []

    def changed(self) -> list[str]:
        """Sources that differ, or may differ, from what this process imported."""
        now = time.time_ns()
        for path in configcache.code_files():
            if path not in self.imported:
                sig = source_signature(path)
                self.imported[path] = sig
                # no file (a module made in memory): nothing on disk to differ from, until one appears
                if sig is not None and sig[3] >= self.since_ns - fastpath.RACY_NS:
                    self.unsure.append(path)
        self.since_ns = now
        return self.unsure + [p for p, sig in self.imported.items() if p not in self.unsure and source_signature(p) != sig]

    def settle(self, changed: list[str]) -> None:
        """Before a restart: let one filesystem tick pass after the newest change, so that the new
        process, started after it, does not find the same files changed "after it started"."""
        times = [sig[3] for sig in map(source_signature, changed) if sig]
        wait_ns = max(times, default=0) + fastpath.RACY_NS - time.time_ns()
        if wait_ns > 0:
            time.sleep(min(wait_ns / 1e9, 1.0))


def _importable(folder: str) -> list[str] | None:
    """What in a ``sys.path`` folder can change what is imported or which plugins
    exist: importable names, and ``.pth`` files and distribution metadata
    folders. An editor's swap file there changes none of them."""
    try:
        names = fastpath.module_names(folder)
        with os.scandir(folder or ".") as entries:
            names += sorted(e.name for e in entries if e.name.endswith((".pth", ".dist-info", ".egg-info", ".egg-link")))
    except OSError:
        return None
    return names


class ImportPath:
    """The ``sys.path`` folders, by what they hold that imports can find."""

    def __init__(self) -> None:
        self.state = {folder: _importable(folder) for folder in sys.path}

    def changed(self) -> bool:
        return any(_importable(folder) != names for folder, names in self.state.items())


class RecipeState:
    """The recipe's signature (and, when written within a filesystem tick of
    being looked at, its content digest) before a build reads it."""

    def __init__(self, recipe: Path):
        self.recipe = recipe
        self.sig = path_signature(str(recipe))
        self.digest = self._digest() if self._racy() else None

    def _racy(self) -> bool:
        return self.sig is not None and time.time_ns() - self.sig[2] <= fastpath.RACY_NS

    def _digest(self) -> str | None:
        read = configcache.read_recipe_bytes(self.recipe)  # a regular file of sane size only: never a FIFO
        return configcache.sha(read[0]) if read else None

    def changed(self) -> bool:
        if path_signature(str(self.recipe)) != self.sig:
            return True
        if self.digest is None:
            return False
        if self._digest() != self.digest:  # a second write within the tick of the first
            return True
        if not self._racy():
            self.digest = None  # a later write can no longer keep the signature
        return False


class Baseline:
    """What a change is measured against after a build (see the module docstring)."""

    def __init__(self, recipe: RecipeState, stamp: Path, sources: Sources, last: dict[str, Any]):
        self.recipe = recipe
        self.import_path = ImportPath()
        stamped = fastpath.stamped_signatures(stamp)
        path_folders = set(sys.path)
        if stamped is not None:
            files, folders = stamped
            self.folders = [[f, m] for f, m in folders if f not in path_folders]
        else:  # no stamp: as they are now, the last stamp's files, the recorded data files, the recipe's folder
            data, listed = configcache.recorded_inputs(configcache.entry_beside(stamp))
            files = {path: path_signature(path) for path in [*last.get("files", {}), *data]}
            folders = {str(recipe.recipe.resolve().parent), *(f for f, _ in last.get("folders", [])), *listed}
            self.folders = [[f, _mtime(f)] for f in sorted(folders - path_folders)]
        recipe_path = str(recipe.recipe.resolve())
        self.files = {p: sig for p, sig in files.items() if p not in sources.imported and p != recipe_path}

    @property
    def watched(self) -> dict[str, Any]:
        return {"files": self.files, "folders": self.folders}

    def others_changed(self) -> list[str]:
        changed = [p for p, sig in self.files.items() if path_signature(p) != sig]
        return changed + [f for f, mtime in self.folders if _mtime(f) != mtime]


def _mtime(folder: str) -> int | None:
    try:
        return os.stat(folder).st_mtime_ns
    except OSError:
        return None


def _shown(paths: list[str]) -> str:
    """Up to three paths, relative to the current folder when inside it."""
    names = []
    for path in paths[:3]:
        try:
            relative = os.path.relpath(path)
        except (OSError, ValueError):  # the current folder was removed
            relative = path
        names.append(path if relative.startswith("..") else relative)
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return ", ".join(names) + more


class _Stop:
    """Ctrl-C or SIGTERM while watching. The handler also raises
    ``KeyboardInterrupt`` (a build stops at once), but one raised while the
    collector runs a finalizer is swallowed by Python; the flag is not."""

    requested = False

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.requested = True
        raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.requested:
            raise KeyboardInterrupt


def wait_for_change(baseline: Baseline, sources: Sources) -> tuple[str, list[str]]:
    """Block until something changes: ("code", sources or the import path) or ("other", what)."""
    interval = MIN_POLL_S
    next_full = 0.0
    while True:
        _Stop.check()
        if baseline.recipe.changed():
            _settle(baseline.recipe.recipe)
            return "other", [str(baseline.recipe.recipe)]
        if time.monotonic() >= next_full:
            started = time.perf_counter()
            code = sources.changed()
            if code or baseline.import_path.changed():
                return "code", code or ["the import path (a package installed or removed)"]
            others = baseline.others_changed()
            if others:
                return "other", others
            interval = min(MAX_POLL_S, max(MIN_POLL_S, (time.perf_counter() - started) / POLL_SHARE))
            next_full = time.monotonic() + interval
        time.sleep(RECIPE_POLL_S)


def _settle(recipe: Path) -> None:
    """Wait until the recipe stops changing (up to 1 s)."""
    last = path_signature(str(recipe))
    for _ in range(int(1 / SETTLE_S)):
        time.sleep(SETTLE_S)
        now = path_signature(str(recipe))
        if now == last:
            return
        last = now


def restart() -> None:
    """Replace this process by the same command, run anew (new code is
    imported). SIGINT and SIGTERM stay blocked across ``execv`` until the new
    process has its handlers (``cli.main``), so a signal sent meanwhile is
    neither a traceback nor an exit without cleanup."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, RESTARTED: "1"})


def after_restart() -> None:
    """In a restarted watch: unblock the signals :func:`restart` blocked (a
    pending one is raised now), and reap the children the old process left
    (multiprocessing's resource tracker), which no one else will wait for."""
    if os.environ.pop(RESTARTED, None) is None:
        return
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def watch(recipe: Path, stamp_of: Callable[[], Path], build: Callable[[], int], *, can_restart: bool,
          started_ns: int, note: Callable[[str], None]) -> int:
    """Build, then rebuild after every change until interrupted (Ctrl-C or
    SIGTERM: exit 130, also while a build runs: nothing partial is cached).
    ``build`` runs one build and returns its exit code; errors are its to
    print. ``stamp_of``: the no-op stamp's path for the recipe as it
    resolves now (a symlinked recipe can be retargeted). ``started_ns``: no
    later than this process imported anything it runs. Without
    ``can_restart`` (``cli.main`` called with its own argument list), a
    change of code ends the watch with the last build's exit code."""
    _Stop.requested = False
    previous = {sig: signal.signal(sig, _Stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    sources = Sources(started_ns)
    # records replay with the plugins imported, and keys refuse a source that differs from its import
    previous_sources, configcache.imported_sources = configcache.imported_sources, sources.imported
    last: dict[str, Any] = {}
    code = 0
    try:
        changed = sources.changed()
        while True:
            if changed:
                if not can_restart:
                    note(f"{_shown(changed)} changed: run the command again to build with the new code")
                    return code
                note(f"{_shown(changed)} changed: restarting")
                sources.settle(changed)
                restart()
            state = RecipeState(recipe)
            before = fastpath.stamped_signatures(stamp_of())  # its files are watched if this build writes no stamp
            if before is not None:
                last = {"files": before[0], "folders": before[1]}
            code = build()
            _Stop.check()
            try:
                changed = sources.changed()  # what the build imported
                if changed:
                    continue
                baseline = Baseline(state, stamp_of(), sources, last)
                last = baseline.watched
                note(f"watching {len(baseline.files) + len(sources.imported) + 1:,} files for changes (Ctrl-C to stop)")
                gc.collect()  # the last build's cycles (the CLI keeps the collector off while it works)
                kind, what = wait_for_change(baseline, sources)
            except KeyboardInterrupt:
                note("stopped watching")
                return 130
            if kind == "other":
                note(f"{_shown(what)} changed: rebuilding")
                changed = sources.changed()  # a source and the recipe changed together: the code first
            else:
                changed = what
    finally:
        configcache.imported_sources = previous_sources
        for sig, handler in previous.items():
            signal.signal(sig, handler)
