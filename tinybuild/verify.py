"""``tinybuild verify``: check every object and action entry of a cache.

A build already refuses damaged objects one at a time, when it needs them;
this walks the whole store, so a CI job can check (and with ``--repair``
clean) a cache before it is shared or archived. Checked:

* every object is a regular file (not a link, folder or device) in a real
  ``objects/ab/`` folder, and its bytes hash to its name;
* every action entry is a readable JSON object of the right shape whose
  digest matches its files, and every object it names is present and intact.

``--repair`` moves damaged objects and broken entries to ``quarantine/``:
the steps that needed them are rebuilt by the next build.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .cache import Cache, is_digest
from .hashing import file_digest


@dataclass
class Damage:
    path: Path
    reason: str


@dataclass
class VerifyReport:
    objects: int = 0
    actions: int = 0
    bad_objects: list[Damage] = field(default_factory=list)
    bad_actions: list[Damage] = field(default_factory=list)
    quarantined: int = 0

    @property
    def damaged(self) -> bool:
        return bool(self.bad_objects or self.bad_actions)


def _store(root: Path, report: list[Damage]) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(name, path, lstat) of every entry of a two-level store, never
    following a link; folders of the wrong kind are reported as damage."""
    try:
        subs = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as exc:
        report.append(Damage(root, f"unreadable ({exc.strerror})"))
        return
    for sub in subs:
        path = Path(sub.path)
        if sub.name.startswith("."):
            continue
        if not sub.is_dir(follow_symlinks=False):
            report.append(Damage(path, "not a folder (a file or link where a store folder belongs)"))
            continue
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            report.append(Damage(path, f"unreadable ({exc.strerror})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):  # a writer's staging file
                continue
            yield sub.name + entry.name, Path(entry.path), entry.stat(follow_symlinks=False)


def _object_problem(path: Path, digest: str, st: os.stat_result) -> str | None:
    if not is_digest(digest):
        return "not named by a sha256 digest"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        actual = file_digest(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    return None if actual == digest else "content does not match its digest"


def verify_cache(cache: Cache, repair: bool = False) -> VerifyReport:
    report = VerifyReport()
    damaged: set[str] = set()
    for digest, path, st in _store(cache.objects, report.bad_objects):
        report.objects += 1
        problem = _object_problem(path, digest, st)
        if problem:
            report.bad_objects.append(Damage(path, problem))
            damaged.add(digest)
    for key, path, st in _store(cache.actions, report.bad_actions):
        report.actions += 1
        entry = cache.read_action(key) if is_digest(key) and stat.S_ISREG(st.st_mode) else None
        if entry is None:
            report.bad_actions.append(Damage(path, "not a well-formed action entry (shape, digest or file names)"))
            continue
        broken = next(((rel, d) for rel, d in sorted(entry.files.items()) if d in damaged or not cache.has_object(d)), None)
        if broken:
            rel, d = broken
            report.bad_actions.append(Damage(path, f"its object for {rel} ({d[:12]}) is {'damaged' if d in damaged else 'missing'}"))
    if repair:
        for damage in [*report.bad_actions, *report.bad_objects]:
            report.quarantined += cache.quarantine(damage.path)
    return report
