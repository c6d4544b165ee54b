"""The TOML parser every reading of a recipe goes through.

It is tomli (2.1 or 2.2, see ``pyproject.toml``): the parser the standard
library's ``tomllib`` was taken from (Python 3.11's is tomli 2.0.1), so a
recipe means exactly what TOML 1.0 says, as before; tomli 2.3 and later parse
TOML 1.1, which TOML 1.0 tools (editors, other readers of the recipe) reject.
Its wheels are compiled with mypyc and parse 2-3x faster than ``tomllib``
(10 ms against 17-33 ms for a 1,000-step recipe): a cost every ``plan``,
normal build and delta rebuild pays. Where no compiled wheel exists, pip
installs the pure-Python one, which gives the same results at ``tomllib``'s speed.

The compiled parser nests inline arrays and tables by C recursion, bounded
only by the recursion limit read when tomli was imported: on a small C stack
(a thread's, ``ulimit -s 512``) or under a raised recursion limit, a hostile
document nested a thousand levels deep crashes the interpreter instead of
raising. So a document that *could* nest deeper than :data:`SAFE_NESTING`
goes to ``tomllib``, whose pure-Python recursion raises ``RecursionError``
(a clear error in :mod:`tinybuild.recipe`). The bound counts every ``[`` and
``{`` but those opening a header line: a recipe needs a few per step at most.
"""

from __future__ import annotations

import re
from typing import Any

import tomli

#: Deepest inline nesting the compiled parser is trusted with (recipes allow
#: 32, ``tinybuild.steptables.MAX_DEPTH``; a 256 KiB C stack held about 500 levels).
SAFE_NESTING = 200
#: A line that is a header, ``[a.b]`` or ``[[a]]``, with no quote, ``#``, brace or
#: bracket inside or after it: wherever it stands, its brackets are balanced.
#: Outside a string it can only be those tokens (nothing on it can start a
#: string or a comment that would hide its ``]``); inside a multi-line string
#: its brackets are text. Headers with quoted keys or comments are counted.
_HEADER_LINE = re.compile(r"""^[ \t]*(?:\[[^\[\]{}"'#\r\n]*\]|\[\[[^\[\]{}"'#\r\n]*\]\])[ \t]*\r?$""", re.M)


def could_nest_deeper(text: str, limit: int = SAFE_NESTING) -> bool:
    """Whether ``text`` might nest inline arrays or tables deeper than ``limit``:
    an upper bound from counting brackets (those in strings and comments
    included), less the two a header line can open and close itself."""
    openers = text.count("[") + text.count("{")
    if openers <= limit:
        return False
    headers = sum(m.group(0).count("[") for m in _HEADER_LINE.finditer(text))
    return openers - headers + 2 > limit  # + 2: the depth within one header-like line


class TOMLDecodeError(ValueError):
    """Invalid TOML, from either parser: ``msg``, and ``lineno``/``colno``
    where the parser gave them (``tomllib`` of Python < 3.14 only puts the
    position in the message)."""

    def __init__(self, error: ValueError):
        super().__init__(str(error))
        self.msg: str | None = getattr(error, "msg", None)
        self.lineno: int | None = getattr(error, "lineno", None)
        self.colno: int | None = getattr(error, "colno", None)


def loads(text: str) -> dict[str, Any]:
    """``text`` as TOML 1.0: tomli, or ``tomllib`` where deep nesting could
    crash the compiled parser. Raises :class:`TOMLDecodeError`,
    ``RecursionError``, or ``ValueError`` (an integer over Python's digit limit)."""
    if could_nest_deeper(text):
        import tomllib as parser
    else:
        parser = tomli
    try:
        return parser.loads(text)
    except parser.TOMLDecodeError as exc:
        raise TOMLDecodeError(exc) from None
