"""Content digests: of files, of directories of outputs, and of key material.

All digests are lowercase hex sha256. Key material is hashed through a
canonical JSON encoding (sorted keys, no whitespace), so that dict order and
formatting never change a key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the fast path
if TYPE_CHECKING:
    from typing import Any, Mapping

CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, streamed; only a regular file is read (a
    FIFO or device swapped in for a data file raises OSError, never hangs)."""
    from .safeio import open_regular

    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> str:
    """The one encoding used for anything that is hashed or diffed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_digest(value: Any) -> str:
    return bytes_digest(canonical_json(value).encode("utf-8"))


def artifact_digest(kind: str, files: Mapping[str, str]) -> str:
    """Digest of an artifact: its kind and each file's relative path + digest."""
    return json_digest({"kind": kind, "files": dict(files)})


def stat_signature(st: os.stat_result) -> list[int]:
    """What identifies a file's content without reading it (device, inode,
    mtime, ctime, size). ctime is included because tools that restore mtimes
    (``cp -p``, ``rsync -t``) cannot restore it."""
    return [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size]


def path_signature(path: str) -> list[int] | None:
    """:func:`stat_signature` of the file at ``path`` now; None when it cannot be stat'ed."""
    try:
        return stat_signature(os.stat(path))
    except OSError:
        return None


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file below ``root``, sorted."""
    out = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out.append(p.relative_to(root).as_posix())
    return sorted(out)
