"""The TOML parser every reading of a recipe goes through.

It is tomli 2.2.1, pinned in ``pyproject.toml``: the parser the standard
library's ``tomllib`` was taken from (Python 3.11's is tomli 2.0.1), so a
recipe means exactly what TOML 1.0 says, as before; tomli 2.3 and later parse
TOML 1.1, which TOML 1.0 tools (editors, other readers of the recipe) reject.
Its wheels are compiled with mypyc and parse about 3x faster than ``tomllib``
(10 ms against 33 ms for a 1,000-step recipe): a cost every ``plan``, normal
build and delta rebuild pays. Where no compiled wheel exists, pip installs
the pure-Python one, which gives the same results at ``tomllib``'s speed.
Nesting deeper than tomli's limit raises ``RecursionError``, as ``tomllib``
does when the interpreter's stack runs out.
"""

from tomli import TOMLDecodeError, loads

__all__ = ["TOMLDecodeError", "loads"]
