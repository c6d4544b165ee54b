"""Helpers for testing a plugin's step types without a recipe or a cache.

``run_step`` validates params exactly as the recipe loader does (relative
paths resolved against ``recipe_dir``), runs the step in a fresh directory
and returns its output as an :class:`~tinybuild.api.Artifact`, so tests can
chain steps: ``model = run_step(...); pruned = run_step(prune, [model], ...)``.

``step_key`` computes the cache key a build would give the step (same key
material, same digest), and ``key_reasons`` the reasons ``tinybuild plan``
would print between two versions of its params, so a test can check that a
param which changes the output changes the key (and one that does not, does
not). ``params_problems`` returns the recipe errors bad params would give.

The pytest fixtures built on these live in :mod:`tinybuild.pytest_plugin`.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .api import Artifact, GraphPass, StepType, StepView
from .context import RunContext
from .errors import Problem
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


def params_problems(step_type: StepType, params: Mapping[str, Any], *, recipe_dir: Path | None = None,
                    key: str = "steps.test", registry: Any = None,
                    inputs: Sequence[StepView] | None = None) -> list[Problem]:
    """The problems (dotted key, message, hint) the recipe loader reports for
    these params of ``step_type``; empty when they are valid. With a
    ``registry`` the step type's plan-time ``check`` runs too; with ``inputs``
    (one :class:`StepView` per input step) its ``check_inputs``."""
    from pydantic import ValidationError

    from .recipe import validation_problems

    try:
        validated = step_type.params.model_validate(dict(params), context={"base_dir": Path(recipe_dir or Path.cwd())})
    except ValidationError as exc:
        return validation_problems(exc, key, step_type.params)
    found = []
    if registry is not None and step_type.check is not None:
        found += list(step_type.check(validated, registry) or ())
    if inputs is not None and step_type.check_inputs is not None:
        found += list(step_type.check_inputs(validated, tuple(inputs)) or ())
    return [Problem(key if not p.key else f"{key}{p.key}" if p.key.startswith("[") else f"{key}.{p.key}",
                    p.message, p.hint) for p in found]


def _key_material(step_type: StepType, params: Mapping[str, Any], inputs: Sequence[Artifact], dataset: Artifact | None,
                  seed: int, recipe_dir: Path | None, passes: Mapping[str, GraphPass] | None, step: str | None,
                  target: Mapping[str, Any] | None, recipe_name: str) -> dict[str, Any]:
    from .keys import key_material
    from .recipe import StepSpec
    from .resolve import ResolvedStep

    recipe_dir = Path(recipe_dir or Path.cwd())
    validated = step_type.params.model_validate(dict(params), context={"base_dir": recipe_dir})
    name = step or step_type.name
    names = tuple(a.step for a in inputs)
    spec = StepSpec(name, f"steps.{name}", step_type.name, names, "inputs", dict(params))
    resolved = ResolvedStep(name, spec.key, spec, step_type, "test", validated, names,
                            "dataset" if dataset is not None else None)
    return key_material(resolved, {a.step: a.digest for a in inputs}, dataset.digest if dataset else None, seed, "",
                        file_digest, dict(passes or {}), recipe_name, target,
                        {a.step: a.metrics for a in inputs})


def step_key(step_type: StepType, params: Mapping[str, Any] | None = None, inputs: Sequence[Artifact] = (), *,
             dataset: Artifact | None = None, seed: int = 0, recipe_dir: Path | None = None,
             passes: Mapping[str, GraphPass] | None = None, step: str | None = None,
             target: Mapping[str, Any] | None = None, recipe_name: str = "test") -> str:
    """The cache key a build computes for this step (nothing is run)."""
    from .keys import step_key as digest

    return digest(_key_material(step_type, dict(params or {}), inputs, dataset, seed, recipe_dir, passes, step,
                                target, recipe_name))


def key_reasons(step_type: StepType, old_params: Mapping[str, Any], new_params: Mapping[str, Any],
                inputs: Sequence[Artifact] = (), *, passes: Mapping[str, GraphPass] | None = None,
                new_passes: Mapping[str, GraphPass] | None = None, **kwargs: Any) -> list[str]:
    """Why ``tinybuild plan`` would rerun the step after its params changed
    from ``old_params`` to ``new_params`` (and its passes from ``passes`` to
    ``new_passes``); empty when the key stays the same."""
    from .explain import explain

    old = _key_material(step_type, dict(old_params), inputs, kwargs.get("dataset"), kwargs.get("seed", 0),
                        kwargs.get("recipe_dir"), passes, kwargs.get("step"), kwargs.get("target"), "test")
    new = _key_material(step_type, dict(new_params), inputs, kwargs.get("dataset"), kwargs.get("seed", 0),
                        kwargs.get("recipe_dir"), new_passes if new_passes is not None else passes,
                        kwargs.get("step"), kwargs.get("target"), "test")
    names = [a.step for a in inputs]
    return explain(new, names, old, names)
