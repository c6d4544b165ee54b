"""Derived attributes shared by the real and the recorded recipe objects.

:mod:`tinybuild.configcache` stands in for :class:`tinybuild.recipe.Recipe`
and :class:`tinybuild.resolve.ResolvedStep` without importing pydantic; both
kinds must answer ``dependencies``, ``dir`` and ``lock_path`` identically, so
the answers live here once. Standard library only.
"""

from __future__ import annotations

from pathlib import Path


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
