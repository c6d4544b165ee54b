"""Phase 2 of loading: bind each recipe step to its plugin and validate params.

Also resolves each step's inputs (explicit, or the step type's default) and
its implicit dependency on the dataset. Everything is checked before anything
runs, and all problems are reported together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .api import Kind, ParamProblem, StepType, StepView
from .errors import Problem, RecipeError, did_you_mean
from . import matrix
from .shapes import StepDependencies

if TYPE_CHECKING:  # pydantic (through recipe and the params models) is imported only to resolve
    from .api import Params
    from .plugins import Registry
    from .recipe import Recipe, StepSpec


@dataclass(frozen=True)
class ResolvedStep(StepDependencies):
    name: str
    key: str  # dotted path of the step's table in the recipe
    spec: StepSpec
    step_type: StepType
    plugin: str
    params: Params
    inputs: tuple[str, ...]
    dataset: str | None  # name of the dataset step it reads, if any


def resolve_recipe(recipe: Recipe, registry: Registry) -> dict[str, ResolvedStep]:
    problems: list[Problem] = []
    resolved: dict[str, ResolvedStep] = {}
    has_dataset = "dataset" in recipe.steps
    for name, spec in recipe.steps.items():
        step_type = registry.step_type(spec.use)
        if step_type is None:
            hint = registry.missing_hint("step type", spec.use, registry.step_types)
            problems.append(Problem(f"{spec.key}.use", f"unknown step type '{spec.use}'", hint))
            continue
        own: list[Problem] = []
        params = _validate_params(spec, step_type, recipe, own)
        if params is not None and step_type.check is not None:
            params = _check_params(spec, step_type, params, registry, own)
        problems.extend(matrix.locate(spec, own))  # a sweep member's problem names its matrix entry
        inputs = _inputs(spec, step_type, recipe, problems)
        dataset = None
        if step_type.uses_dataset and name != "dataset":
            if has_dataset:
                dataset = "dataset"
            elif not step_type.dataset_optional:
                problems.append(Problem(spec.key, f"step type '{spec.use}' needs the recipe's dataset, but there is no [dataset] section",
                                        "add a [dataset] table (e.g. use = \"idx\")"))
        if params is not None and inputs is not None:
            resolved[name] = ResolvedStep(name, spec.key, spec, step_type, registry.step_plugin[spec.use], params, inputs, dataset)
    problems.extend(matrix.repeats(resolved.values()))  # [1, 1.0]: one value once validated
    problems.extend(_check_inputs(resolved))  # needs every step bound: it looks at the inputs
    if "dataset" in resolved and resolved["dataset"].step_type.produces != Kind.DATASET:
        st = resolved["dataset"].step_type
        problems.append(Problem("dataset.use", f"step type '{st.name}' produces {st.produces}, not a dataset",
                                "use a dataset step type (e.g. \"idx\" or \"npz\")"))
    if problems:  # sweep members share their table: report each problem once
        from .recipe import note_empty_vars

        raise RecipeError(str(recipe.path), note_empty_vars(_once(problems), getattr(recipe, "empty_vars", {})))
    return resolved


def resolve_edited(recipe: Recipe, registry: Registry, spec: StepSpec, inputs: tuple[str, ...], dataset: str | None,
                   steps: dict[str, StepDependencies], problems: list[Problem]) -> ResolvedStep | None:
    """One step of a recipe whose other steps are resolved already (``steps``,
    real or recorded): what a delta rebuild (:mod:`tinybuild.delta`) asks for
    the steps an edit touched, whose inputs and dataset did not change. The
    same checks as :func:`resolve_recipe` make; None with ``problems`` filled
    when one fails."""
    step_type = registry.step_type(spec.use)
    if step_type is None:
        problems.append(Problem(f"{spec.key}.use", f"unknown step type '{spec.use}'"))
        return None
    own: list[Problem] = []
    params = _validate_params(spec, step_type, recipe, own)
    if params is not None and step_type.check is not None:
        params = _check_params(spec, step_type, params, registry, own)
    problems.extend(own)
    if params is None:
        return None
    step = ResolvedStep(spec.name, spec.key, spec, step_type, registry.step_plugin[spec.use], params, inputs, dataset)
    found = _check_inputs({**steps, spec.name: step}, only=(spec.name,))
    problems.extend(found)
    return None if found else step


def _once(problems: list[Problem]) -> list[Problem]:
    """Problems without repeats: the first of those with the same key and
    message (without the combination a sweep member adds) is kept."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        ident = (p.key, p.message.split(", in combination ")[0])
        if ident not in seen:
            seen.add(ident)
            out.append(p)
    return out


