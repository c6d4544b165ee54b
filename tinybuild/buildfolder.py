"""Which build folders tinybuild owns, so ``build`` and ``clean`` never touch a user's.

``<out>/<recipe>`` is computed from a flag and a name in the recipe: with
``--out ~`` and a recipe named ``Documents`` it is the user's Documents
folder. ``build`` replaces step folders there and ``clean`` removes the whole
folder, so both first make sure tinybuild created it: a folder tinybuild
creates gets a small marker file, :data:`MARKER`, and only a folder that
carries it (or an empty one, which holds nothing to lose) is written into or
removed. A build folder made by a tinybuild older than the marker is refused
like any other folder; removing it (``rm -r``) is the fix, since every output
comes back from the cache.

For the same reason no file a recipe reads may lie inside the build folder
(``clean`` would delete it) or the cache (``gc`` would).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from . import safefs
from .errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .project import Project

#: The marker file tinybuild writes into every build folder it creates.
MARKER = ".tinybuild-build"
_MARKER_TEXT = b"This folder was created by tinybuild; `tinybuild clean` may remove it.\n"


def is_owned(folder: Path) -> bool:
    """Whether ``folder`` carries the marker (a regular file, not a link)."""
    return safefs.read_regular(folder / MARKER, 4096) is not None


def _is_empty(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def _not_ours(folder: Path, action: str) -> UsageError:
    return UsageError(f"refusing to {action} {folder}: tinybuild did not create it (it is not empty and has no "
                      f"{MARKER} marker). Choose another --out or recipe name; if it is a build folder from an older "
                      f"tinybuild, remove it (`rm -r {folder}`): its outputs come back from the cache")


def claim(folder: Path) -> None:
    """Make ``folder`` a build folder tinybuild owns, before a build writes
    into it: created (with the marker) when absent, marked when empty,
    accepted when marked; any other folder raises :class:`UsageError`."""
    if folder.is_dir() and not folder.is_symlink():
        if is_owned(folder):
            return
        if not _is_empty(folder):
            raise _not_ours(folder, "build into")
    safefs.atomic_write(folder / MARKER, _MARKER_TEXT, folder.parent)


def removable(folder: Path) -> bool:
    """Whether ``clean`` may remove the real folder ``folder``: True when it
    carries the marker, False when it is empty (left alone: not ours), and
    :class:`UsageError` otherwise."""
    if is_owned(folder):
        return True
    if _is_empty(folder):
        return False
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
