"""The local content-addressed cache.

Layout under the cache directory::

    objects/ab/cdef...   file contents by sha256, read-only
    actions/ab/cdef...   step key -> {"kind", "files", "digest", "metrics"} (JSON)
    tmp/                 scratch: step output folders and half-written files
    statmemo.json        (path, inode, mtime, size) -> digest
    locks.json           lock files that used this cache (roots for `gc`)

Crash safety: every file is written to ``tmp/`` (or beside its target) and
renamed into place with ``os.replace``, which is atomic on POSIX. An object
appears whole or not at all, and an action entry is written only after all
of its objects exist, so a killed build never leaves a torn object or an
action that points at missing data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import CacheError
from .hashing import canonical_json, file_digest, stat_signature

ENV_CACHE_DIR = "TINYBUILD_CACHE_DIR"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, value: Any, pretty: bool = False) -> None:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n" if pretty else canonical_json(value)
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass(frozen=True)
class ActionEntry:
    """What a step produced: enough to rebuild its artifact without running it."""

    kind: str
    files: dict[str, str]
    digest: str
    metrics: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": self.files, "digest": self.digest, "metrics": self.metrics}

    @classmethod
    def from_json(cls, raw: Any) -> "ActionEntry":
        """Parse a stored entry; KeyError/TypeError/AttributeError when malformed."""
        return cls(kind=raw["kind"], files=dict(raw["files"]), digest=raw["digest"], metrics=dict(raw["metrics"]))


#: Filesystems stamp mtimes with a coarse clock: a file rewritten within the
#: same tick keeps its mtime. A signature recorded less than this long after
#: the file's mtime is "racy" and is not trusted (git's index has the same rule).
RACY_NS = 50_000_000


class StatMemo:
    """Remembers file digests by (inode, mtime, size) so unchanged files are
    not rehashed: a no-op build of a recipe with megabytes of data stays a
    handful of ``stat`` calls."""

    def __init__(self, path: Path):
        self.path = path
        self._dirty = False
        try:
            self._entries: dict[str, list[Any]] = json.loads(path.read_text("utf-8"))
        except (FileNotFoundError, ValueError):
            self._entries = {}

    signature = staticmethod(stat_signature)

    def observation(self, file: Path) -> tuple[list[int], str, int] | None:
        """(signature, digest, when it was hashed) as last recorded for ``file``."""
        hit = self._entries.get(str(file))
        return (hit[:5], hit[5], hit[6]) if hit is not None and len(hit) == 7 else None

    def digest(self, file: Path) -> str:
        st = os.stat(file)
        key = str(file)
        sig = self.signature(st)
        hit = self._entries.get(key)
        if hit is not None and len(hit) == 7 and hit[:5] == sig and hit[6] - sig[2] > RACY_NS:
            return hit[5]
        digest = file_digest(file)
        self._entries[key] = [*sig, digest, time.time_ns()]
        self._dirty = True
        return digest

    def remember(self, file: Path, digest: str) -> None:
        self._entries[str(file)] = [*self.signature(os.stat(file)), digest, time.time_ns()]
        self._dirty = True

    def save(self) -> None:
        if self._dirty:
            live = {k: v for k, v in self._entries.items() if os.path.exists(k)}
            atomic_write_json(self.path, live)
            self._dirty = False


def safe_relpath(rel: str) -> bool:
    """Whether an artifact's file name stays inside its folder (entries can
    come from a shared remote cache: never trust them to)."""
    if not rel or "\\" in rel or rel.startswith("/") or "\x00" in rel:
        return False
    parts = rel.split("/")
    return all(part not in ("", ".", "..") for part in parts)


def entry_is_consistent(entry: ActionEntry) -> bool:
    """Its digest matches its kind and files, and every file name is safe."""
    from .hashing import artifact_digest

    return (all(safe_relpath(rel) for rel in entry.files)
            and all(isinstance(d, str) and len(d) == 64 for d in entry.files.values())
            and entry.digest == artifact_digest(entry.kind, entry.files))


def _iter_store(root: Path) -> Iterator[tuple[str, Path]]:
    """(digest, path) of every entry of a two-level ``ab/cdef...`` store."""
    if not root.is_dir():
        return
    for sub in sorted(root.iterdir()):
        for entry in sorted(sub.iterdir()):
            if not entry.name.startswith("."):
                yield sub.name + entry.name, entry


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.actions = self.root / "actions"
        self.tmp = self.root / "tmp"
        self._memo: StatMemo | None = None

    @property
    def memo(self) -> StatMemo:
        if self._memo is None:
            self._memo = StatMemo(self.root / "statmemo.json")
        return self._memo

    # -- objects -------------------------------------------------------------

    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest[2:]

    def has_object(self, digest: str) -> bool:
        return self.object_path(digest).is_file()

    def put_file(self, src: Path) -> str:
        """Store a file's content; return its digest."""
        digest = file_digest(src)

        def copy(out: Any) -> None:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out)

        self._install(digest, copy)
        return digest

    def put_bytes(self, data: bytes, digest: str) -> None:
        """Store bytes already known to hash to ``digest`` (verified by the caller)."""
        self._install(digest, lambda f: f.write(data))

    def _install(self, digest: str, fill: Any) -> None:
        """Write an object under a temporary name, sync it, make it read-only and
        rename it into place: an object is whole or absent, never torn."""
        dest = self.object_path(digest)
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(staging, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(staging, 0o444)
            os.replace(staging, dest)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        return _iter_store(self.objects)

    # -- actions -------------------------------------------------------------

    def action_path(self, key: str) -> Path:
        return self.actions / key[:2] / key[2:]

    def get_action(self, key: str) -> ActionEntry | None:
        """The entry for ``key`` if it exists and all of its objects are present."""
        try:
            raw = json.loads(self.action_path(key).read_text("utf-8"))
            entry = ActionEntry.from_json(raw)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if not entry_is_consistent(entry) or not all(self.has_object(d) for d in entry.files.values()):
            return None
        return entry

    def put_action(self, key: str, entry: ActionEntry) -> None:
        missing = [rel for rel, d in entry.files.items() if not self.has_object(d)]
        if missing:  # the invariant that makes kills safe; never violate it
            raise RuntimeError(f"refusing to record action {key[:12]}: objects missing for {missing}")
        atomic_write_json(self.action_path(key), entry.to_json())

    def iter_actions(self) -> Iterator[tuple[str, Path]]:
        return _iter_store(self.actions)

    # -- scratch -------------------------------------------------------------

    def scratch_dir(self, label: str) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"{label}-"))

    # -- materializing outputs ---------------------------------------------

    def materialize(self, files: Mapping[str, str], dest: Path) -> None:
        """Make ``dest`` hold exactly ``files`` (rel path -> digest).

        Files already in place with the right content (per the stat memo) are
        left alone, so a no-op build touches nothing.
        """
        unsafe = [rel for rel in files if not safe_relpath(rel)]
        if unsafe:
            raise CacheError(f"refusing to write outside {dest}: artifact file name {unsafe[0]!r}")
        dest.mkdir(parents=True, exist_ok=True)
        for rel, digest in files.items():
            target = dest / rel
            if target.is_file() and self.memo.digest(target) == digest:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(self.object_path(digest), staging)
            os.replace(staging, target)
            self.memo.remember(target, digest)
        wanted = {dest / rel for rel in files}
        for existing in sorted(dest.rglob("*"), reverse=True):
            if existing.is_file() and existing not in wanted:
                existing.unlink()
            elif existing.is_dir() and not any(existing.iterdir()):
                existing.rmdir()

    # -- lock-file registry (roots for gc) -----------------------------------

    def register_lock(self, lock_path: Path) -> None:
        index = self.root / "locks.json"
        try:
            known = set(json.loads(index.read_text("utf-8")))
        except (FileNotFoundError, ValueError):
            known = set()
        if str(lock_path) not in known:
            known.add(str(lock_path))
            atomic_write_json(index, sorted(known), pretty=True)

    def known_locks(self) -> list[Path]:
        try:
            return [Path(p) for p in json.loads((self.root / "locks.json").read_text("utf-8"))]
        except (FileNotFoundError, ValueError):
            return []
