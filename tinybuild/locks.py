"""File locks that let several tinybuild processes share a build folder or a cache.

Two CI jobs, or an editor's build-on-save and a terminal, often build at
once. Three locks keep them apart:

* **the build folder** (``<out>/.<recipe>.lock``, beside ``<out>/<recipe>``
  so that ``clean`` can remove the folder while holding it): exclusive.
  A second build (or ``clean``) of the same folder waits, saying which
  process it waits for (the holder writes its pid into the lock file), or
  fails at once with ``--no-wait``. This serializes everything written
  there: outputs, logs, the fast-path stamp.
* **the cache** (``<cache>/cache.lock``): builds hold it *shared* from their
  first cache lookup until their lock file is written and registered, so
  any number of builds run together; ``gc`` holds it *exclusive*, so it
  never deletes an object that a running build just stored or is about to
  reference.
* **a metadata file's update** (``<cache>/locks.json.lock``,
  ``statmemo.json.lock``): a short exclusive lock (:mod:`filelock`) around
  read, merge and atomic replace, so concurrent builds never lose each
  other's entries.

All are ``flock`` locks: the kernel drops them when a process dies, so a
killed build never leaves a stale lock behind. The first two are taken on
every real build, so they use ``fcntl.flock`` directly: one system call and
no import (filelock has no shared mode without SQLite, and importing it
costs several milliseconds); filelock serves the metadata updates, which a
no-op build does not make.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

from . import safefs
from .errors import UsageError
from .safeio import read_own_file

Notify = Callable[[str], None]
METADATA_TIMEOUT_S = 120
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class Busy(UsageError):
    """``--no-wait`` and someone else holds the lock (exit code 2)."""


def _holder(lock_file: Path) -> str:
    data = read_own_file(lock_file, 64)
    pid = (data or b"").decode("ascii", "replace").strip()
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def _unlink_if_link(path: Path) -> None:
    if path.is_symlink():
        path.unlink()  # a planted link: never lock its target


def _open_for_lock(path: Path, writable_only: bool = False) -> int | None:
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1):
            # a link, FIFO or folder, or a hard link to someone's file (the holder
            # writes its pid into the lock file): replaced by a file of our own
            safefs.remove(path, path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # planted meanwhile
            os.close(fd)
            raise OSError(f"{path} is not a plain file of its own")
        return fd
    except OSError:
        if writable_only:
            raise
    try:  # a read-only cache: an existing lock file can still be locked for reading
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _flock(fd: int, exclusive: bool, wait: bool, who: Callable[[], tuple[str, str]], notify: Notify) -> None:
    """Take the lock. When someone holds it, ``who()`` gives (what they are
    doing, what we wait for): ``--no-wait`` raises Busy, else we say so and wait."""
    import fcntl

    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        busy, waiting = who()
        if not wait:
            raise Busy(f"{busy}; run again without --no-wait to wait for it") from None
        notify(f"waiting for {waiting} ...")
        fcntl.flock(fd, mode)


@contextlib.contextmanager
def build_folder(folder: Path, *, wait: bool = True, notify: Notify = lambda m: None) -> Iterator[None]:
    """Hold the exclusive lock of the build folder ``folder`` (``<out>/<recipe>``)."""
    lock_file = folder.parent / f".{folder.name}.lock"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_for_lock(lock_file, writable_only=True)
    except OSError as exc:
        raise UsageError(f"cannot lock the build folder {folder} ({exc.strerror or exc}); choose a writable --out") from None
    try:
        def who() -> tuple[str, str]:
            other = f"another build of '{folder.name}' ({_holder(lock_file)})"
            return f"{other} is using {folder}", f"{other} to finish with {folder}"

        _flock(fd, True, wait, who, notify)
        # fixed width, written in place: truncating costs milliseconds (ext4 flushes a truncated file)
        os.pwrite(fd, f"{os.getpid():<20}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def cache_access(root: Path, *, exclusive: bool, wait: bool = True, notify: Notify = lambda m: None,
                 warn: Notify = lambda m: None) -> Iterator[bool]:
    """Hold the cache lock: shared (a build) or exclusive (``gc``). Yields
    whether a lock is held; a cache where no lock file can be created (a
    read-only cache without one) is used unlocked, with a warning."""
    if exclusive and not root.is_dir():
        yield False  # no cache yet: nothing to collect, nobody to wait for
        return
    try:
        root.mkdir(parents=True, exist_ok=True)  # a first build locks the cache it creates
    except OSError:
        pass
    fd = _open_for_lock(root / "cache.lock")
    if fd is None:
        if exclusive:
            raise UsageError(f"cannot lock the cache {root} (is it read-only?); gc needs write access")
        warn(f"cannot lock the cache {root} (read-only?): a concurrent `tinybuild gc` there could remove entries this build reads")
        yield False
        return
    try:
        if exclusive:
            who = (f"running builds are using the cache {root}", f"running builds to finish with the cache {root}")
        else:
            who = (f"`tinybuild gc` is collecting the cache {root}", f"`tinybuild gc` to finish with the cache {root}")
        _flock(fd, exclusive, wait, lambda: who, notify)
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def updating(path: Path) -> Iterator[None]:
    """Exclusive lock around a read-modify-write of the metadata file ``path``."""
    import filelock

    lock_file = path.with_name(path.name + ".lock")
    _unlink_if_link(lock_file)
    # held for milliseconds; the timeout (filelock.Timeout is an OSError) only
    # turns a pathological file system into a warning instead of a hang
    with filelock.FileLock(lock_file, timeout=METADATA_TIMEOUT_S):
        yield
