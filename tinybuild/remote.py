"""A remote cache shared by a CI fleet, on any fsspec URL.

Same layout as the local cache (``objects/ab/cdef…``, ``actions/ab/cdef…``)
under a URL such as ``s3://bucket/tinybuild``, ``gs://…``, a shared folder
or ``file:///mnt/cache``. The local cache stays the source of truth:

* on a local miss, the action entry and its objects are **pulled**. The
  entry must have the right shape and kind, a digest that matches its files,
  file names that stay inside the step's folder and each file's size; each
  object is streamed into the local store, hashed on the way, and reading
  stops as soon as it is longer than the entry says;
* with ``TINYBUILD_REMOTE_KEY`` set, entries are signed (HMAC-SHA256 over the
  step key and the canonical entry, metrics and sizes included) and entries
  without a valid signature are ignored. Without a key, whoever can write to
  the remote chooses what readers build: objects are still checked against
  the entry, but nothing says the entry is the one the step would produce;
* after a step succeeds, its objects and then its action entry are
  **pushed** (objects first, so a reader never sees an action whose objects
  are missing), unless pushing is turned off (``--no-push``). An object
  already on the remote is kept only if it has the right size and digest.

Remote failures are reported once and the build goes on with the local
cache: after the first failure to reach the remote it is not used for the
rest of the build (a circuit breaker, as in Bazel), so an unreachable
endpoint costs one timeout, not one per step. A remote cache is an
accelerator, not a dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .cache import MAX_ENTRY_BYTES, ActionEntry, Cache, CorruptObject, entry_is_consistent
from .hashing import CHUNK, canonical_json

ENV_REMOTE = "TINYBUILD_REMOTE_CACHE"
ENV_KEY = "TINYBUILD_REMOTE_KEY"
_CONTEXT = b"tinybuild remote action entry v1\n"


def sign(secret: bytes, key: str, entry: ActionEntry) -> str:
    """HMAC-SHA256 of an entry *for one step key*: binding the key means a
    signed entry cannot be replayed under another step's key."""
    message = _CONTEXT + key.encode("ascii") + b"\n" + canonical_json(entry.to_json()).encode("utf-8")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def secret_from_env(environ: Any = None) -> bytes | None:
    value = (os.environ if environ is None else environ).get(ENV_KEY)
    return value.encode("utf-8") if value else None


def storage_options(url: str, environ: Any = None) -> dict[str, Any]:
    """fsspec options tinybuild adds: for S3, one retry instead of botocore's
    default of four with backoff (about 14 s before an unreachable endpoint
    fails), unless the user chose retries (``AWS_MAX_ATTEMPTS``,
    ``AWS_RETRY_MODE`` or fsspec's ``FSSPEC_S3_CONFIG_KWARGS``)."""
    import fsspec.config

    env = os.environ if environ is None else environ
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol not in ("s3", "s3a"):
        return {}
    if env.get("AWS_MAX_ATTEMPTS") or env.get("AWS_RETRY_MODE") or "config_kwargs" in fsspec.config.conf.get("s3", {}):
        return {}
    return {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}


class _Untrusted(Exception):
    """A remote entry or object that must not be used (not a connectivity failure)."""


@dataclass
class Transfer:
    """What one pull moved, for the console (``-v``)."""

    bytes: int = 0
    seconds: float = 0.0


_LOCAL_PROTOCOLS = frozenset({"file", "local"})


def url_problem(url: str, known: Iterable[str]) -> str | None:
    """Why ``url`` cannot name a remote cache, or None. fsspec reads
    ``s3:/bucket`` or ``s3://`` (an unset ``$BUCKET`` in CI) as a *local*
    folder named ``s3:``: the build would then "push" into the current
    folder and share its cache with nobody, saying nothing."""
    protocol, sep, rest = url.partition("://")
    if not sep:
        head = url.split(":", 1)[0].lower()
        if ":" in url and head in known and head not in _LOCAL_PROTOCOLS | {""}:
            return f"not a URL: write {head}://BUCKET/PATH (two slashes after '{head}:')"
        if ":" in url and head in _LOCAL_PROTOCOLS:
            return "not a URL: write file:///absolute/path (three slashes)"
        if url.strip() and not url.strip().strip("/"):
            return "names the filesystem's root; give the shared cache a folder of its own"
        return None  # a plain local folder
    protocol = protocol.lower()
    if protocol not in known:
        return f"unknown protocol '{protocol}://'"
    if protocol in _LOCAL_PROTOCOLS:
        if not rest.startswith("/"):
            return "a file:// URL needs an absolute path: file:///absolute/path (three slashes)"
        if not rest.strip("/"):
            return ("names the filesystem's root (an empty variable in file://$DIR/?); "
                    "give the shared cache a folder of its own, e.g. file:///mnt/shared/tinybuild-cache")
        return None
    bucket = rest.split("/", 1)[0]
    if not bucket:
        return (f"no bucket or host after '{protocol}://' (an empty variable in {protocol}://$BUCKET/...?); "
                f"write {protocol}://BUCKET/PATH")
    return None


