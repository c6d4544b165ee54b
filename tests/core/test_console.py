"""The console reporter: plain lines without rich, live output through rich.

Plain mode (CI logs, ``--plain``, any non-terminal stderr) writes the lines
itself so that a build that prints them never imports rich; live mode keeps
rich's markup and progress bars. The choice for ``live=None`` must stay
rich's own (``Console.is_terminal``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from tinybuild.console import ConsoleReporter
from toyenv import BUILTIN_PLUGINS, HERE, TOY_RECIPE

#: user text that rich's markup, emoji codes or escaping could alter
TRICKY = ["[x] [/x] [bold]not bold[/bold]", "a\\[b] back\\slash", "x:smile:y", "ends with\\"]


def drive(reporter: ConsoleReporter, texts: list[str], progress: bool = True) -> str:
    """One build's hook calls: cached runs, a step that logs, a pull, a failure, the summary."""
    reporter.tinybuild_build_started("r.toml", ["data", "model", "train", "int8", "pull", "bad", "after"])
    reporter.tinybuild_step_cached("data", "toy-data", "a" * 64, "local", None)
    reporter.tinybuild_step_cached("model", "toy-model", "b" * 64, "local", None)
    reporter.tinybuild_step_started("train", "toy-train", [f"note changed: {t}" for t in texts[:2]])
    if progress:  # live mode shows these as a bar, not as lines
        reporter.tinybuild_step_progress("train", 3, 3, texts[0])
    for text in texts:
        reporter.tinybuild_step_log("train", text)
    reporter.tinybuild_step_log("train", "table\n" + "\n".join(f"  {t}" for t in texts))
    reporter.tinybuild_step_finished("train", "toy-train", "c" * 64, 1.25, {})
    reporter.tinybuild_step_cached("int8", "toy-convert", "d" * 64, "local", None)
    reporter.tinybuild_step_cached("pull", "toy-convert", "e" * 64, "remote", {"bytes": 12_345, "seconds": 0.25})
    reporter.tinybuild_step_started("bad", "toy-report", [])
    reporter.tinybuild_step_failed("bad", "toy-report", "boom\n" + texts[-1], ["after"])
    reporter.tinybuild_build_finished("r.toml", {
        "built": ["train"], "cached": ["data", "model", "int8"], "pulled": ["pull"], "failed": ["bad"],
        "skipped": ["after"], "exit_code": 1, "seconds": 75.5,
        "remote": {"pushed": 1, "url": "s3://b/[x]", "bytes_down": 5, "bytes_up": 12_000_000, "seconds": 2}})
    return reporter._stream.getvalue()


def test_plain_mode_prints_the_users_text_verbatim():
    stream = io.StringIO()
    reporter = ConsoleReporter(live=False, verbose=True, stream=stream)
    assert reporter.console is None  # no rich Console is even made
    t = TRICKY
    assert drive(reporter, t).splitlines() == [
        "[1/7] data  cached aaaaaaaaaaaa",
        "[2/7] model cached bbbbbbbbbbbb",
        f"[3/7] train run [toy-train] (note changed: {t[0]}; note changed: {t[1]})",
        f"            3/3 {t[0]}",
        *(f"            {text}" for text in t),
        "    table",
        *(f"      {text}" for text in t),
        "[3/7] train built in 1.2s → cccccccccccc",
        "[4/7] int8  cached dddddddddddd",
        "[5/7] pull  pulled eeeeeeeeeeee (12.3 KB in 250 ms)",
        "[6/7] bad   run [toy-report] (no cache entry)",
        "[6/7] bad   FAILED [toy-report]",
        "    boom",
        f"    {t[-1]}",
        "    skipped because of it: after",
        "exit 1: 1 built, 3 cached, 1 pulled, 1 pushed, 1 failed, 1 skipped in 1m15.5s",
        "remote cache s3://b/[x]: 5 B down, 12.0 MB up, 2.0s (entries unsigned: no TINYBUILD_REMOTE_KEY)",
    ]


def test_plain_mode_joins_a_run_of_cache_hits_into_one_line():
    reporter = ConsoleReporter(live=False, stream=io.StringIO())
    reporter.tinybuild_build_started("r.toml", ["a", "b", "c"])
    for step in "abc":
        reporter.tinybuild_step_cached(step, "t", step * 64, "local", None)
    reporter.tinybuild_build_finished("r.toml", {"built": [], "cached": list("abc"), "failed": [], "skipped": [],
                                                 "exit_code": 0, "seconds": 0.1})
    assert reporter._stream.getvalue() == "[1-3/3] 3 steps cached (a … c; -v lists each)\nok: 0 built, 3 cached in 0.1s\n"


