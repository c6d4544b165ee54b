"""Build output: a live rich display on a terminal, plain lines in CI logs.

The reporter is itself a plugin (it implements the lifecycle hooks), so a
third-party reporter sees exactly the same events. Output goes to stderr
(through a private duplicate: while a step runs, descriptors 1 and 2 point at
its log file, see :mod:`tinybuild.capture`); stdout stays free for
machine-readable output (``graph``, ``schema``).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from rich.markup import escape as _e

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


class ConsoleReporter:
    """Prints build progress. ``live`` uses rich's progress display."""

    PLAIN_PROGRESS_INTERVAL = 2.0  # seconds between progress lines in logs

    def __init__(self, live: bool | None = None, verbose: bool = False, stream: Any = None):
        from rich.console import Console

        self.console = Console(file=stream or private_stderr(), highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal if live is None else live
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

    def _line(self, text: str) -> None:
        if self._cached_run:
            self._flush_cached()
        self._print(text)

    def _print(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            self.console.print(text)

    def _flush_cached(self) -> None:
        """One line for a run of consecutive local cache hits: a line per
        cached step was a fifth of a 5,000-step rebuild, and says nothing
        the summary does not (``-v`` lists each)."""
        run, self._cached_run = self._cached_run, []
        if len(run) == 1:
            index, step, digest = run[0]
            self._print(f"{self._head(step, index)} [dim]cached[/dim] {digest[:12]}")
        else:
            self._print(f"[{run[0][0]}-{run[-1][0]}/{self._total}] [dim]{len(run)} steps cached[/dim] "
                        f"({_e(run[0][1])} … {_e(run[-1][1])}; -v lists each)")

    def _number(self, step: str) -> None:
        self._index += 1
        self._numbers[step] = self._index

    def _head(self, step: str, index: int | None = None) -> str:
        number = self._numbers.get(step, self._index) if index is None else index
        return _e(f"[{number}/{self._total}] {step:<{self._width}}")

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
            self._line(f"{self._head(step)} [cyan]pulled[/cyan] {digest[:12]}{detail}")
        elif self.verbose:
            self._line(f"{self._head(step)} [dim]cached[/dim] {digest[:12]}")
        else:
            self._cached_run.append((self._index, step, digest))

    @hookimpl
    def tinybuild_step_started(self, step: str, step_type: str, reasons: Sequence[str]) -> None:
        self._number(step)
        why = "; ".join(reasons) if reasons else "no cache entry"
        self._line(f"{self._head(step)} [bold]run[/bold] {_e(f'[{step_type}]')} ({_e(why)})")
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
            self._line(f"{'':>{self._pad(step)}} {count}{_e(description)}".rstrip())

    #: indent of the lines of a multi-line log message (a table): as small as an
    #: error's, so a block laid out for the terminal's width still fits
    BLOCK_INDENT = 4

    @hookimpl
    def tinybuild_step_log(self, step: str, message: str) -> None:
        if "\n" in message:
            for line in message.splitlines():
                self._line(f"{'':>{self.BLOCK_INDENT}}{_e(line)}".rstrip())
            return
        self._line(f"{'':>{self._pad(step)}} {_e(message)}")

    @hookimpl
    def tinybuild_step_finished(self, step: str, step_type: str, digest: str, seconds: float, metrics: Mapping[str, Any]) -> None:
        self._stop_live(step)
        self._line(f"{self._head(step)} [green]built[/green] in {_short(seconds)} → {digest[:12]}")

    @hookimpl
    def tinybuild_step_failed(self, step: str, step_type: str, error: str, skipped: Sequence[str]) -> None:
        self._stop_live(step)
        self._line(f"{self._head(step)} [bold red]FAILED[/bold red] {_e(f'[{step_type}]')}")
        for line in error.splitlines():
            self._line(f"    {_e(line)}")
        if skipped:
            self._line(f"    skipped because of it: {_e(', '.join(skipped))}")

    @hookimpl
    def tinybuild_build_finished(self, recipe: str, summary: Mapping[str, Any]) -> None:
        self._stop_live()
        parts = [f"{len(summary['built'])} built", f"{len(summary['cached'])} cached"]
        remote = summary.get("remote")
        if remote is not None:
            parts += [f"{len(summary.get('pulled', ()))} pulled", f"{remote['pushed']} pushed"]
        if summary["failed"]:
            parts.append(f"[red]{len(summary['failed'])} failed[/red]")
        if summary["skipped"]:
            parts.append(f"{len(summary['skipped'])} skipped")
        status = "[green]ok[/green]" if summary["exit_code"] == 0 else f"[red]exit {summary['exit_code']}[/red]"
        self._line(f"{status}: {', '.join(parts)} in {_short(summary['seconds'])}")
        if remote is not None and self.verbose:
            self._line(f"remote cache {_e(remote['url'])}: {_bytes(remote['bytes_down'])} down, "
                       f"{_bytes(remote['bytes_up'])} up, {_brief(remote['seconds'])}"
                       + (" (disabled after a failure)" if remote.get("disabled") else "")
                       + ("" if remote.get("signed") else " (entries unsigned: no TINYBUILD_REMOTE_KEY)"))
