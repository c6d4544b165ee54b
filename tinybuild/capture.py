"""Keep a step's raw output out of the build display, in a log file.

Native libraries (TensorFlow's C++ runtime, LiteRT, absl) write straight to
file descriptors 1 and 2: oneDNN notices, CUDA probes, XNNPACK banners. They
would shred the progress display and bury what matters, so while a step runs
both descriptors point at ``<out>/.logs/<step>.log``. The console keeps
writing to its own duplicate of the original stderr (see
:func:`private_stderr`), and the log's tail is shown when a step fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, Iterator

from .safefs import open_log


def private_stderr() -> IO[str]:
    """A stream on a duplicate of the process's stderr, immune to redirection
    of descriptor 2; falls back to ``sys.stderr`` when it has no descriptor
    (e.g. under a test harness that replaced it)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[Path]:
    """Send descriptors 1 and 2, and ``sys.stdout``/``sys.stderr``, into ``log``
    (appending) for the block."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    # O_NOFOLLOW: a link planted at the log's name is an error, never a way to append elsewhere
    with open(open_log(log), "ab") as sink, \
            open(open_log(log), "a", buffering=1, encoding="utf-8", errors="replace") as text:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            # Python-level writers too, for when sys.stdout/err are not the descriptors
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield log
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
    if log.stat().st_size == 0:
        log.unlink()


def tail(log: Path, lines: int = 15) -> list[str]:
    """The last non-empty lines of a log, for failure messages."""
    try:
        text = log.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