@pytest.mark.parametrize("verbose", [False, True])
def test_live_mode_renders_through_rich_to_the_same_text(verbose):
    """Live mode still composes rich markup; on a non-terminal stream rich
    renders it to exactly the plain lines (the user's brackets and
    backslashes included; rich's emoji codes and a trailing backslash aside,
    which rich alters)."""
    from rich.console import Console

    texts = [t for t in TRICKY if ":" not in t and not t.endswith("\\")] + ["ü … → 50% [####]", "  lead"]
    live = ConsoleReporter(live=True, verbose=verbose, stream=io.StringIO())
    assert isinstance(live.console, Console)
    live.tinybuild_build_started("r.toml", ["a"])
    live.tinybuild_step_started("a", "t", [])
    assert live._progress is not None  # rich's progress display runs while a step does
    live.tinybuild_step_failed("a", "t", "x", [])
    assert live._progress is None
    live._stream.seek(0), live._stream.truncate()
    plain = ConsoleReporter(live=False, verbose=verbose, stream=io.StringIO())
    shown = drive(live, texts, progress=False).replace("\n\n", "\n")  # a stopped bar leaves a blank line off a TTY
    assert shown == drive(plain, texts, progress=False)


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [False, True, None], ids=["pipe", "tty", "no-isatty"])
@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1"}, {"FORCE_COLOR": ""}, {"TTY_COMPATIBLE": "1"},
                                 {"TTY_COMPATIBLE": "0"}, {"TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"},
                                 {"TTY_INTERACTIVE": "1"}], ids=str)
def test_live_none_decides_as_rich_does(monkeypatch, tty, env):
    """``live=None`` is live exactly where rich calls the stream a terminal;
    a plain stream with no variable forcing a terminal is decided without rich."""
    from rich.console import Console

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stream = io.StringIO() if tty is None else _Stream(tty)
    reporter = ConsoleReporter(live=None, stream=stream)
    assert reporter.live == Console(file=stream).is_terminal
    if not tty and not env.get("FORCE_COLOR") and env.get("TTY_COMPATIBLE") != "1":
        assert reporter.live is False and reporter.console is None


def test_a_reader_gone_away_ends_the_build_as_rich_did():
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    with pytest.raises(SystemExit) as stopped:
        ConsoleReporter(live=False, stream=Closed())._line("x")
    assert stopped.value.code == 1


NO_RICH = """
import json, sys
from pathlib import Path
from tinybuild.cli import main
recipe, cache = sys.argv[1:3]
path = Path(recipe)
codes = [main(["build", recipe, "--plain", "--cache-dir", cache])]  # every step runs
path.write_text(path.read_text().replace("epochs = 3", 'epochs = 3\\nnote = "one"'))
codes.append(main(["build", recipe, "--plain", "--cache-dir", cache]))  # one step table edited
path.write_text(path.read_text().replace('note = "one"', 'note = "two"'))
codes.append(main(["build", recipe, "--cache-dir", cache]))  # no --plain: stderr is a pipe
rich = sorted(m for m in sys.modules if m.split(".")[0] == "rich")
print(json.dumps({"codes": codes, "rich": rich}), file=sys.stderr)
"""


def test_a_plain_build_imports_no_rich(tmp_path):
    (tmp_path / "numbers.txt").write_text("1 2 3\n")
    (tmp_path / "recipe.toml").write_text(TOY_RECIPE)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TINYBUILD_") and k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update({"TINYBUILD_PLUGINS": "toy=toy_quiet", "PYTHONPATH": str(HERE),
                "TINYBUILD_DISABLE_PLUGINS": ",".join(BUILTIN_PLUGINS)})
    proc = subprocess.run([sys.executable, "-c", NO_RICH, str(tmp_path / "recipe.toml"), str(tmp_path / "cache")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"codes": [0, 0, 0], "rich": []}, proc.stderr
    built = [line for line in proc.stderr.splitlines() if " built in " in line]
    assert len(built) == 6 + 1 + 1, proc.stderr  # the reporter printed: the 6 steps, then train twice
    assert all(line.startswith("[") and "[/" not in line for line in built)
