"""Removing and writing files under a root without ever following a symlink.

tinybuild deletes and rewrites files in folders it owns: the build folder
(``<out>/<recipe>``, its ``.logs``), and the cache (objects, actions,
scratch, metadata). Anyone who can write there can plant a symbolic link
(``build/toy/train -> ~/thesis``); a tool that walks or writes through it
deletes or overwrites the link's target. Every removal and write under those
roots goes through this module, which

* refuses a path whose folders between the root and the path include a
  symlink or a file (so it never leaves its root, whatever was planted);
* removes a symlink itself, never its target (``unlink``, and ``rmtree``
  only where it is immune to symlink attacks: it uses ``openat``);
* replaces a link or file found where one of its own folders belongs with a
  real folder before writing into it;
* writes by temporary file + ``os.replace``, which replaces a link at the
  destination rather than writing through it.

The root itself may be a link (a user's ``build -> /scratch/build``); what
tinybuild creates below it never is. Standard library only: the no-op fast
path imports it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import CacheError

_UMASK = os.umask(0)
os.umask(_UMASK)


class UnsafePath(CacheError):
    """A path tinybuild would have to reach through a symlink, or outside its root."""


def _relative(path: Path, root: Path) -> tuple[str, ...]:
    """The parts of ``path`` below ``root`` (lexically: neither is resolved)."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise UnsafePath(f"refusing to touch {path}: it is outside {root}") from None
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"refusing to touch {path}: it is outside {root}")
    return parts


def check(path: Path, root: Path) -> None:
    """Raise :class:`UnsafePath` unless every folder between ``root`` and
    ``path`` (``path`` itself excluded) is a real folder or does not exist yet."""
    parts = _relative(path, root)
    current = Path(root)
    for part in parts[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"refusing to touch {path}: {current} is a symbolic link "
                             f"(to {os.readlink(current)}); tinybuild never deletes or writes through links")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"refusing to touch {path}: {current} is not a folder")


def is_safe(path: Path, root: Path) -> bool:
    try:
        check(path, root)
    except UnsafePath:
        return False
    return True


def remove(path: Path, root: Path) -> bool:
    """Remove a file, a link (the link, not its target) or a whole folder at
    ``path`` strictly below ``root``; False when nothing was there."""
    if not _relative(path, root):
        raise UnsafePath(f"refusing to remove {root}: it is the root itself")
    check(path, root)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        _rmtree(path)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
    return True


def _rmtree(path: Path) -> None:
    if shutil.rmtree.avoids_symlink_attacks:
        shutil.rmtree(path)
        return
    # Without openat, walk by lstat: links are unlinked, never entered.
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _rmtree(Path(entry.path))
        else:
            os.unlink(entry.path)
    os.rmdir(path)


def ensure_dir(path: Path, root: Path) -> Path:
    """Make ``path`` a real folder below (or equal to) ``root``: a link or a
    file found where one of its folders belongs is removed (the link itself)
    and replaced by a folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in _relative(path, root):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(current)  # a symlink or a stray file: ours to replace, never to follow
            st = None
        if st is None:
            try:
                os.mkdir(current)
            except FileExistsError:  # created meanwhile: check it again
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    raise UnsafePath(f"refusing to write under {current}: it is not a folder") from None
    return Path(path)


def prune(folder: Path, keep: set[str] | None = None) -> None:
    """Remove every symlink below ``folder`` and, when ``keep`` is given,
    every file whose POSIX path relative to ``folder`` is not in it, then
    the folders left empty. Never descends into a link."""

    def walk(current: Path, prefix: str) -> bool:
        """Prune ``current``; True when it ends up empty."""
        empty = True
        with os.scandir(current) as entries:
            listing = list(entries)
        for entry in listing:
            rel = prefix + entry.name
            if entry.is_symlink():
                os.unlink(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                if walk(Path(entry.path), rel + "/") and keep is not None:
                    os.rmdir(entry.path)
                else:
                    empty = False
            elif keep is not None and rel not in keep:
                os.unlink(entry.path)
            else:
                empty = False
        return empty

    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        walk(Path(folder), "")


def atomic_write(path: Path, data: bytes, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new,
    never half. With ``root``, the folders below it are made real folders
    first (see :func:`ensure_dir`); a link at ``path`` is replaced, not followed."""
    if root is not None:
        ensure_dir(path.parent, root)
    else:
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


def open_log(path: Path) -> int:
    """A descriptor appending to ``path``, never through a link at ``path``."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
