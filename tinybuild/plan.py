"""What a build would do, and why: each step cached, or to run with reasons.

A step whose inputs are all cached gets its exact key, so the plan knows
for sure whether it is cached. A step downstream of one that must run cannot
know its key yet (early cutoff may still save it: if the upstream rebuild
yields identical bytes, it stays cached); the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .cache import ActionEntry
from .errors import Problem, RecipeError
from .explain import explain
from .hashing import canonical_json
from .keys import MissingInputFile, key_material, stable_metrics, step_input_paths
from .project import Project
from .resolve import ResolvedStep

CACHED = "cached"
RUN = "run"


@dataclass
class PlanItem:
    name: str
    step_type: str
    status: str
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    material: dict[str, Any] | None = None
    entry: ActionEntry | None = None


def _stable_input_metrics(project: Project, step: ResolvedStep, metrics: Mapping[str, Mapping[str, Any]] | None
                          ) -> dict[str, dict[str, Any]] | None:
    """The metrics of ``step``'s inputs minus those their step types declare
    volatile; None unless the step type is keyed on them (the only reader)."""
    if metrics is None or not step.step_type.uses_input_metrics:
        return None
    out = {}
    for name in step.inputs:
        if name not in metrics:
            continue
        producer = project.steps.get(name)
        volatile = producer.step_type.volatile_metrics if producer is not None else ()
        out[name] = stable_metrics(metrics[name] or {}, volatile)
    return out


def material_for(project: Project, step: ResolvedStep, digests: Mapping[str, str],
                 metrics: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Key material of ``step`` given its dependencies' output digests.

    Raises :class:`RecipeError` if a file named in the recipe is missing: a
    plan-time error, so nothing runs on a recipe that cannot finish.
    """
    return keyed_material(project, step, digests, metrics)[0]


def keyed_material(project: Project, step: ResolvedStep, digests: Mapping[str, str],
                   metrics: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[dict[str, Any], str]:
    """(key material, key) of ``step``, computed once per build: the plan and
    then the executor ask for the same step with the same dependency digests,
    and the second answer comes from ``project.keys`` (see :class:`KeyMemo`)."""
    stable = _stable_input_metrics(project, step, metrics)
    ident = (step.name, tuple(digests.get(d) for d in step.dependencies),
             canonical_json(stable) if stable is not None else None)
    digest = project.cache.memo.digest
    hit = project.keys.lookup(ident, digest)
    if hit is not None:
        return hit
    try:  # digested before the material: an edit in between makes the entry stale, never wrong
        files: tuple[tuple[Path, str], ...] | None = tuple((path, digest(path)) for path in step_input_paths(step))
    except OSError:
        files = None  # unreadable: the material below reports it; never reused
    material = _compute_material(project, step, digests, stable)
    return material, project.keys.store(ident, material, files)


def _compute_material(project: Project, step: ResolvedStep, digests: Mapping[str, str],
                      stable_input_metrics: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    try:
        return key_material(
            step,
            input_digests=digests,
            dataset_digest=digests.get(step.dataset) if step.dataset else None,
            seed=project.recipe.meta.seed,
            salt=project.recipe.meta.salt,
            digest=project.cache.memo.digest,
            passes=project.registry.passes,
            recipe_name=project.recipe.meta.name,
            target=project.recipe.target.model_dump(exclude_none=True),
            input_metrics=stable_input_metrics,
        )
    except MissingInputFile as exc:
        from .recipe import note_empty_vars  # pydantic, but only on this error's path

        raise RecipeError(str(project.recipe.path), note_empty_vars([Problem(
            f"{step.key}.{exc.field}", f"{exc.problem}: {exc.path}",
            "fix the path (relative paths resolve against the recipe's folder) or set the ${VAR} it uses",
        )], getattr(project.recipe, "empty_vars", {}))) from None


def run_reasons(material: Mapping[str, Any], step: ResolvedStep, lock: Mapping[str, Any], forced: bool) -> list[str]:
    old = lock.get(step.name)
    reasons = ["forced"] if forced else []
    if old is None:
        return reasons + ["new step"]
    try:
        diff = explain(material, list(step.inputs), old.get("material"), old.get("input_steps", []))
    except (AttributeError, TypeError, ValueError, KeyError):  # material of another shape (edited by hand)
        diff = ["the lock file's entry for it is not one tinybuild wrote"]
    return reasons + (diff or ([] if forced else ["no cache entry"]))


def make_plan(project: Project, selected: Sequence[str], lock: Mapping[str, Any], force: Sequence[str] = (),
              known: Mapping[str, Any] | None = None) -> list[PlanItem]:
    """``known``: artifacts of steps outside ``selected`` already known to be
    cached (a delta rebuild's untouched steps), by step name."""
    items: dict[str, PlanItem] = {}
    digests: dict[str, str] = {name: a.digest for name, a in (known or {}).items()}
    metrics: dict[str, Mapping[str, Any]] = {name: a.metrics for name, a in (known or {}).items()}
    for name in selected:
        step = project.steps[name]
        pending = [d for d in step.dependencies if d not in digests]
        forced = name in force
        if pending:
            # Use the last-built digests for pending inputs so only this step's own changes show.
            old = lock.get(name, {}).get("material", {})
            guess = dict(digests)
            old_inputs = dict(zip(lock.get(name, {}).get("input_steps", []), old.get("inputs", [])))
            for dep in pending:
                guess[dep] = old_inputs.get(dep) or (old.get("dataset") if dep == step.dataset else None) or "pending"
            material = material_for(project, step, guess)
            # pending inputs' metrics are unknown until they run: "input metrics changed" would be a guess
            own = [r for r in run_reasons(material, step, lock, forced) if r not in ("no cache entry", "input metrics changed")]
            upstream = [] if "new step" in own else [f"upstream {dep} reruns" for dep in pending]
            items[name] = PlanItem(name, step.step_type.name, RUN, upstream + own)
            continue
        material, key = keyed_material(project, step, digests, metrics)
        entry = None if forced else project.cache.get_action(key, step.step_type.produces)
        remote = None if forced or entry is not None or project.remote is None else project.remote.peek(key, step.step_type.produces)
        if entry is not None or remote is not None:
            found = entry or remote
            digests[name] = found.digest
            metrics[name] = found.metrics
            items[name] = PlanItem(name, step.step_type.name, CACHED, [] if entry else ["in remote cache"], key, material, found)
        else:
            items[name] = PlanItem(name, step.step_type.name, RUN, run_reasons(material, step, lock, forced), key, material)
    return [items[n] for n in selected]


def plan_lines(plan: Sequence[PlanItem]) -> list[str]:
    """Plain-text rendering, one line per step (used by ``tinybuild plan``)."""
    width = max((len(i.name) for i in plan), default=0)
    lines = []
    for item in plan:
        status = "cached" if item.status == CACHED else "run   "
        why = f"  ({'; '.join(item.reasons)})" if item.reasons else ""
        lines.append(f"{status}  {item.name:<{width}}  [{item.step_type}]{why}")
    return lines

