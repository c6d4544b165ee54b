"""The local content-addressed cache.

Layout under the cache directory::

    objects/ab/cdef...   file contents by sha256, read-only
    actions/ab/cdef...   step key -> {"kind", "files", "digest", "metrics"} (JSON)
    tmp/                 scratch: step output folders and half-written files
    quarantine/          objects and entries found damaged (kept for inspection)
    statmemo.json        (path, inode, mtime, size) -> digest
    locks.json           lock files that used this cache (roots for `gc`)

Crash safety: every file is written to ``tmp/`` (or beside its target) and
renamed into place with ``os.replace``, which is atomic on POSIX. An object
appears whole or not at all, and an action entry is written only after all
of its objects exist, so a killed build never leaves a torn object or an
action that points at missing data.

Integrity: nothing in the cache folder is trusted on sight. Objects are
hashed while they are copied out (one pass) and a mismatch, a symlink, a
directory or anything else that is not a regular file is moved to
``quarantine/`` (:class:`CorruptObject`); action entries of the wrong shape
are treated as absent. The same checks guard entries pulled from a remote.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from . import metadata, safefs
from .errors import CacheError
from .safeio import read_own_file
from .hashing import CHUNK, canonical_json, file_digest, stat_signature

ENV_CACHE_DIR = "TINYBUILD_CACHE_DIR"


def atomic_write_bytes(path: Path, data: bytes, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new, never
    half; with ``root``, never through a symlinked folder below it (see safefs)."""
    safefs.atomic_write(path, data, root)


def atomic_write_json(path: Path, value: Any, pretty: bool = False, root: Path | None = None) -> None:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n" if pretty else canonical_json(value)
    atomic_write_bytes(path, text.encode("utf-8"), root)


_DIGEST = re.compile(r"[0-9a-f]{64}")

#: An action entry is a few kilobytes; anything far bigger is not one (and is not read whole).
MAX_ENTRY_BYTES = 16 << 20