class RemoteCache:
    def __init__(self, url: str, push: bool = True, warn: Callable[[str], None] = lambda _m: None,
                 secret: bytes | None = None):
        import fsspec  # imported only when a remote cache is configured

        problem = url_problem(url, fsspec.available_protocols())
        if problem:
            raise ValueError(problem)
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options(self.url))
        self.root = self.root.rstrip("/")
        self.fs.invalidate_cache()  # fsspec reuses instances: never trust listings from before this build
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        self._local = bool(set(protocols) & _LOCAL_PROTOCOLS)
        self.push_enabled = push
        self.warn = warn
        self.secret = secret
        self.enabled = True
        self.pulled = 0
        self.pushed = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.seconds = 0.0
        self.last_pull = Transfer()
        self._good: set[str] = set()  # remote objects verified during this build
        self._bad: set[str] = set()  # remote objects found damaged during this build
        self._ignored: set[str] = set()  # action keys already warned about

    def _path(self, area: str, digest: str) -> str:
        return f"{self.root}/{area}/{digest[:2]}/{digest[2:]}"

    # -- failures ------------------------------------------------------------

    def _trip(self, exc: BaseException, doing: str) -> None:
        """The circuit breaker: the first failure to talk to the remote turns it off for this build."""
        if self.enabled:
            self.enabled = False
            self.warn(f"remote cache {self.url}: {doing} failed ({type(exc).__name__}: {_one_line(exc)}); "
                      "not using the remote for the rest of this build")

    def _ignore(self, key: str, why: BaseException) -> None:
        """Warn once per entry (a plan and the build both look at it)."""
        if key not in self._ignored:
            self._ignored.add(key)
            self.warn(f"remote cache: ignoring action {key[:12]}: {why}")

    # -- reading ---------------------------------------------------------------

    def _entry(self, key: str, kind: str | None) -> ActionEntry | None:
        """The remote entry for ``key``, checked; None on a miss. Raises
        _Untrusted for an entry that must be ignored, and lets connectivity
        errors through."""
        try:
            data = self.fs.cat_file(self._path("actions", key), start=0, end=MAX_ENTRY_BYTES + 1)
        except FileNotFoundError:
            return None
        except (IsADirectoryError, NotADirectoryError):
            raise _Untrusted("not a file") from None
        self.bytes_down += len(data)
        if len(data) > MAX_ENTRY_BYTES:
            raise _Untrusted("larger than any action entry")
        try:
            raw = json.loads(data.decode("utf-8"))
            signature = raw.pop("signature", None) if isinstance(raw, dict) else None
            entry = ActionEntry.from_json(raw)
        except (ValueError, RecursionError) as exc:
            raise _Untrusted(f"malformed: {_one_line(exc)}") from None
        if kind is not None and entry.kind != kind:
            raise _Untrusted(f"kind {entry.kind!r} instead of {kind!r}")
        if not entry_is_consistent(entry):
            raise _Untrusted("inconsistent (digest or file names)")
        if not entry.sizes:
            raise _Untrusted("no file sizes (written by an older tinybuild); treated as a miss")
        if self.secret is not None:
            if not isinstance(signature, str):
                raise _Untrusted(f"unsigned, and {ENV_KEY} is set")
            if not hmac.compare_digest(signature, sign(self.secret, key, entry)):
                raise _Untrusted("bad signature (not written with this TINYBUILD_REMOTE_KEY, or altered)")
        return entry

    def peek(self, key: str, kind: str | None = None) -> ActionEntry | None:
        """The remote action entry for ``key`` without fetching its objects (for plans)."""
        if not self.enabled:
            return None
        try:
            return self._entry(key, kind)
        except _Untrusted as exc:
            self._ignore(key, exc)
        except Exception as exc:
            self._trip(exc, "reading")
        return None

    def pull(self, key: str, local: Cache, kind: str) -> ActionEntry | None:
        """Copy ``key``'s entry and objects into ``local``; None on a miss or
        when anything about them is untrusted (then the step is rebuilt)."""
        if not self.enabled:
            return None
        started = time.perf_counter()
        before = self.bytes_down
        try:
            entry = self._entry(key, kind)
            if entry is None:
                return None
            for rel, digest in sorted(entry.files.items()):
                if local.has_object(digest):
                    continue  # verified when materialized
                try:
                    local.ingest(self._stream(digest, entry.sizes[rel]), digest=digest, size=entry.sizes[rel])
                except CorruptObject as exc:
                    self._bad.add(digest)
                    raise _Untrusted(f"object for {rel}: {exc.reason}") from None
                self._good.add(digest)
            local.put_action(key, entry)
        except _Untrusted as exc:
            self._ignore(key, exc)
            return None
        except FileNotFoundError:
            self.warn(f"remote cache: action {key[:12]} names an object the remote does not have; ignoring it")
            return None
        except Exception as exc:
            self._trip(exc, "pulling")
            return None
        finally:
            self.seconds += time.perf_counter() - started
        self.pulled += 1
        self.last_pull = Transfer(self.bytes_down - before, time.perf_counter() - started)
        return entry

    def _stream(self, digest: str, size: int) -> Iterator[bytes]:
        """An object's bytes in chunks, never more than ``size + 1`` in all."""
        try:
            f = self.fs.open(self._path("objects", digest), "rb", block_size=CHUNK)
        except (IsADirectoryError, NotADirectoryError):
            raise CorruptObject(digest, "not a file") from None
        with f:
            announced = getattr(f, "size", None)
            if isinstance(announced, int) and announced != size:
                raise CorruptObject(digest, f"{announced} bytes instead of {size}")
            left = size + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                self.bytes_down += len(chunk)
                yield chunk

    # -- writing ---------------------------------------------------------------

    def push(self, key: str, entry: ActionEntry, local: Cache) -> None:
        if not (self.enabled and self.push_enabled):
            return
        started = time.perf_counter()
        try:
            if set(entry.sizes) != set(entry.files):
                return  # only entries written by this version carry sizes; readers would ignore it
            for rel, digest in sorted(entry.files.items()):
                self._push_object(digest, entry.sizes[rel], local)
            body = entry.to_json()
            if self.secret is not None:
                body["signature"] = sign(self.secret, key, entry)
            data = canonical_json(body).encode("utf-8")
            self._upload(self._path("actions", key), lambda f: f.write(data))
            self.bytes_up += len(data)
            self.pushed += 1
        except CorruptObject as exc:
            self.warn(f"remote cache: not pushing {key[:12]}: the local {exc}")
        except PermissionError as exc:
            self.push_enabled = False
            self.warn(f"remote cache {self.url}: no permission to write ({_one_line(exc)}); "
                      "not pushing for the rest of this build (use --no-push for read-only jobs)")
        except Exception as exc:
            self._trip(exc, "pushing")
        finally:
            self.seconds += time.perf_counter() - started

    def _push_object(self, digest: str, size: int, local: Cache) -> None:
        """Upload an object unless the remote already has it intact: one that
        fails its size or digest is overwritten."""
        if digest in self._good:
            return
        if digest not in self._bad and self._remote_intact(digest, size):
            self._good.add(digest)
            return
        target = self._path("objects", digest)
        if self.fs.isdir(target):  # a folder where an object belongs cannot be written over
            self.fs.rm(target, recursive=True)
        counted = _Counter()
        self._upload(self._path("objects", digest), lambda f: local.copy_object(digest, counted.wrap(f)))
        self.bytes_up += counted.n
        self._good.add(digest)
        self._bad.discard(digest)

    # -- objects only: the data plane of distributed builds (tinybuild.ray_executor) --

    def upload_object(self, digest: str, size: int, local: Cache) -> None:
        """Put one local object on the remote (skipped when it is there intact);
        errors propagate: a worker that cannot hand over its outputs failed."""
        self._push_object(digest, size, local)

    def download_object(self, digest: str, size: int, local: Cache) -> None:
        """Copy one object into ``local`` unless it is there; its size and
        digest are verified on the way (CorruptObject otherwise)."""
        if not local.has_object(digest):
            local.ingest(self._stream(digest, size), digest=digest, size=size)

    def _remote_intact(self, digest: str, size: int) -> bool:
        try:
            h = hashlib.sha256()
            n = 0
            for chunk in self._stream(digest, size):
                h.update(chunk)
                n += len(chunk)
        except FileNotFoundError:
            return False
        except CorruptObject:
            return False
        return n == size and h.hexdigest() == digest

    def _upload(self, target: str, fill: Callable[[Any], Any]) -> None:
        """Write under a temporary name, then move: readers never see half a file
        on filesystems with atomic rename (object stores write whole objects anyway)."""
        parent = target.rsplit("/", 1)[0]
        if self._local:  # a shared folder: a link planted at a shard must not carry our writes elsewhere
            from . import safefs

            safefs.ensure_dir(Path(parent), Path(self.root))
        else:
            self.fs.makedirs(parent, exist_ok=True)
        staging = f"{target}.{uuid.uuid4().hex}.tmp"
        try:
            with self.fs.open(staging, "wb") as f:
                fill(f)
            self.fs.mv(staging, target)
        except BaseException:
            try:
                self.fs.rm(staging)
            except Exception:
                pass
            raise

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "pulled": self.pulled, "pushed": self.pushed, "bytes_down": self.bytes_down,
                "bytes_up": self.bytes_up, "seconds": round(self.seconds, 3), "disabled": not self.enabled,
                "signed": self.secret is not None}


class _Counter:
    """Counts bytes written through it (for ``-v``)."""

    def __init__(self) -> None:
        self.n = 0

    def wrap(self, f: Any) -> Any:
        counter = self

        class _W:
            def write(self, data: bytes) -> int:
                counter.n += len(data)
                return f.write(data)

        return _W()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("…" if len(text) > 200 else "")
