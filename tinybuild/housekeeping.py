"""`clean` and `gc`: removing build outputs and unreferenced cache entries."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache
from .errors import CacheError
from .lockfile import referenced_digests

SCRATCH_GRACE_SECONDS = 3600  # a scratch folder younger than this may belong to a running build


@dataclass
class GcReport:
    objects: int = 0
    object_bytes: int = 0
    actions: int = 0
    scratch: int = 0
    kept_objects: int = 0
    locks: int = 0


def collect_garbage(cache: Cache, dry_run: bool = False) -> GcReport:
    """Drop objects and actions no known lock file references.

    Roots are the lock files that builds with this cache registered (lock
    files since deleted no longer protect anything).
    """
    keys: set[str] = set()
    objects: set[str] = set()
    report = GcReport()
    for lock in cache.known_locks():
        if lock.exists():
            report.locks += 1
            k, o = referenced_digests(lock)
            keys |= k
            objects |= o
    for key, path in list(cache.iter_actions()):
        if key not in keys:
            report.actions += 1
            if not dry_run:
                path.unlink(missing_ok=True)
    for digest, path in list(cache.iter_objects()):
        if digest in objects:
            report.kept_objects += 1
            continue
        report.objects += 1
        report.object_bytes += path.stat().st_size
        if not dry_run:
            path.unlink(missing_ok=True)
    if cache.tmp.is_dir():
        now = time.time()
        for scratch in cache.tmp.iterdir():
            if now - scratch.stat().st_mtime > SCRATCH_GRACE_SECONDS:
                report.scratch += 1
                if not dry_run:
                    shutil.rmtree(scratch, ignore_errors=True)
    return report


def clean_outputs(out_dir: Path, recipe_name: str) -> bool:
    """Remove a recipe's build folder (the cache is untouched).

    Only ever a folder named after the recipe, strictly inside its parent:
    a mistake elsewhere must never turn ``clean`` into ``rm -rf`` of a project.
    """
    if out_dir.name != recipe_name or recipe_name.startswith(".") or out_dir.parent == out_dir:
        raise CacheError(f"refusing to remove {out_dir}: not a build folder named after recipe '{recipe_name}'")
    if out_dir.exists():
        shutil.rmtree(out_dir)
        return True
    return False
