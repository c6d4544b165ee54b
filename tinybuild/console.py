"""Build output: a live rich display on a terminal, plain lines in CI logs.

The reporter is itself a plugin (it implements the lifecycle hooks), so a
third-party reporter sees exactly the same events. Output goes to stderr
(through a private duplicate: while a step runs, descriptors 1 and 2 point at
its log file, see :mod:`tinybuild.capture`); stdout stays free for
machine-readable output (``graph``, ``schema``).

Plain lines never import rich (tens of ms of imports, see ``python -X
importtime``, paid by every CI build): messages are composed for the mode
(:meth:`ConsoleReporter._style`, :meth:`ConsoleReporter._esc`), written
straight to the stream, and rich is asked whether the stream is a terminal
only where the answer is in doubt. Plain lines show the user's text as is
(rich turned ``:smile:`` into an emoji, expanded tabs, dropped control
characters).
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

from .api import hookimpl
from .capture import private_stderr


def _short(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def _brief(seconds: float) -> str:
    """Transfers are often milliseconds: show them as such."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else _short(seconds)


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _surely_not_a_terminal(stream: Any) -> bool:
    """True where ``rich.console.Console(file=stream).is_terminal`` is False
    for certain, so a plain build need not import rich to ask. Rich (15.x)
    calls a stream a terminal when ``TTY_COMPATIBLE=1``, or ``FORCE_COLOR``
    is non-empty (unless ``TTY_COMPATIBLE=0``), or its ``isatty()`` says so;
    Jupyter and IDLE only ever make the answer False. Any of the first two
    set, or a TTY: rich decides, as before."""
    if os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return isatty is None or not isatty()
    except ValueError:  # a closed stream, as rich treats it
        return True


def _rich_console(stream: Any) -> Any:
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=True)


