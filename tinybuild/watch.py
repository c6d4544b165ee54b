"""``tinybuild build --watch``: build, wait for a change, build again, in one process.

What users do most is edit the recipe and rebuild. A new ``tinybuild build``
pays its start before any step runs: the interpreter, pydantic (needed to
validate the edited step's params) and the plugins take 0.2-0.3 s, whatever
the recipe's size (README, "The edit-rebuild loop"). A watching build pays
that once. After each build it waits for any file the build depends on to
change, and builds again in the same process, through the same path a new
command would take (no-op fast path, delta rebuild, configuration cache or
full load: each decides from the files, not from this process's memory).

Only code is process state. So when a source file of any imported module
changes, or a ``sys.path`` folder does (a package installed or removed), the
process restarts itself (``os.execv`` with the same command line) and that
build is a new command's build. Every other change (the recipe, a data file,
an output deleted by hand) is rebuilt here.

The files watched are the ones the last build's no-op stamp covers (recipe,
lock file, data files, cached objects, outputs, every imported source, the
data folders steps list), or, when there is no stamp (the build failed), the
recipe, the imported sources and the recipe's folder (a data file the build
missed may be created there). They are polled with ``stat``: the stamp
already names every file a build depends on, on any filesystem, and polling
needs no watcher process or inotify limits. The recipe, the file most
likely edited, is polled every 20 ms (one ``stat``; the wake-ups alone cost
about 0.8% of a core on a small VM); the rest at an interval that keeps
polling them near 1% of a core (every 0.1 to 1 s).
"""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import configcache, fastpath
from .hashing import stat_signature

RECIPE_POLL_S = 0.02
SETTLE_S = 0.02  # an editor writing the recipe in several calls is read once it stops
MIN_POLL_S = 0.1  # every watched file
MAX_POLL_S = 1.0
POLL_SHARE = 0.01  # of one core, for polling every watched file


def _signature(path: str) -> list[int] | None:
    try:
        return stat_signature(os.stat(path))
    except OSError:
        return None