def is_digest(value: Any) -> bool:
    """A lowercase hex sha256: the only shape a digest may have, since digests
    become paths (``objects/ab/cdef...``) and entries can come from a remote."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


class CorruptObject(CacheError):
    """An object was not what its name says (content, type or size); it has
    been quarantined where possible, and the step that needed it is rebuilt."""

    def __init__(self, digest: str, reason: str):
        super().__init__(f"cache object {digest[:12]} is damaged ({reason})")
        self.digest = digest
        self.reason = reason


@dataclass(frozen=True)
class ActionEntry:
    """What a step produced: enough to rebuild its artifact without running it.

    ``sizes`` (file -> bytes) lets a reader of a remote cache stop reading an
    object as soon as it is longer than announced; entries written before it
    existed have none.
    """

    kind: str
    files: dict[str, str]
    digest: str
    metrics: dict[str, Any]
    sizes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "files": self.files, "digest": self.digest, "metrics": self.metrics}
        if self.sizes:
            out["sizes"] = self.sizes
        return out

    @classmethod
    def from_json(cls, raw: Any) -> "ActionEntry":
        """Parse a stored entry; ValueError unless it has exactly the expected shape
        (entries come from disk and remotes: a wrong shape must never reach a key)."""
        if not isinstance(raw, dict):
            raise ValueError("an action entry must be a JSON object")
        extra = set(raw) - {"kind", "files", "digest", "metrics", "sizes", "signature"}
        if extra:
            raise ValueError(f"unexpected fields {sorted(extra)}")
        kind, files, digest, metrics = raw.get("kind"), raw.get("files"), raw.get("digest"), raw.get("metrics")
        sizes = raw.get("sizes", {})
        if not isinstance(kind, str) or not kind or not is_digest(digest):
            raise ValueError("kind or digest missing or malformed")
        if not isinstance(files, dict) or not files or not all(isinstance(r, str) and is_digest(d) for r, d in files.items()):
            raise ValueError("files must map names to sha256 digests")
        if not isinstance(sizes, dict) or not all(
                r in files and type(n) is int and n >= 0 for r, n in sizes.items()) or (sizes and set(sizes) != set(files)):
            raise ValueError("sizes must give a non-negative size for every file")
        if not isinstance(metrics, dict):
            raise ValueError("metrics must be a JSON object")
        canonical_json(metrics)  # NaN/Infinity would crash key computation downstream
        return cls(kind=kind, files=dict(files), digest=digest, metrics=dict(metrics), sizes=dict(sizes))


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

    def vouches(self, file: str, st: os.stat_result, digest: str) -> bool:
        """Whether the memo saw ``file`` with exactly this stat signature,
        hashed it to ``digest``, and the hash was not racy (see :meth:`digest`)."""
        hit = self._entries.get(file)
        if hit is None or len(hit) != 7 or hit[5] != digest:
            return False
        sig = self.signature(st)
        return hit[:5] == sig and hit[6] - sig[2] > RACY_NS

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
            and all(is_digest(d) for d in entry.files.values())
            and entry.digest == artifact_digest(entry.kind, entry.files))


def _intact(path: Path, digest: str) -> bool:
    try:
        return file_digest(path) == digest
    except OSError:
        return False


def parse_entry(data: bytes) -> ActionEntry:
    """An entry from its stored bytes; ValueError for anything malformed."""
    try:
        return ActionEntry.from_json(json.loads(data.decode("utf-8")))
    except RecursionError:  # deeply nested JSON
        raise ValueError("nested too deeply") from None


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
        self._objects_text, self._actions_text = str(self.objects), str(self.actions)
        self.tmp = self.root / "tmp"
        self._memo: StatMemo | None = None
        #: entries this process already read and found whole: a build looks each
        #: key up twice (plan, then executor), and parsing it again is a fifth of
        #: a no-op build at thousands of steps. Entries are immutable once
        #: written; a quarantine forgets them all.
        self._read: dict[str, ActionEntry] = {}

    @property
    def memo(self) -> StatMemo:
        if self._memo is None:
            self._memo = StatMemo(self.root / "statmemo.json")
        return self._memo

    # -- objects -------------------------------------------------------------

    def object_path(self, digest: str) -> Path:
        return Path(self.object_file(digest))

    def object_file(self, digest: str) -> str:
        """:meth:`object_path` as a string, without building a ``Path`` (the
        no-op stamp names three files per step: thousands of them)."""
        if not is_digest(digest):  # a digest becomes a path: never let one leave the store
            raise CorruptObject(str(digest)[:64], "not a sha256 digest")
        return f"{self._objects_text}/{digest[:2]}/{digest[2:]}"

    def has_object(self, digest: str) -> bool:
        """Whether a regular file (not a link, not a folder) is stored under ``digest``.
        Its content is checked when it is read (:meth:`copy_object`)."""
        if not is_digest(digest):
            return False
        try:
            return stat.S_ISREG(os.lstat(self.object_path(digest)).st_mode)
        except OSError:
            return False

    def put_file(self, src: Path) -> str:
        """Store a file's content; return its digest."""
        return self.store_file(src)[0]

    def store_file(self, src: Path) -> tuple[str, int]:
        """Store a file's content, hashing while copying (one pass); return (digest, size)."""
        with open(src, "rb") as f:
            return self.ingest(iter(lambda: f.read(CHUNK), b""))

    def ingest(self, chunks: Iterable[bytes], digest: str | None = None, size: int | None = None) -> tuple[str, int]:
        """Store a stream of bytes as an object; return (digest, size).

        With ``digest`` and ``size`` (data from an untrusted source), reading
        stops as soon as more than ``size`` bytes arrive, and the object is
        stored only if it has exactly that size and digest (CorruptObject
        otherwise): a bogus huge object is never read whole.
        """
        self._ensure_dir(self.tmp)
        folder = Path(tempfile.mkdtemp(dir=self.tmp, prefix="ingest-"))  # gc reaps it if we are killed
        staging = folder / "object"
        try:
            h = hashlib.sha256()
            n = 0
            with open(staging, "wb") as out:
                for chunk in chunks:
                    n += len(chunk)
                    if size is not None and n > size:
                        raise CorruptObject(digest or "?", f"longer than the announced {size} bytes")
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            got = h.hexdigest()
            if size is not None and n != size:
                raise CorruptObject(digest or got, f"{n} bytes instead of {size}")
            if digest is not None and got != digest:
                raise CorruptObject(digest, "content does not match its digest")
            os.chmod(staging, 0o444)
            self._place(staging, got, n)
            return got, n
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _place(self, staging: Path, digest: str, size: int) -> None:
        """Rename a verified file into the store: an object is whole or absent,
        never torn. What already sits there stays only if it is a regular
        file with the right size and content; anything else is quarantined
        and replaced (a damaged object heals when its content is stored again)."""
        dest = self.object_path(digest)
        try:
            st = os.lstat(dest)
            if stat.S_ISREG(st.st_mode) and st.st_size == size and _intact(dest, digest):
                return
            self.quarantine(dest)
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            pass  # objects/ab is not a folder: handled by _make_parent
        self._make_parent(dest)
        os.replace(staging, dest)

    def _make_parent(self, path: Path) -> None:
        """Make ``path``'s two-level folder (``objects/ab``) a real folder,
        quarantining a file or link found in its place."""
        parent = path.parent
        self._ensure_dir(parent.parent)
        try:
            st = os.lstat(parent)
            if stat.S_ISDIR(st.st_mode):
                return
            self.quarantine(parent)
        except FileNotFoundError:
            pass
        parent.mkdir(parents=True, exist_ok=True)

    def _ensure_dir(self, folder: Path) -> None:
        """Make a top-level store folder (``objects``, ``actions``, ``tmp``)
        exist; a file found in its place is quarantined (a link to a folder is
        accepted: a cache may live partly on another disk)."""
        if not folder.is_dir() and (folder.is_symlink() or folder.exists()):
            self.quarantine(folder)
        folder.mkdir(parents=True, exist_ok=True)

    def quarantine(self, path: Path) -> bool:
        """Move a damaged object or entry (file, folder or link: never followed)
        out of the store into ``quarantine/``; False when it cannot be moved
        (read-only cache), in which case it is merely never served."""
        self._read.clear()
        try:
            folder = safefs.ensure_dir(self.root / "quarantine", self.root)  # a planted link there is replaced
            os.rename(path, folder / f"{path.parent.name}-{path.name}.{uuid.uuid4().hex[:8]}")
            return True
        except OSError:
            return False

    def copy_object(self, digest: str, out: BinaryIO) -> int:
        """Copy an object into ``out`` while hashing it; return its size.

        Raises CorruptObject (after quarantining it) when the object is not
        a regular file or its bytes do not hash to its name, and
        FileNotFoundError when it is absent. ``out`` then holds garbage: the
        caller writes to a staging file and discards it.
        """
        path = self.object_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.quarantine(path)
                raise CorruptObject(digest, "a symbolic link") from None
            if exc.errno == errno.ENOTDIR:
                self.quarantine(path.parent)
                raise CorruptObject(digest, f"{path.parent.name} in the store is not a folder") from None
            raise CorruptObject(digest, f"unreadable: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self.quarantine(path)
            raise CorruptObject(digest, "not a regular file")
        with os.fdopen(fd, "rb") as f:
            h = hashlib.sha256()
            n = 0
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        if h.hexdigest() != digest:
            self.quarantine(path)
            raise CorruptObject(digest, "content does not match its digest")
        return n

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        return _iter_store(self.objects)

    # -- actions -------------------------------------------------------------

    def action_path(self, key: str) -> Path:
        return Path(self.action_file(key))

    def action_file(self, key: str) -> str:
        return f"{self._actions_text}/{key[:2]}/{key[2:]}"

    def read_action(self, key: str) -> ActionEntry | None:
        """The stored entry for ``key``; None when absent, unreadable or of the wrong shape."""
        if not is_digest(key):
            return None
        data = read_own_file(f"{self.actions}/{key[:2]}/{key[2:]}", MAX_ENTRY_BYTES)  # only a regular file, never a link
        if data is None:
            return None
        try:
            entry = parse_entry(data)
        except ValueError:
            return None
        return entry if entry_is_consistent(entry) else None

    def get_action(self, key: str, kind: str | None = None) -> ActionEntry | None:
        """The entry for ``key`` if it is well-formed (of ``kind``, when given) and something is stored
        under each of its objects' names. What is stored there is checked when
        it is copied out (:meth:`materialize`): a damaged object is then
        quarantined with a warning, rather than silently treated as missing."""
        entry = self._read.get(key) or self.read_action(key)
        if entry is None or (kind is not None and entry.kind != kind):
            return None
        objects = str(self.objects)  # string joins: pathlib costs more than the lstat at thousands of steps
        for digest in entry.files.values():  # digests were validated when the entry was parsed
            try:
                os.lstat(f"{objects}/{digest[:2]}/{digest[2:]}")
            except OSError:
                return None
        self._read[key] = entry
        return entry

    def put_action(self, key: str, entry: ActionEntry) -> None:
        missing = [rel for rel, d in entry.files.items() if not self.has_object(d)]
        if missing:  # the invariant that makes kills safe; never violate it
            raise RuntimeError(f"refusing to record action {key[:12]}: objects missing for {missing}")
        path = self.action_path(key)
        self._make_parent(path)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            self.quarantine(path)  # a folder or link where an entry belongs
        atomic_write_json(path, entry.to_json(), root=self.root)

    def drop_action(self, key: str) -> bool:
        """Move a broken entry out of the way (quarantine) so the step is rebuilt."""
        return self.quarantine(self.action_path(key))

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

    def in_place(self, files: Mapping[str, str], dest: Path) -> bool:
        """Whether ``dest`` is a real folder holding exactly ``files`` and
        nothing else, each a regular file the stat memo vouches for. One
        ``scandir`` per step instead of :meth:`materialize`'s walks: the
        common case of a rebuild (thousands of cached steps whose outputs are
        already in place) then costs a listing, not a dozen system calls per
        step. Artifacts with subfolders always take :meth:`materialize`."""
        try:
            if not stat.S_ISDIR(os.lstat(dest).st_mode):
                return False  # missing, or a planted link/file: materialize replaces it
            with os.scandir(dest) as listing:
                entries = list(listing)
        except OSError:
            return False
        if len(entries) != len(files):
            return False
        memo = self.memo
        for entry in entries:
            digest = files.get(entry.name)
            if digest is None:
                return False
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                return False
            if not stat.S_ISREG(st.st_mode) or not memo.vouches(entry.path, st, digest):
                return False
        return True

    def materialize(self, files: Mapping[str, str], dest: Path) -> None:
        """Make ``dest`` hold exactly ``files`` (rel path -> digest).

        Files already in place with the right content (per the stat memo) are
        left alone, so a no-op build touches nothing. Every object copied is
        verified on the way: CorruptObject when one is damaged (it is
        quarantined; the caller rebuilds the step).
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
            if not target.is_symlink() and target.is_file() and self.memo.digest(target) == digest:
                continue  # the memo vouches only for content it hashed with this very stat signature
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(staging, "wb") as out:
                    self.copy_object(digest, out)  # hashed while copied: a damaged object raises CorruptObject
                os.replace(staging, target)
            except BaseException:
                staging.unlink(missing_ok=True)
                raise
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