def _validate_params(spec: StepSpec, step_type: StepType, recipe: Recipe, problems: list[Problem]) -> Params | None:
    from pydantic import ValidationError

    try:
        return step_type.params.model_validate(spec.raw_params, context={"base_dir": recipe.dir})
    except ValidationError as exc:
        from .recipe import validation_problems  # builds the recipe's own models: only for an error

        found = validation_problems(exc, spec.key, step_type.params)
        for p in found:
            if p.message.startswith("unknown key") and not p.hint.startswith("did you mean") and p.key.count(".") == spec.key.count(".") + 1:
                p = Problem(p.key, p.message, p.hint + "; a step's own keys are use, input, inputs, matrix")
            problems.append(p)
        return None
    except (TypeError, ValueError) as exc:  # raised by a plugin's validator outside pydantic's wrapping
        problems.append(Problem(spec.key, f"invalid parameters: {exc}", "see the step type's documentation"))
        return None


def _check_params(spec: StepSpec, step_type: StepType, params: Params, registry: Registry,
                  problems: list[Problem]) -> Params | None:
    """Run the step type's plan-time check (e.g. graph-optimize's pass names)."""
    try:
        found = list(step_type.check(params, registry) or ())
    except Exception as exc:  # a crashing check is the plugin's fault, but still a plan-time error
        found = [ParamProblem("", f"the check of step type '{step_type.name}' failed: {type(exc).__name__}: {exc}",
                              "report this to the plugin's authors")]
    for p in found:
        key = spec.key if not p.key else f"{spec.key}{p.key}" if p.key.startswith("[") else f"{spec.key}.{p.key}"
        problems.append(Problem(key, p.message, p.hint))
    return None if found else params


def _check_inputs(resolved: dict[str, ResolvedStep], only: tuple[str, ...] | None = None) -> list[Problem]:
    """Run each step type's ``check_inputs`` (or only those of the steps named
    ``only``) on views of the step's inputs (e.g. a report's ``baseline`` must
    name a model its evaluate inputs evaluated). A step with an unresolved
    input is skipped: that input's problem is reported."""
    problems: list[Problem] = []
    for step in (resolved.values() if only is None else [resolved[name] for name in only]):
        check = step.step_type.check_inputs
        if check is None or any(name not in resolved for name in step.inputs):
            continue
        views = tuple(StepView(up.name, up.spec.use, up.step_type.produces, up.inputs)
                      for up in (resolved[name] for name in step.inputs))
        try:
            found = list(check(step.params, views) or ())
        except Exception as exc:  # the plugin's fault, but still a plan-time error, not a traceback
            found = [ParamProblem("", f"the input check of step type '{step.step_type.name}' failed: "
                                      f"{type(exc).__name__}: {exc}", "report this to the plugin's authors")]
        own = [Problem(_param_key(step.key, p.key), p.message, p.hint) for p in found]
        problems.extend(matrix.locate(step.spec, own))
    return problems


def _param_key(step_key: str, key: str) -> str:
    """``steps.opt`` + ``passes[1]`` -> ``steps.opt.passes[1]``; ``[0]`` and ``""`` join as written."""
    return step_key if not key else f"{step_key}{key}" if key.startswith("[") else f"{step_key}.{key}"


def _inputs(spec: StepSpec, step_type: StepType, recipe: Recipe, problems: list[Problem]) -> tuple[str, ...] | None:
    inputs = spec.inputs
    key = f"{spec.key}.{spec.inputs_key}"
    if inputs is None:
        default = step_type.default_input
        inputs = (default,) if default and default in recipe.steps and default != spec.name else ()
    lo, hi = step_type.arity
    if len(inputs) < lo or (hi is not None and len(inputs) > hi):
        need = _arity_text(lo, hi)
        if hi == 0:
            problems.append(Problem(key, f"step type '{step_type.name}' takes no input, got {len(inputs)}", "remove the input/inputs key"))
        else:
            kinds = " or ".join(step_type.consumes) or "any"
            hint = f"add input = \"<step>\" naming a step that produces {kinds}" if not inputs else f"give {need}"
            if step_type.input_names:
                roles = ", ".join(f'"<{role}>"' for role in step_type.input_names)
                hint = f"give {need}, in this order: inputs = [{roles}]"
            problems.append(Problem(key, f"step type '{step_type.name}' takes {need} (artifact kind {kinds}), got {len(inputs)}", hint))
        return None
    ok = True
    for i, name in enumerate(inputs):
        where = key if spec.inputs_key == "input" or spec.inputs is None else f"{key}[{i}]"
        if name == spec.name:
            problems.append(Problem(where, f"step '{name}' cannot take itself as input", "name an upstream step"))
            ok = False
        elif name not in recipe.steps:
            hint = did_you_mean(name, recipe.steps)
            listing = f"steps in this recipe: {', '.join(recipe.steps)}"
            problems.append(Problem(where, f"no step named '{name}'", f"{hint} {listing}" if hint else listing))
            ok = False
    return tuple(inputs) if ok else None


def _arity_text(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"at least {lo} input{'s' if lo != 1 else ''}"
    if lo == hi:
        return f"exactly {lo} input{'s' if lo != 1 else ''}"
    return f"{lo} to {hi} inputs"

