"""Which build folders tinybuild owns, so ``build`` and ``clean`` never touch a user's.

``<out>/<recipe>`` is computed from a flag and a name in the recipe: with
``--out ~`` and a recipe named ``Documents`` it is the user's Documents
folder. ``build`` replaces step folders there and ``clean`` removes the whole
folder, so both first make sure tinybuild created it: a folder tinybuild
creates gets a small marker file, :data:`MARKER`, and only a folder that
carries it (or an empty one, which holds nothing to lose) is written into or
removed. A build folder made by a tinybuild older than the marker is
*adopted* (marked) when everything in it is what the recipe's lock file says
tinybuild put there: only ``.logs`` and folders named after built steps,
holding only the files the lock file records for them. A single other file
(``Documents/train/notes.txt``) makes it a user's folder, refused.

For the same reason no file a recipe reads may lie inside the build folder
(``clean`` would delete it) or the cache (``gc`` would).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from . import safefs
from .errors import UsageError
from .safeio import read_own_file

if TYPE_CHECKING:  # pragma: no cover
    from .project import Project

#: The marker file tinybuild writes into every build folder it creates.
MARKER = ".tinybuild-build"
_MARKER_TEXT = b"This folder was created by tinybuild; `tinybuild clean` may remove it.\n"


def is_owned(folder: Path) -> bool:
    """Whether ``folder`` carries the marker (a regular file, not a link)."""
    return read_own_file(folder / MARKER, 4096) is not None


def _is_empty(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def _not_ours(folder: Path, action: str) -> UsageError:
    return UsageError(f"refusing to {action} {folder}: tinybuild did not create it (it is not empty, has no "
                      f"{MARKER} marker, and holds files the recipe's lock file does not record). Choose another "
                      f"--out or recipe name; if it is a build folder you no longer need, remove it (`rm -r {folder}`): "
                      f"outputs come back from the cache")


def built_by_tinybuild(folder: Path, lock: Mapping[str, Any]) -> bool:
    """Whether an unmarked ``folder`` holds only what ``lock`` (the recipe's
    lock file entries) says tinybuild materialized there: ``.logs`` and step
    folders with exactly their recorded output files (a build folder from a
    tinybuild older than the marker). Links and anything else say no."""
    def recorded(step: str) -> set[str] | None:
        entry = lock.get(step)
        files = entry.get("output", {}).get("files") if isinstance(entry, Mapping) else None
        return set(files) if isinstance(files, Mapping) else None

    with os.scandir(folder) as top:
        for entry in top:
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                return False
            if entry.name == ".logs":
                continue
            expected = recorded(entry.name)
            if expected is None:
                return False
            for path in Path(entry.path).rglob("*"):
                if path.is_symlink() or (not path.is_dir() and path.relative_to(entry.path).as_posix() not in expected):
                    return False
    return True


def claim(folder: Path, lock: Mapping[str, Any] | None = None) -> None:
    """Make ``folder`` a build folder tinybuild owns, before a build writes
    into it: created (with the marker) when absent, marked when empty or when
    an older tinybuild built it (see :func:`built_by_tinybuild`), accepted
    when marked; any other folder raises :class:`UsageError`."""
    if folder.is_dir() and not folder.is_symlink():
        if is_owned(folder):
            return
        if not _is_empty(folder) and not built_by_tinybuild(folder, lock or {}):
            raise _not_ours(folder, "build into")
    safefs.atomic_write(folder / MARKER, _MARKER_TEXT, folder.parent)


def removable(folder: Path, lock: Mapping[str, Any] | None = None) -> bool:
    """Whether ``clean`` may remove the real folder ``folder``: True when it
    carries the marker or an older tinybuild built it, False when it is empty
    (left alone: not ours), and :class:`UsageError` otherwise."""
    if is_owned(folder):
        return True
    if _is_empty(folder):
        return False
    if built_by_tinybuild(folder, lock or {}):
        return True
    raise _not_ours(folder, "remove")


def _inputs(project: Project) -> Iterator[tuple[str, Path]]:
    """(recipe key, path) of every file the recipe's steps read."""
    from .keys import input_file_fields

    for step in project.steps.values():
        for field, value in input_file_fields(step.params).items():
            if value is not None:
                for v in value if isinstance(value, (list, tuple)) else [value]:
                    yield f"{step.key}.{field}", Path(v)
        if step.step_type.input_files:
            try:
                listed = step.step_type.input_files(step.params)
            except OSError:
                continue  # a missing data folder: planning reports it with its key
            for name, path in listed.items():
                yield f"{step.key} ({name})", Path(path)


def check_inputs_outside(project: Project) -> None:
    """Refuse a recipe that reads a file inside its build folder or its cache:
    ``clean`` or ``gc`` would delete the user's data."""
    roots = [("the build folder", Path(os.path.realpath(project.out_dir))),
             ("the cache", Path(os.path.realpath(project.cache.root)))]
    for key, path in _inputs(project):
        real = Path(os.path.realpath(path))
        for what, root in roots:
            if real == root or real.is_relative_to(root):
                raise UsageError(f"{project.recipe.path.name}: {key}: the file {path} lies inside {what} {root}, which `tinybuild clean` or `gc` "
                                 f"removes; move the data out of it, or choose another --out / --cache-dir")
