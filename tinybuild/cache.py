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

from . import metadata, safefs
from .errors import CacheError
from .hashing import canonical_json, file_digest, stat_signature

ENV_CACHE_DIR = "TINYBUILD_CACHE_DIR"


def atomic_write_bytes(path: Path, data: bytes, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new, never
    half; with ``root``, never through a symlinked folder below it (see safefs)."""
    safefs.atomic_write(path, data, root)


def atomic_write_json(path: Path, value: Any, pretty: bool = False, root: Path | None = None) -> None:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n" if pretty else canonical_json(value)
    atomic_write_bytes(path, text.encode("utf-8"), root)


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
        # wrong-shape entries (or a file that is not a JSON object) are treated as absent
        self._entries: dict[str, list[Any]] = metadata.load_memo(path)
        self._loaded = dict(self._entries)

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
        """Merge what this process learned into the memo on disk (other builds
        may have saved theirs meanwhile); a failure only warns."""
        if self._dirty:
            changed = {k: v for k, v in self._entries.items() if self._loaded.get(k) != v}
            metadata.save_memo(self.path, changed)
            self._loaded = dict(self._entries)
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
        safefs.ensure_dir(dest.parent, self.root)  # never write through a planted objects/xx link
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
        atomic_write_json(self.action_path(key), entry.to_json(), root=self.root)

    def iter_actions(self) -> Iterator[tuple[str, Path]]:
        return _iter_store(self.actions)

    # -- scratch -------------------------------------------------------------

    def scratch_dir(self, label: str) -> Path:
        """A fresh folder of its own under ``tmp/`` (a real folder, never a planted link)."""
        safefs.ensure_dir(self.tmp, self.root)
        return Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"{label}-"))

    def remove_scratch(self, folder: Path) -> None:
        safefs.remove(folder, self.tmp)

    # -- materializing outputs ---------------------------------------------

    def materialize(self, files: Mapping[str, str], dest: Path) -> None:
        """Make ``dest`` hold exactly ``files`` (rel path -> digest).

        Files already in place with the right content (per the stat memo) are
        left alone, so a no-op build touches nothing.
        """
        unsafe = [rel for rel in files if not safe_relpath(rel)]
        if unsafe:
            raise CacheError(f"refusing to write outside {dest}: artifact file name {unsafe[0]!r}")
        if dest.is_symlink():
            dest.unlink()  # a planted link: replaced by a folder, never written through
        dest.mkdir(parents=True, exist_ok=True)
        safefs.prune(dest)  # drop planted symlinks first: nothing below is written through one
        for rel, digest in files.items():
            target = dest / rel
            if target.is_file() and self.memo.digest(target) == digest:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(self.object_path(digest), staging)
            os.replace(staging, target)
            self.memo.remember(target, digest)
        safefs.prune(dest, keep=set(files))  # never follows a link, never leaves dest

    # -- lock-file registry (roots for gc) -----------------------------------

    def register_lock(self, lock_path: Path) -> None:
        """Record a lock file as a root for gc (merged under a file lock;
        a read-only cache or a damaged locks.json only warns)."""
        metadata.register(self.root / "locks.json", lock_path)

    def known_locks(self) -> list[Path]:
        """The registered lock files; raises DamagedMetadata (so gc refuses
        to run) when locks.json is unreadable or of the wrong shape."""
        return metadata.read_registry(self.root / "locks.json")