def _content(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class Snapshot:
    """Stat signatures of the watched files as a build left them, split into
    code (a change restarts the process) and everything else."""

    def __init__(self, recipe: Path, stamp: Path, started_ns: int):
        self.recipe = recipe
        self.taken_ns = time.time_ns()
        self.recipe_sig = _signature(str(recipe))
        # a recipe written within one filesystem tick of now could be written again with the same
        # signature: its content tells (as the no-op stamp's racy entries do)
        racy = self.recipe_sig is not None and self.taken_ns - self.recipe_sig[2] <= fastpath.RACY_NS
        self.recipe_digest = _content(recipe) if racy else None
        self.code = {path: _signature(path) for path in configcache.code_files()}
        # A source changed (ctime) since this process started may have changed after it was
        # imported: what runs could differ from the file, so it cannot be trusted.
        self.stale = [path for path, sig in self.code.items() if sig is None or sig[3] >= started_ns - fastpath.RACY_NS]
        self.folders, self.modules = fastpath.import_path_state()
        self.files, self.data_folders = self._depended_on(stamp)

    def _depended_on(self, stamp: Path) -> tuple[dict[str, list[int] | None], list[list[Any]]]:
        stamped = fastpath.depended_on(stamp)
        if stamped is None:  # no stamp: a build that failed (a data file it missed may be created beside the recipe)
            folder = str(self.recipe.resolve().parent)
            return {}, [[folder, _mtime(folder)]]
        paths, folders = stamped
        path_folders = {folder for folder, _ in self.folders}
        return ({p: _signature(p) for p in paths if p not in self.code},
                [[f, _mtime(f)] for f in folders if f not in path_folders])

    @property
    def count(self) -> int:
        return 1 + len(self.code) + len(self.files) + len(self.folders) + len(self.data_folders)

    def recipe_changed(self) -> bool:
        sig = _signature(str(self.recipe))
        if sig != self.recipe_sig:
            return True
        return self.recipe_digest is not None and _content(self.recipe) != self.recipe_digest

    def code_changed(self) -> list[str]:
        """Changed sources, and ``sys.path`` folders (an install) as folder names."""
        changed = [p for p, sig in self.code.items() if _signature(p) != sig]
        if not fastpath.folders_unchanged(self.folders, self.modules):
            changed.append("the import path (a package installed or removed)")
        return changed

    def other_changed(self) -> list[str]:
        changed = [p for p, sig in self.files.items() if _signature(p) != sig]
        changed += [f for f, mtime in self.data_folders if _mtime(f) != mtime]
        return changed


def _mtime(folder: str) -> int | None:
    try:
        return os.stat(folder).st_mtime_ns
    except OSError:
        return None


def _shown(paths: list[str]) -> str:
    names = []
    for path in paths[:3]:
        relative = os.path.relpath(path) if os.path.isabs(path) else path
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


def wait_for_change(snapshot: Snapshot, sleep: Callable[[float], None] = time.sleep) -> tuple[str, list[str]]:
    """Block until a watched file changes: ("recipe" | "code" | "other", what changed)."""
    _Stop.check()
    started = time.perf_counter()
    code = snapshot.stale or snapshot.code_changed()
    others = snapshot.other_changed()
    cost = time.perf_counter() - started
    interval = min(MAX_POLL_S, max(MIN_POLL_S, cost / POLL_SHARE))
    next_full = time.monotonic() + interval
    while not (code or others):
        _Stop.check()
        if snapshot.recipe_changed():
            _settle(snapshot.recipe, sleep)
            return "recipe", [str(snapshot.recipe)]
        sleep(RECIPE_POLL_S)
        if time.monotonic() >= next_full:
            code = snapshot.code_changed()
            others = snapshot.other_changed()
            next_full = time.monotonic() + interval
    return ("code", code) if code else ("other", others)


def _settle(recipe: Path, sleep: Callable[[float], None]) -> None:
    """Wait until the recipe stops changing (up to 1 s)."""
    last = _signature(str(recipe))
    for _ in range(int(1 / SETTLE_S)):
        sleep(SETTLE_S)
        now = _signature(str(recipe))
        if now == last:
            return
        last = now


def restart() -> None:
    """Replace this process by the same command, run anew (new code is imported)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def watch(recipe: Path, stamp: Path, build: Callable[[], int], *, can_restart: bool, started_ns: int,
          note: Callable[[str], None]) -> int:
    """Build, then rebuild after every change until interrupted (Ctrl-C or
    SIGTERM: exit 130, also while a build runs: nothing partial is cached). ``build`` runs one build and returns its exit code;
    errors are its to print. Without ``can_restart`` (``cli.main`` called
    with its own argument list), a change of code ends the watch with the
    last build's exit code instead. ``started_ns``: when this process
    started (no later than it imported anything it runs)."""
    _Stop.requested = False
    previous = {sig: signal.signal(sig, _Stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    trusted = configcache.trust_imported_modules(True)  # a source changed since its import restarts (Snapshot.stale)
    try:
        code = build()
        while True:
            _Stop.check()
            snapshot = Snapshot(recipe, stamp, started_ns)
            note(f"watching {snapshot.count:,} files for changes (Ctrl-C to stop)")
            try:
                gc.collect()  # the last build's cycles (the CLI keeps the collector off while it works)
                kind, changed = wait_for_change(snapshot)
            except KeyboardInterrupt:
                note("stopped watching")
                return 130
            if kind == "code":
                if not can_restart:
                    note(f"{_shown(changed)} changed: run the command again to build with the new code")
                    return code
                note(f"{_shown(changed)} changed: restarting")
                restart()
            note(f"{_shown(changed)} changed: rebuilding")
            code = build()
    finally:
        configcache.trust_imported_modules(trusted)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

