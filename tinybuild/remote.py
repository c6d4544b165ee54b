"""A remote cache shared by a CI fleet, on any fsspec URL.

Same layout as the local cache (``objects/ab/cdef…``, ``actions/ab/cdef…``)
under a URL such as ``s3://bucket/tinybuild``, ``gs://…``, a shared folder
or ``file:///mnt/cache``. The local cache stays the source of truth:

* on a local miss, the action entry and its objects are **pulled**, and each
  object's sha256 is verified before it enters the local store (a corrupt or
  tampered remote can cost a rebuild, never a wrong artifact);
* after a step succeeds, its objects and then its action entry are
  **pushed** (objects first, so a reader never sees an action whose objects
  are missing), unless pushing is turned off (``--no-push``: read-only CI
  jobs, forks).

Remote failures (network, permissions) are reported and the build goes on
with the local cache: a remote cache is an accelerator, not a dependency.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable

from .cache import ActionEntry, Cache, entry_is_consistent
from .hashing import bytes_digest

ENV_REMOTE = "TINYBUILD_REMOTE_CACHE"


class RemoteCache:
    def __init__(self, url: str, push: bool = True, warn: Callable[[str], None] = lambda _m: None):
        import fsspec  # imported only when a remote cache is configured

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")
        self.push_enabled = push
        self.warn = warn
        self.pulled = 0
        self.pushed = 0

    def _path(self, area: str, digest: str) -> str:
        return f"{self.root}/{area}/{digest[:2]}/{digest[2:]}"

    def peek(self, key: str) -> ActionEntry | None:
        """The remote action entry for ``key`` without fetching its objects (for plans)."""
        try:
            raw = json.loads(self.fs.cat_file(self._path("actions", key)))
            entry = ActionEntry.from_json(raw)
        except Exception:
            return None
        return entry if entry_is_consistent(entry) else None

    def pull(self, key: str, local: Cache, kind: str) -> ActionEntry | None:
        """Copy ``key``'s entry and objects into ``local``; None on a miss.

        The entry must describe an artifact of ``kind`` whose digest matches
        its files, with file names that stay inside the step's folder, and
        every object must hash to its name: anything else is ignored.
        """
        try:
            raw = json.loads(self.fs.cat_file(self._path("actions", key)))
            entry = ActionEntry.from_json(raw)
        except FileNotFoundError:
            return None
        except Exception as exc:  # unreachable, unreadable or malformed: fall back to building
            self.warn(f"remote cache: cannot read action {key[:12]} ({type(exc).__name__}: {exc})")
            return None
        if entry.kind != kind or not entry_is_consistent(entry):
            self.warn(f"remote cache: action {key[:12]} is inconsistent (kind, digest or file names); ignoring it")
            return None
        try:
            for rel, digest in entry.files.items():
                if local.has_object(digest):
                    continue
                data = self.fs.cat_file(self._path("objects", digest))
                if bytes_digest(data) != digest:
                    self.warn(f"remote cache: object for {rel} is corrupt (digest mismatch); ignoring the remote entry")
                    return None
                local.put_bytes(data, digest)
        except Exception as exc:
            self.warn(f"remote cache: cannot fetch objects of {key[:12]} ({type(exc).__name__}: {exc})")
            return None
        local.put_action(key, entry)
        self.pulled += 1
        return entry

    def push(self, key: str, entry: ActionEntry, local: Cache) -> None:
        if not self.push_enabled:
            return
        try:
            for digest in sorted(set(entry.files.values())):
                target = self._path("objects", digest)
                if not self.fs.exists(target):
                    self._upload(local.object_path(digest).read_bytes(), target)
            self._upload(json.dumps(entry.to_json(), sort_keys=True).encode("utf-8"), self._path("actions", key))
            self.pushed += 1
        except Exception as exc:
            self.warn(f"remote cache: push of {key[:12]} failed ({type(exc).__name__}: {exc}); the local cache has it")

    def _upload(self, data: bytes, target: str) -> None:
        """Write under a temporary name, then move: readers never see half a file
        on filesystems with atomic rename (object stores write whole objects anyway)."""
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        staging = f"{target}.{uuid.uuid4().hex}.tmp"
        self.fs.pipe_file(staging, data)
        self.fs.mv(staging, target)

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "pulled": self.pulled, "pushed": self.pushed}
