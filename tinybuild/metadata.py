"""The cache's shared metadata files: ``statmemo.json`` and ``locks.json``.

Every build that uses a cache reads and updates them, possibly at the same
time as other builds, and anyone may have damaged them. So:

* they are read only when they are regular files of sane size and the shape
  we write (``statmemo.json``: an object of 7-item entries; ``locks.json``:
  a list of paths); anything else is treated as absent, never trusted;
* every update re-reads the file under a file lock, merges, and replaces it
  atomically, so two builds never lose each other's entries (an unlocked
  read-modify-write once lost a registration, and ``gc`` then deleted that
  recipe's live entries);
* a failed update (a read-only cache) is a one-line warning, not a failed
  build: the cache is still served.

``locks.json`` is ``gc``'s list of roots: when it is damaged, ``gc`` refuses
to run rather than delete what it can no longer prove unused, and builds
leave it as it is (rewriting it with their own entry alone would let ``gc``
delete every other recipe's entries).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import CacheError
from .safefs import atomic_write
from .safeio import read_own_file

MEMO_LIMIT = 512 << 20
REGISTRY_LIMIT = 64 << 20
Warn = Callable[[str], None]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class DamagedMetadata(CacheError):
    """A metadata file exists but is unreadable or not of the shape we write."""


def _load(path: Path, limit: int) -> Any:
    """The parsed JSON at ``path``; None when absent; DamagedMetadata otherwise."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedMetadata(f"{path}: unreadable ({exc.strerror or exc})") from None
    data = read_own_file(path, limit)
    if data is None:
        raise DamagedMetadata(f"{path}: not a readable regular file of at most {limit:,} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DamagedMetadata(f"{path}: not valid JSON ({exc})") from None


# -- statmemo.json: path -> [dev, ino, mtime_ns, ctime_ns, size, digest, hashed_ns] ----------


def _memo_entry_ok(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 7
            and all(type(v) is int for v in value[:5]) and type(value[6]) is int
            and isinstance(value[5], str) and len(value[5]) == 64)


def load_memo(path: Path) -> dict[str, list[Any]]:
    """The valid entries of a stat memo; {} when absent or damaged."""
    try:
        raw = _load(path, MEMO_LIMIT)
    except DamagedMetadata:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if _memo_entry_ok(v)}


def save_memo(path: Path, changed: dict[str, list[Any]], on_error: Warn = warn) -> None:
    """Merge ``changed`` into the memo on disk (under its lock), dropping
    entries of files that no longer exist, and replace it atomically."""
    from .locks import updating

    try:
        with updating(path):
            merged = load_memo(path)
            merged.update(changed)
            live = {k: v for k, v in merged.items() if os.path.exists(k)}
            atomic_write(path, json.dumps(live, sort_keys=True, separators=(",", ":")).encode(), root=path.parent)
    except OSError as exc:
        on_error(f"could not update {path} ({exc.strerror or exc}); the next build rehashes unchanged files")


# -- locks.json: the lock files that used this cache (gc's roots) -------------------------------


def read_registry(path: Path) -> list[Path]:
    """The registered lock files; [] when absent; DamagedMetadata when the
    file is there but unreadable or not a JSON list of paths."""
    raw = _load(path, REGISTRY_LIMIT)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(p, str) and p and "\x00" not in p for p in raw):
        raise DamagedMetadata(f"{path}: not a JSON list of lock-file paths")
    return [Path(p) for p in raw]


def register(path: Path, lock_file: Path, on_error: Warn = warn) -> None:
    """Add ``lock_file`` to the registry at ``path`` (merging under its lock)."""
    from .locks import updating

    entry = str(lock_file)
    try:
        if entry in map(str, read_registry(path)):
            return  # the common case: already registered, no lock needed
        with updating(path):
            known = {str(p) for p in read_registry(path)}
            if entry not in known:
                atomic_write(path, (json.dumps(sorted(known | {entry}), indent=2) + "\n").encode(), root=path.parent)
    except DamagedMetadata as exc:
        on_error(f"{exc}; left as it is, so `tinybuild gc` refuses to run until it is fixed "
                 f"(delete it, then build each recipe that uses this cache once)")
    except OSError as exc:
        on_error(f"could not register {lock_file} in {path} ({exc.strerror or exc}); "
                 f"`tinybuild gc` will not count it as in use")
