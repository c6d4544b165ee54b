"""Reading ``recipe.toml``: TOML, ``${VAR}`` interpolation and the recipe's own shape.

Loading happens in two phases so that errors can be precise:

1. :func:`load_recipe` parses TOML, expands environment variables and
   validates the sections the core owns (``[recipe]``, ``[target]``, the
   ``use``/``input``/``inputs``/``matrix`` keys of every step), then expands
   sweeps (:mod:`tinybuild.matrix`) so that later phases see ordinary steps.
2. :func:`tinybuild.resolve.resolve_recipe` validates each step's own
   parameters with the params model of the plugin that implements it.

Every problem names the file and the dotted key path and says how to fix it;
all problems found are reported together.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import Problem, RecipeError, did_you_mean
from .hashing import bytes_digest, stat_signature
from . import matrix

#: Sections of the recipe that become steps with a fixed name.
SECTION_STEPS = ("dataset", "model")
TOP_LEVEL_KEYS = ("recipe", "target", "dataset", "model", "steps")
#: Keys of a step table that belong to the core, not to the plugin's params.
CORE_STEP_KEYS = ("use", "input", "inputs", "matrix")
STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RecipeMeta(BaseModel):
    """The ``[recipe]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(description="Name of the recipe; names the build folder.", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for every random choice (splits, initialization, training).")
    salt: str = Field("", description="Change it to invalidate every cached result of this recipe.")
    description: str = Field("", description="Free text, shown by `tinybuild plan`.")


class Target(BaseModel):
    """The optional ``[target]`` table: a device's budgets, enforced as gates."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    name: str | None = Field(None, description="Device name, for reports.")
    flash_kb: float | None = Field(None, gt=0, description="Flash budget in KiB: max model file size.")
    ram_kb: float | None = Field(None, gt=0, description="RAM budget in KiB: max tensor-arena estimate.")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="Minimum test accuracy of gated variants.")


@dataclass(frozen=True)
class StepSpec:
    """A step as written in the recipe, before its plugin validates params."""

    name: str
    key: str  # dotted path of its table: "dataset", "model" or "steps.<name>"
    use: str
    inputs: tuple[str, ...] | None  # None: not given, use the step type's default
    inputs_key: str  # "input" or "inputs", for error messages
    raw_params: dict[str, Any]
    #: sweeps (tinybuild.matrix): the table's matrix as written (None once expanded);
    #: for a member, the table it came from, its (param, value) coordinates
    #: (inherited from its input's member first) and its own (param, index) entries
    matrix: Any = None
    table: str | None = None
    coordinates: tuple[tuple[str, Any], ...] = ()
    combination: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Recipe:
    path: Path
    meta: RecipeMeta
    target: Target
    steps: dict[str, StepSpec] = field(default_factory=dict)
    #: (stat signature, sha256, when read) of the bytes this recipe was parsed from
    origin: tuple[list[int], str, int] | None = None

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".lock.json")


# -- phase 1 -----------------------------------------------------------------


def load_recipe(path: str | Path, environ: dict[str, str] | None = None) -> Recipe:
    """Parse and check a recipe file; raise :class:`RecipeError` listing all problems."""
    path = Path(path)
    file = str(path)
    try:
        st = os.stat(path)
        raw = path.read_bytes()
        origin = (stat_signature(st), bytes_digest(raw), time.time_ns())
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(file, [Problem("", "no such recipe file", "check the path, or create it (see README: Recipe reference)")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(file, [Problem("", f"cannot read the recipe: {exc}", "the recipe must be a UTF-8 text file")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(file, [_toml_problem(exc)]) from None

    problems: list[Problem] = []
    data = _interpolate(data, "", environ if environ is not None else dict(os.environ), problems)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.append(Problem(key, f"unknown section '{key}'", _suggest(key, TOP_LEVEL_KEYS)))

    meta = _validate(RecipeMeta, data.get("recipe"), "recipe", problems, required=True)
    target = _validate(Target, data.get("target", {}), "target", problems) or Target()

    steps: dict[str, StepSpec] = {}
    for section in SECTION_STEPS:
        if section in data:
            spec = _step_spec(section, section, data[section], problems)
            if spec:
                steps[section] = spec
    raw_steps = data.get("steps", {})
    if not isinstance(raw_steps, dict):
        problems.append(Problem("steps", "must be a table of steps", "write each step as [steps.<name>]"))
        raw_steps = {}
    for name, table in raw_steps.items():
        key = f"steps.{name}"
        if name in SECTION_STEPS:
            problems.append(Problem(key, f"'{name}' is reserved for the [{name}] section", f"rename the step, or move it to a top-level [{name}] table"))
            continue
        if not STEP_NAME.match(name):
            problems.append(Problem(key, f"invalid step name '{name}'", "use letters, digits, '_' and '-', starting with a letter or '_'"))
            continue
        spec = _step_spec(name, key, table, problems)
        if spec:
            steps[name] = spec
    steps = matrix.expand(steps, problems)
    if not steps and not problems:
        problems.append(Problem("steps", "the recipe declares no steps", "add a [dataset], a [model] and [steps.<name>] tables"))

    if problems:
        raise RecipeError(file, problems)
    assert meta is not None
    return Recipe(path=path.resolve(), meta=meta, target=target, steps=steps, origin=origin)


def _step_spec(name: str, key: str, table: Any, problems: list[Problem]) -> StepSpec | None:
    if not isinstance(table, dict):
        problems.append(Problem(key, "must be a table", f"write it as [{key}] with a 'use' key"))
        return None
    use = table.get("use")
    if use is None:
        problems.append(Problem(f"{key}.use", "missing: which step type this step uses", "add use = \"<step type>\" (see `tinybuild plugins`)"))
        return None
    if not isinstance(use, str):
        problems.append(Problem(f"{key}.use", "must be a string", "e.g. use = \"train\""))
        return None
    inputs: tuple[str, ...] | None = None
    inputs_key = "input"
    if "input" in table and "inputs" in table:
        problems.append(Problem(f"{key}.inputs", "both 'input' and 'inputs' are given", "keep one: input = \"step\" or inputs = [\"a\", \"b\"]"))
    elif "input" in table:
        value = table["input"]
        if not isinstance(value, str):
            problems.append(Problem(f"{key}.input", "must be the name of one step", "e.g. input = \"train\"; for several use inputs = [...]"))
        else:
            inputs = (value,)
    elif "inputs" in table:
        inputs_key = "inputs"
        value = table["inputs"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(Problem(f"{key}.inputs", "must be a list of step names", "e.g. inputs = [\"eval_fp32\", \"eval_int8\"]"))
        else:
            inputs = tuple(value)
    params = {k: v for k, v in table.items() if k not in CORE_STEP_KEYS}
    return StepSpec(name=name, key=key, use=use, inputs=inputs, inputs_key=inputs_key, raw_params=params,
                    matrix=table.get(matrix.KEY))


def _validate(model: type[BaseModel], value: Any, key: str, problems: list[Problem], required: bool = False) -> Any:
    if value is None:
        if required:
            problems.append(Problem(key, f"missing [{key}] table", f"add [{key}] with at least name = \"...\""))
        return None
    if not isinstance(value, dict):
        problems.append(Problem(key, "must be a table", f"write it as [{key}]"))
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, key, model))
        return None


def validation_problems(exc: ValidationError, prefix: str, model: type[BaseModel]) -> list[Problem]:
    """Turn pydantic's errors into problems with dotted paths and fixes."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        key = ".".join([prefix, *loc]) if prefix else ".".join(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            field_names = _field_names(model, loc[:-1])
            hint = _suggest(loc[-1], field_names)
            if not hint:
                hint = f"remove it; valid keys: {', '.join(sorted(field_names))}" if field_names else "remove it"
            out.append(Problem(key, f"unknown key '{loc[-1]}'", hint))
        elif kind == "missing":
            out.append(Problem(key, "missing required key", f"add {loc[-1]} = ..."))
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            msg = err["msg"]
            out.append(Problem(key, f"{msg} (got {shown})", _hint_for(kind, err)))
    return out


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation (``Model``, ``Model | None``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _field_names(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the (possibly nested) table at ``path``, for suggestions."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _model_in(fields[part].annotation)
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _hint_for(kind: str, err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    if kind == "literal_error" and "expected" in ctx:
        return f"use one of {ctx['expected']}"
    if kind.startswith(("greater_than", "less_than")):
        return "change the value to satisfy the bound"
    if kind == "string_pattern_mismatch" and "pattern" in ctx:
        return f"use a value matching {ctx['pattern']}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "change the value's type"
    return "see the allowed values in the README or `tinybuild schema`"


def _suggest(word: str, choices: Any) -> str:
    return did_you_mean(word, choices)


def _toml_problem(exc: tomllib.TOMLDecodeError) -> Problem:
    line = getattr(exc, "lineno", None)
    col = getattr(exc, "colno", None)
    msg = getattr(exc, "msg", None) or str(exc)
    if line is None:  # Python < 3.14 only puts the position in the message
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        if m:
            line, col = int(m.group(1)), int(m.group(2))
            msg = str(exc)[: m.start()].strip()
        elif "(at end of document)" in str(exc):
            msg = str(exc).replace("(at end of document)", "").strip() + " at end of file"
    return Problem("", f"invalid TOML: {msg}", "fix the syntax at that position (strings need quotes; tables are [name])", line, col)


def _interpolate(value: Any, key: str, environ: dict[str, str], problems: list[Problem]) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` (and ``$$`` → ``$``) in every string."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{key}.{k}" if key else k, environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{key}[{i}]", environ, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(Problem(key, f"environment variable {name} is not set", f"set {name}, or give a default: ${{{name}:-value}}"))
        return m.group(0)

    return _VAR.sub(substitute, value)
