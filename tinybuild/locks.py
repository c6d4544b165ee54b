"""File locks that let several tinybuild processes share a build folder or a cache.

Two CI jobs, or an editor's build-on-save and a terminal, often build at
once. Three locks keep them apart:

* **the build folder** (``<out>/.<recipe>.lock``, beside ``<out>/<recipe>``
  so that ``clean`` can remove the folder while holding it): exclusive.
  A second build (or ``clean``) of the same folder waits, saying which
  process it waits for, or fails at once with ``--no-wait``. This
  serializes everything written there: outputs, logs, the fast-path stamp.
* **the cache** (``<cache>/cache.lock``): builds hold it *shared* from their
  first cache lookup until their lock file is written and registered, so
  any number of builds run together; ``gc`` holds it *exclusive*, so it
  never deletes an object that a running build just stored or is about to
  reference. ``fcntl.flock`` gives the shared mode (filelock has none
  without SQLite).
* **a metadata file's update** (``<cache>/locks.json.lock``,
  ``statmemo.json.lock``): a short exclusive lock around read, merge and
  atomic replace, so concurrent builds never lose each other's entries.

Locks are ``flock`` locks (through :mod:`filelock` where exclusive): the
kernel drops them when a process dies, so a killed build never leaves a
stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import UsageError
from .safefs import read_regular

Notify = Callable[[str], None]


class Busy(UsageError):
    """``--no-wait`` and someone else holds the lock (exit code 2)."""


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(lock_file: Path) -> str:
    data = read_regular(lock_file, 64)
    pid = (data or b"").decode("ascii", "replace").strip()
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def _unlink_if_link(path: Path) -> None:
    if path.is_symlink():
        path.unlink()  # a planted link: never lock (or write a pid into) its target


@contextlib.contextmanager
def build_folder(folder: Path, *, wait: bool = True, notify: Notify = lambda m: None,
                 what: str = "build") -> Iterator[None]:
    """Hold the exclusive lock of the build folder ``folder`` (``<out>/<recipe>``)."""
    import filelock

    lock_file = folder.parent / f".{folder.name}.lock"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _unlink_if_link(lock_file)
        lock = filelock.FileLock(lock_file, on_acquired=_write_pid)
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            holder = _holder(lock_file)
            if not wait:
                raise Busy(f"another build of '{folder.name}' ({holder}) is using {folder}; "
                           f"run again without --no-wait to wait for it") from None
            notify(f"waiting for another build of '{folder.name}' ({holder}) to finish with {folder} ...")
            lock.acquire()
    except OSError as exc:
        raise UsageError(f"cannot lock the build folder {folder} ({exc.strerror or exc}); "
                         f"choose a writable --out") from None
    try:
        yield
    finally:
        lock.release()


def _open_for_lock(path: Path) -> int | None:
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        _unlink_if_link(path)
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o666)
    except OSError:
        pass
    try:  # a read-only cache: an existing lock file can still be locked for reading
        return os.open(path, os.O_RDONLY | flags)
    except OSError:
        return None


@contextlib.contextmanager
def cache_access(root: Path, *, exclusive: bool, wait: bool = True, notify: Notify = lambda m: None,
                 warn: Notify = lambda m: None) -> Iterator[bool]:
    """Hold the cache lock: shared (a build) or exclusive (``gc``). Yields
    whether a lock is held; a cache where no lock file can be created (a
    read-only cache without one) is used unlocked, with a warning."""
    import fcntl

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
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            other = "running builds" if exclusive else "`tinybuild gc`"
            if not wait:
                raise Busy(f"{other} are using the cache {root}; run again without --no-wait to wait")
            notify(f"waiting for {other} using the cache {root} to finish ...")
            fcntl.flock(fd, mode)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def updating(path: Path) -> Iterator[None]:
    """Exclusive lock around a read-modify-write of the metadata file ``path``."""
    import filelock

    lock_file = path.with_name(path.name + ".lock")
    _unlink_if_link(lock_file)
    with filelock.FileLock(lock_file):
        yield