class ConsoleReporter:
    """Prints build progress. ``live`` uses rich (markup, progress bars);
    otherwise plain lines go straight to the stream. ``live=None``: live
    where rich calls the stream a terminal."""

    PLAIN_PROGRESS_INTERVAL = 2.0  # seconds between progress lines in logs

    def __init__(self, live: bool | None = None, verbose: bool = False, stream: Any = None):
        self._stream = stream or private_stderr()
        self.console: Any = None  # rich's Console: live mode only
        if live is None and not _surely_not_a_terminal(self._stream):
            self.console = _rich_console(self._stream)
            live = self.console.is_terminal
        self.live = bool(live)
        if self.live and self.console is None:
            self.console = _rich_console(self._stream)
        self.verbose = verbose
        self._total = 0
        self._index = 0
        self._width = 10
        self._progress: Any = None
        self._cached_run: list[tuple[int, str, str]] = []  # (index, step, digest) not printed yet
        self._tasks: dict[str, Any] = {}  # running step -> its progress bar (-j N: several at once)
        self._numbers: dict[str, int] = {}  # step -> its [i/N] number, fixed when it starts
        self._last_plain: dict[str, float] = {}  # step -> when its last progress line was printed

    # -- helpers ---------------------------------------------------------------

    def _style(self, style: str, text: str) -> str:
        """``text`` (markup already) in a rich ``style``; plain lines drop it."""
        return f"[{style}]{text}[/{style}]" if self.live else text

    def _esc(self, text: str) -> str:
        """User text (names, messages, errors) shown as is: escaped for rich's
        markup in live mode, untouched in plain lines."""
        if not self.live:
            return text
        from rich.markup import escape

        return escape(text)

    def _line(self, text: str) -> None:
        if self._cached_run:
            self._flush_cached()
        self._print(text)

    def _print(self, text: str) -> None:
        if not self.live:
            self._write(text)
        elif self._progress is not None:
            self._progress.console.print(text)
        else:
            self.console.print(text)

    def _write(self, line: str) -> None:
        """A plain line, flushed at once as rich's Console does (a CI log shows
        progress as it happens); a reader gone away ends the build as it did."""
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except BrokenPipeError:
            raise SystemExit(1) from None

    def _flush_cached(self) -> None:
        """One line for a run of consecutive local cache hits: a line per
        cached step was a fifth of a 5,000-step rebuild, and says nothing
        the summary does not (``-v`` lists each)."""
        run, self._cached_run = self._cached_run, []
        if len(run) == 1:
            index, step, digest = run[0]
            self._print(f"{self._head(step, index)} {self._style('dim', 'cached')} {digest[:12]}")
        else:
            self._print(f"{self._esc(f'[{run[0][0]}-{run[-1][0]}/{self._total}]')} "
                        f"{self._style('dim', f'{len(run)} steps cached')} "
                        f"({self._esc(run[0][1])} … {self._esc(run[-1][1])}; -v lists each)")

    def _number(self, step: str) -> None:
        self._index += 1
        self._numbers[step] = self._index

    def _head(self, step: str, index: int | None = None) -> str:
        number = self._numbers.get(step, self._index) if index is None else index
        return self._esc(f"[{number}/{self._total}] {step:<{self._width}}")

    def _pad(self, step: str) -> int:
        return len(f"[{self._numbers.get(step, self._index)}/{self._total}] {step:<{self._width}}")

    def _stop_live(self, step: str | None = None) -> None:
        """Drop ``step``'s bar (all bars when None); the display stops with the last."""
        if self._progress is None:
            return
        for name in ([step] if step is not None else list(self._tasks)):
            task = self._tasks.pop(name, None)
            if task is not None:
                self._progress.remove_task(task)
        if not self._tasks:
            self._progress.stop()
            self._progress = None

    # -- hooks -----------------------------------------------------------------

    @hookimpl
    def tinybuild_build_started(self, recipe: str, steps: Sequence[str]) -> None:
        self._total = len(steps)
        self._index = 0
        self._width = max((len(s) for s in steps), default=10)
        self._cached_run = []

    @hookimpl
    def tinybuild_step_cached(self, step: str, step_type: str, digest: str, source: str,
                              transfer: Mapping[str, Any] | None) -> None:
        self._number(step)
        if source == "remote":  # always shown: a pull is news, a local hit is not
            detail = f" ({_bytes(transfer['bytes'])} in {_brief(transfer['seconds'])})" if self.verbose and transfer else ""
            self._line(f"{self._head(step)} {self._style('cyan', 'pulled')} {digest[:12]}{detail}")
        elif self.verbose:
            self._line(f"{self._head(step)} {self._style('dim', 'cached')} {digest[:12]}")
        else:
            self._cached_run.append((self._index, step, digest))

    @hookimpl
    def tinybuild_step_started(self, step: str, step_type: str, reasons: Sequence[str]) -> None:
        self._number(step)
        why = "; ".join(reasons) if reasons else "no cache entry"
        self._line(f"{self._head(step)} {self._style('bold', 'run')} {self._esc(f'[{step_type}]')} ({self._esc(why)})")
        self._last_plain[step] = 0.0
        if self.live:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            if self._progress is None:  # one display; a bar per running step
                self._progress = Progress(SpinnerColumn(), TextColumn("{task.fields[step]}"), BarColumn(),
                                          TextColumn("{task.description}"), TimeElapsedColumn(),
                                          console=self.console, transient=True)
                self._progress.start()
            self._tasks[step] = self._progress.add_task("", total=None, step=step)

    @hookimpl
    def tinybuild_step_progress(self, step: str, completed: float, total: float | None, description: str) -> None:
        if self._progress is not None and step in self._tasks:
            self._progress.update(self._tasks[step], completed=completed, total=total, description=description)
            return
        now = time.monotonic()
        done = total is not None and completed >= total
        if done or now - self._last_plain.get(step, 0.0) >= self.PLAIN_PROGRESS_INTERVAL:
            self._last_plain[step] = now
            count = f"{completed:g}/{total:g} " if total is not None else ""
            self._line(f"{'':>{self._pad(step)}} {count}{self._esc(description)}".rstrip())

    #: indent of the lines of a multi-line log message (a table): as small as an
    #: error's, so a block laid out for the terminal's width still fits
    BLOCK_INDENT = 4

    @hookimpl
    def tinybuild_step_log(self, step: str, message: str) -> None:
        if "\n" in message:
            for line in message.splitlines():
                self._line(f"{'':>{self.BLOCK_INDENT}}{self._esc(line)}".rstrip())
            return
        self._line(f"{'':>{self._pad(step)}} {self._esc(message)}")

    @hookimpl
    def tinybuild_step_finished(self, step: str, step_type: str, digest: str, seconds: float, metrics: Mapping[str, Any]) -> None:
        self._stop_live(step)
        self._line(f"{self._head(step)} {self._style('green', 'built')} in {_short(seconds)} → {digest[:12]}")

    @hookimpl
    def tinybuild_step_failed(self, step: str, step_type: str, error: str, skipped: Sequence[str]) -> None:
        self._stop_live(step)
        self._line(f"{self._head(step)} {self._style('bold red', 'FAILED')} {self._esc(f'[{step_type}]')}")
        for line in error.splitlines():
            self._line(f"    {self._esc(line)}")
        if skipped:
            self._line(f"    skipped because of it: {self._esc(', '.join(skipped))}")

    @hookimpl
    def tinybuild_build_finished(self, recipe: str, summary: Mapping[str, Any]) -> None:
        self._stop_live()
        parts = [f"{len(summary['built'])} built", f"{len(summary['cached'])} cached"]
        remote = summary.get("remote")
        if remote is not None:
            parts += [f"{len(summary.get('pulled', ()))} pulled", f"{remote['pushed']} pushed"]
        if summary["failed"]:
            parts.append(self._style("red", f"{len(summary['failed'])} failed"))
        if summary["skipped"]:
            parts.append(f"{len(summary['skipped'])} skipped")
        code = summary["exit_code"]
        status = self._style("green", "ok") if code == 0 else self._style("red", f"exit {code}")
        self._line(f"{status}: {', '.join(parts)} in {_short(summary['seconds'])}")
        if remote is not None and self.verbose:
            self._line(f"remote cache {self._esc(remote['url'])}: {_bytes(remote['bytes_down'])} down, "
                       f"{_bytes(remote['bytes_up'])} up, {_brief(remote['seconds'])}"
                       + (" (disabled after a failure)" if remote.get("disabled") else "")
                       + ("" if remote.get("signed") else " (entries unsigned: no TINYBUILD_REMOTE_KEY)"))
