"""Derived attributes shared by the real and the recorded recipe objects.

:mod:`tinybuild.configcache` stands in for :class:`tinybuild.recipe.Recipe`
and :class:`tinybuild.resolve.ResolvedStep` without importing pydantic; both
kinds must answer ``dependencies``, ``dir`` and ``lock_path`` identically, so
the answers live here once, with what a step name may look like (the
executor checks names from a lock file without importing the recipe module).
Standard library only.
"""

from __future__ import annotations

import re
from pathlib import Path

#: a step name (used with ``fullmatch``: ``$`` would accept a trailing newline)
STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: the recipe's top-level sections
TOP_LEVEL_KEYS = ("recipe", "target", "dataset", "model", "steps")
#: keys of a step table that belong to the core, not to the plugin's params
CORE_STEP_KEYS = ("use", "input", "inputs", "matrix")
#: a UTF-8 byte order mark, which Windows editors may write at the start of a recipe
BOM = "\ufeff"


class StepDependencies:
    """``dependencies`` from ``inputs`` and ``dataset``."""

    inputs: tuple[str, ...]
    dataset: str | None

    @property
    def dependencies(self) -> tuple[str, ...]:
        """The steps this one waits for: its inputs, then the dataset it reads."""
        deps = list(self.inputs)
        if self.dataset and self.dataset not in deps:
            deps.append(self.dataset)
        return tuple(deps)


class RecipeLocation:
    """``dir`` and ``lock_path`` from ``path``."""

    path: Path

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        """``mnist_cnn.toml`` → ``mnist_cnn.lock.json``, beside it."""
        return self.path.with_name(self.path.stem + ".lock.json")
