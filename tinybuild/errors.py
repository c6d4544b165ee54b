"""Errors the core raises, each carrying the exit code the CLI maps it to.

Exit codes: 0 built · 1 a step failed · 2 recipe or usage error · 3 a budget
gate failed. Only :mod:`tinybuild.cli` turns these into exit codes; everything
else raises.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the fast path
if TYPE_CHECKING:
    from typing import Iterable


class TinybuildError(Exception):
    """Base class: a message meant for the user, never a traceback."""

    exit_code = 1


class UsageError(TinybuildError):
    exit_code = 2


class PluginError(TinybuildError):
    """A plugin failed to load or declared something inconsistent."""

    exit_code = 2


class CacheError(TinybuildError):
    exit_code = 1


class Problem(namedtuple("Problem", "key message hint line column", defaults=("", None, None))):
    """One thing wrong with a recipe, located by a dotted key path:
    ``key``, ``message``, ``hint`` (the fix, may be empty), ``line`` and
    ``column`` (where the TOML parser knows them).

    A named tuple from ``collections``, not a dataclass or ``typing.NamedTuple``:
    the CLI imports this module on the no-op fast path, where ``dataclasses``
    (``inspect``, ``ast``) and ``typing`` cost more than the rest of the check."""

    __slots__ = ()


class RecipeError(TinybuildError):
    """One or more problems in a recipe file; all are reported at once."""

    exit_code = 2

    def __init__(self, file: str, problems: Iterable[Problem]):
        self.file = file
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for p in self.problems:
            where = self.file
            if p.line is not None:
                where += f":{p.line}" + (f":{p.column}" if p.column is not None else "")
            head = f"{where}: {p.key}: {p.message}" if p.key else f"{where}: {p.message}"
            lines.append(head)
            if p.hint:
                lines.append(f"  fix: {p.hint}")
        return "\n".join(lines)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' — did you mean 'x'?' when a close match exists, else ''."""
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else ""
