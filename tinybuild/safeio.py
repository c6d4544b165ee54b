"""Reading files a user names: only regular files, never past a size cap.

A path in a recipe (or the recipe's own path) can name anything: a FIFO,
where ``read()`` blocks forever; ``/dev/zero`` or ``/dev/urandom``, which
never end; a folder; a socket. Reading such a thing hangs the build or fills
memory. Everything tinybuild reads on a user's behalf therefore goes through
:func:`open_regular`: it checks the path names a regular file (following
symbolic links), opens it with ``O_NONBLOCK`` so that a FIFO swapped in
after the check cannot block the ``open``, and checks the *opened*
descriptor again, so that a swap between check and open is caught too.

Problems are raised as :class:`OSError` subclasses (with the path as
``filename``), so code that already reports unreadable files reports these
the same way.
"""

from __future__ import annotations

import errno
import os
import stat
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the fast path
if TYPE_CHECKING:
    from typing import Any, BinaryIO

#: Longest file or folder name most file systems accept (bytes, UTF-8).
NAME_MAX = 255
#: Longest path the kernel accepts (bytes).
PATH_MAX = 4096
#: Folders of kernel pseudo-files: stat calls them regular, but their sizes
#: are made up and some never end; no recipe reads data from them.
PSEUDO_FILE_SYSTEMS = ("/proc/", "/sys/")
#: A recipe holds settings, not data: a bigger file is a mistake (or hostile).
#: Here, not in ``recipe`` (which imports pydantic), because the no-op fast
#: path checks the recipe's size too and must stay free of heavy imports.
MAX_RECIPE_BYTES = 1 << 20


class NotRegularFile(OSError):
    """The path names a FIFO, a device, a folder or a socket, not a file."""


class FileTooLarge(OSError):
    """The file is bigger than the cap for what it is supposed to hold."""


class BadPath(OSError):
    """The path itself cannot name a file (a NUL byte, a name too long)."""


def describe_mode(mode: int) -> str:
    """What a non-regular file is, in words (for "X is <this>, not a file")."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def not_regular_message(mode: int) -> str:
    kind = describe_mode(mode)
    return "is a folder, not a file" if kind == "a folder" else f"is {kind}, not a regular file"


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot name a file at all, or None: checked before any
    system call so that NUL bytes and over-long names give a sentence, not a
    ``ValueError`` or ``ENAMETOOLONG`` from deep inside a library."""
    text = os.fspath(path)
    if "\x00" in text:
        return "the path contains a NUL byte"
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:
        return "the path is not valid text for this file system"
    if len(encoded) > PATH_MAX:
        return f"the path is {len(encoded)} bytes long; file systems accept at most {PATH_MAX}"
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            shown = part[:40].decode("utf-8", "replace")
            return f"the name '{shown}...' is {len(part)} bytes long; file systems accept at most {NAME_MAX}"
    return None


def check_path(path: str | os.PathLike[str]) -> None:
    """Raise :class:`BadPath` when :func:`path_problem` finds one."""
    problem = path_problem(path)
    if problem:
        raise BadPath(errno.EINVAL, problem, os.fspath(path).replace("\x00", "\\0")[:200])


def check_regular(path: str | os.PathLike[str]) -> os.stat_result:
    """``os.stat(path)`` (links followed), raising unless it is a regular file."""
    check_path(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL,
                             not_regular_message(st.st_mode), os.fspath(path))
    if os.path.realpath(path).startswith(PSEUDO_FILE_SYSTEMS):
        # "regular" to stat, but /proc/kcore claims 128 TiB and others never end
        raise NotRegularFile(errno.EINVAL, "is a kernel pseudo-file (/proc, /sys), not a data file", os.fspath(path))
    return st


def open_regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> BinaryIO:
    """Open a regular file for binary reading, or raise an :class:`OSError`.

    ``max_bytes`` refuses bigger files up front (:class:`FileTooLarge`);
    callers that must not trust the size (a file growing while read) should
    also read at most ``max_bytes + 1`` bytes, as :func:`read_regular` does.
    """
    check_regular(path)  # for the message: opening a socket fails with ENXIO
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between the check and the open
            raise NotRegularFile(errno.EINVAL, not_regular_message(st.st_mode), os.fspath(path))
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLarge(errno.EFBIG, f"is {st.st_size:,} bytes, over the limit of {max_bytes:,}", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """All bytes of a regular file of at most ``max_bytes`` bytes."""
    with open_regular(path, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(errno.EFBIG, f"grew past the limit of {max_bytes:,} bytes while read", os.fspath(path))
    return data


def read_own_file(path: str | os.PathLike[str], limit: int) -> bytes | None:
    """The bytes of a file tinybuild wrote itself (a stamp, an action entry,
    a lock or marker file) if it is a regular file -- not a link, FIFO or
    device -- of at most ``limit`` bytes; None otherwise or when unreadable,
    so that a planted or damaged file counts as absent. Standard library only:
    the no-op fast path reads its stamp through it."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        return data if len(data) <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)


def read_own_json(path: str | os.PathLike[str], limit: int) -> Any:
    """The parsed JSON of a file tinybuild wrote itself (see
    :func:`read_own_file`); None when that gives nothing or it does not parse."""
    import json

    data = read_own_file(path, limit)
    try:
        return None if data is None else json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def stat_of(f: BinaryIO) -> os.stat_result:
    return os.fstat(f.fileno())


__all__ = [
    "BadPath", "FileTooLarge", "NotRegularFile", "check_path", "check_regular", "describe_mode",
    "open_regular", "path_problem", "read_own_file", "read_own_json", "read_regular", "stat_of",
]
