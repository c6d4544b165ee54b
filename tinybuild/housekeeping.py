"""`clean` and `gc`: removing build outputs and unreferenced cache entries.

Both delete, so both go through :mod:`tinybuild.safefs`: a symlink planted
in the cache (``objects/zz -> ~``) or a build folder that is a link is
never followed, and nothing outside the cache or the build folder's parent
is removed. The caller holds the locks (see :mod:`tinybuild.locks`): the
build folder's for ``clean``, the cache's exclusively for ``gc``.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import safefs
from .buildfolder import removable
from .cache import Cache
from .errors import CacheError
from .lockfile import referenced_digests
from .metadata import DamagedMetadata

SCRATCH_GRACE_SECONDS = 3600  # a scratch folder younger than this may belong to a running build
#: damaged objects and entries stay in ``quarantine/`` this long for inspection; then gc removes them
QUARANTINE_DAYS = 7


@dataclass
class GcReport:
    objects: int = 0
    object_bytes: int = 0
    actions: int = 0
    scratch: int = 0
    quarantined: int = 0
    kept_objects: int = 0
    locks: int = 0
    skipped: list[str] = field(default_factory=list)  # links and strays left alone


def _entries(cache: Cache, store: Path, report: GcReport) -> Iterator[tuple[str, Path]]:
    """(digest, path) of a two-level ``ab/cdef...`` store, by ``lstat``:
    a shard that is a link or not a folder is skipped (and reported), never entered."""
    if not safefs.is_safe(store / "x", cache.root) or not store.is_dir():
        if os.path.lexists(store):
            report.skipped.append(f"{store} (not a real folder)")
        return
    for shard in sorted(os.scandir(store), key=lambda e: e.name):
        if shard.name.startswith("."):
            continue
        if shard.is_symlink() or not shard.is_dir(follow_symlinks=False):
            report.skipped.append(f"{shard.path} ({'a symbolic link' if shard.is_symlink() else 'not a folder'})")
            continue
        for entry in sorted(os.scandir(shard.path), key=lambda e: e.name):
            if not entry.name.startswith("."):
                yield shard.name + entry.name, Path(entry.path)


def _roots(cache: Cache, report: GcReport) -> tuple[set[str], set[str]]:
    """(action keys, object digests) the registered lock files reference.

    Refuses (CacheError) when ``locks.json`` or a registered lock file that
    still exists cannot be read as what tinybuild writes: deleting on a
    partial list of roots would delete live entries.
    """
    try:
        registered = cache.known_locks()
    except DamagedMetadata as exc:
        raise CacheError(f"gc removed nothing: {exc}. It lists the lock files whose entries are in use, so gc "
                         f"cannot tell what is garbage. Fix: restore it, or delete it and build each recipe "
                         f"that uses this cache once (that registers it again), then run gc") from None
    keys: set[str] = set()
    objects: set[str] = set()
    for lock in registered:
        if not os.path.lexists(lock):
            continue  # a deleted lock file protects nothing
        try:
            k, o = referenced_digests(lock)
        except ValueError as exc:
            raise CacheError(f"gc removed nothing: the lock file {lock} (registered in {cache.root / 'locks.json'}) "
                             f"is unreadable or damaged ({exc}), so what it uses is unknown. Fix: rebuild its "
                             f"recipe (rewrites it) or delete it, then run gc") from None
        keys |= k
        objects |= o
        report.locks += 1
    return keys, objects


def collect_garbage(cache: Cache, dry_run: bool = False) -> GcReport:
    """Drop objects and actions no known lock file references.

    Roots are the lock files that builds with this cache registered (lock
    files since deleted no longer protect anything).
    """
    report = GcReport()
    keys, objects = _roots(cache, report)
    for key, path in list(_entries(cache, cache.actions, report)):
        if key not in keys:
            report.actions += 1
            if not dry_run:
                safefs.remove(path, cache.root)
    for digest, path in list(_entries(cache, cache.objects, report)):
        if digest in objects:
            report.kept_objects += 1
            continue
        report.objects += 1
        st = os.lstat(path)
        report.object_bytes += st.st_size if stat.S_ISREG(st.st_mode) else 0
        if not dry_run:
            safefs.remove(path, cache.root)
    report.scratch = _expire(cache.tmp, cache.root, SCRATCH_GRACE_SECONDS, report, dry_run)
    report.quarantined = _expire(cache.root / "quarantine", cache.root, QUARANTINE_DAYS * 86400, report, dry_run,
                                 moved=True)
    return report


def _expire(folder: Path, root: Path, older_than: float, report: GcReport, dry_run: bool, *,
            moved: bool = False) -> int:
    """Remove what ``folder`` (a real folder below ``root``, never entered
    through a link) holds that was last changed more than ``older_than``
    seconds ago; return how many. ``moved``: its entries were renamed into
    it (:meth:`Cache.quarantine`), which sets their ctime, so the newer of
    mtime and ctime says when they arrived."""
    if not (safefs.is_safe(folder / "x", root) and folder.is_dir()):
        if os.path.lexists(folder):
            report.skipped.append(f"{folder} (not a real folder)")
        return 0
    cutoff = time.time() - older_than
    count = 0
    for item in os.scandir(folder):
        st = item.stat(follow_symlinks=False)
        if (max(st.st_mtime, st.st_ctime) if moved else st.st_mtime) < cutoff:
            count += 1
            if not dry_run:
                safefs.remove(Path(item.path), folder)
    return count


def clean_outputs(out_dir: Path, recipe_name: str, lock: Mapping[str, Any] | None = None) -> bool:
    """Remove a recipe's build folder (the cache is untouched).

    Only ever a folder named after the recipe, strictly inside its parent:
    a mistake elsewhere must never turn ``clean`` into ``rm -rf`` of a project.
    A build folder that is a symbolic link loses the link, never its target;
    a real folder goes only if tinybuild created it (see :mod:`.buildfolder`).
    """
    if out_dir.name != recipe_name or recipe_name.startswith(".") or out_dir.parent == out_dir:
        raise CacheError(f"refusing to remove {out_dir}: not a build folder named after recipe '{recipe_name}'")
    if out_dir.is_dir() and not out_dir.is_symlink() and not removable(out_dir, lock):
        return False  # an empty folder tinybuild did not create: not ours to remove
    return safefs.remove(out_dir, out_dir.parent)
