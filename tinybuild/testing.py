"""Helpers for testing a plugin's step types without a recipe or a cache.

``run_step`` validates params exactly as the recipe loader does (relative
paths resolved against ``recipe_dir``), runs the step in a fresh directory
and returns its output as an :class:`~tinybuild.api.Artifact`, so tests can
chain steps: ``model = run_step(...); pruned = run_step(prune, [model], ...)``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .api import Artifact, GraphPass, StepType
from .context import RunContext
from .hashing import artifact_digest, file_digest, list_files


def artifact_from_dir(step: str, kind: str, path: Path, metrics: Mapping[str, Any] | None = None) -> Artifact:
    """Wrap a directory of files as an artifact (hashing every file)."""
    path = Path(path)
    files = {rel: file_digest(path / rel) for rel in list_files(path)}
    return Artifact(step=step, kind=kind, path=path, files=files,
                    digest=artifact_digest(kind, files), metrics=dict(metrics or {}))


def run_step(
    step_type: StepType,
    inputs: Sequence[Artifact] = (),
    params: Mapping[str, Any] | None = None,
    *,
    out_dir: Path | None = None,
    step: str | None = None,
    dataset: Artifact | None = None,
    seed: int = 0,
    recipe_dir: Path | None = None,
    target: Mapping[str, Any] | None = None,
    passes: Mapping[str, GraphPass] | None = None,
    progress: list | None = None,
    recipe_name: str = "test",
) -> Artifact:
    """Run ``step_type`` once and return its output artifact."""
    recipe_dir = Path(recipe_dir or Path.cwd())
    validated = step_type.params.model_validate(dict(params or {}), context={"base_dir": recipe_dir})
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"tb-{step_type.name}-"))
    out.mkdir(parents=True, exist_ok=True)
    name = step or step_type.name
    ctx = RunContext(
        step=name, out_dir=out, seed=seed, recipe_dir=recipe_dir, dataset=dataset, recipe_name=recipe_name,
        target=dict(target or {}), passes=dict(passes or {}),
        on_progress=(lambda s, c, t, d: progress.append((c, t, d))) if progress is not None else (lambda *a: None),
    )
    metrics = step_type.run(ctx, list(inputs), validated) or {}
    return artifact_from_dir(name, step_type.produces, out, metrics)
