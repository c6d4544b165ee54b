"""The concrete :class:`tinybuild.api.StepContext` handed to a running step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .api import Artifact, GraphPass


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None


@dataclass
class RunContext:
    step: str
    out_dir: Path
    seed: int
    recipe_dir: Path
    dataset: Artifact | None = None
    recipe_name: str = ""
    target: Mapping[str, Any] = field(default_factory=dict)
    passes: Mapping[str, GraphPass] = field(default_factory=dict)
    on_progress: Callable[[str, float, float | None, str], None] = _ignore
    on_log: Callable[[str, str], None] = _ignore

    def progress(self, completed: float, total: float | None = None, description: str = "") -> None:
        self.on_progress(self.step, completed, total, description)

    def log(self, message: str) -> None:
        self.on_log(self.step, message)

    def graph_passes(self) -> Mapping[str, GraphPass]:
        return self.passes
