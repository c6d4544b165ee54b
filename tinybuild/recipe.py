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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from .errors import Problem, RecipeError, did_you_mean
from .paramsbase import Params
from .hashing import bytes_digest, stat_signature
from .safeio import MAX_RECIPE_BYTES, BadPath, FileTooLarge, NotRegularFile, open_regular, stat_of
from . import matrix, tomlparse
from .shapes import BOM, STEP_NAME, TOP_LEVEL_KEYS, RecipeLocation
from .steptables import MAX_DEPTH, StepSpec, check_values, interpolate, step_spec

#: Sections of the recipe that become steps with a fixed name.
SECTION_STEPS = ("dataset", "model")
#: Longest recipe or step name: each names a folder (file systems stop at 255 bytes).
MAX_NAME = 100


class RecipeMeta(Params):
    """The ``[recipe]`` table. Numbers and booleans are checked as in step
    params (:class:`tinybuild.paramsbase.Params`): as the JSON Schema takes them."""

    name: str = Field(description="Name of the recipe; names the build folder.", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=MAX_NAME)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for every random choice (splits, initialization, training).")
    salt: str = Field("", description="Change it to invalidate every cached result of this recipe.")
    description: str = Field("", description="Free text, shown by `tinybuild plan`.")


class Target(Params):
    """The optional ``[target]`` table: a device's budgets, enforced as gates."""

    name: str | None = Field(None, description="Device name, for reports.")
    flash_kb: float | None = Field(None, gt=0, description="Flash budget in KiB: max model file size.")
    ram_kb: float | None = Field(None, gt=0, description="RAM budget in KiB: max tensor arena (measured on TFLM plus arena_margin where measured, else the estimate).")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="Minimum test accuracy of gated variants.")
    runtime: Literal["tflm", "litert"] | None = Field(None, description="Runtime the budgets mean; default: tflm when a gated variant was evaluated on TFLM.")
    arena_margin: float | None = Field(None, ge=0, le=10, description="Fraction added to a measured TFLM arena (RAM gate, kTensorArenaSize); default 0.10.")
    runtime_flash_kb: float | None = Field(None, ge=0, description="Flash the interpreter and kernels take (KiB), added to the model's bytes in the flash gate.")
    max_arena_kb: float | None = Field(None, gt=0, description="Largest tensor arena the firmware reserves (KiB): gate on the measured arena, without margin.")


@dataclass(frozen=True)
class Recipe(RecipeLocation):
    path: Path
    meta: RecipeMeta
    target: Target
    steps: dict[str, StepSpec] = field(default_factory=dict)
    #: (stat signature, sha256, when read) of the bytes this recipe was parsed from
    origin: tuple[list[int], str, int] | None = None
    #: dotted key -> the variables that expanded to "" in its value, so that the
    #: problem an empty ``${DATA_DIR}`` causes (a path that is not found) names it
    empty_vars: dict[str, tuple[str, ...]] = field(default_factory=dict)


# -- phase 1 -----------------------------------------------------------------


def load_recipe(path: str | Path, environ: dict[str, str] | None = None) -> Recipe:
    """Parse and check a recipe file; raise :class:`RecipeError` listing all problems."""
    path = Path(path)
    file = str(path).replace("\x00", "\\0")
    raw, st = _read_recipe(path, file)
    origin = (stat_signature(st), bytes_digest(raw), time.time_ns())
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(file, [Problem("", f"cannot read the recipe: {exc}", "the recipe must be a UTF-8 text file")]) from None
    # TOML forbids a byte order mark, but Windows editors write one: the origin
    # digest above still covers the bytes as they are on disk
    data = _parse_toml(text.removeprefix(BOM), file)
    problems: list[Problem] = []
    check_values(data, problems)
    if problems:
        raise RecipeError(file, problems)
    empty: dict[str, list[str]] = {}
    data = interpolate(data, "", environ if environ is not None else dict(os.environ), problems, empty)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.append(Problem(key, f"unknown section '{key}'", _suggest(key, TOP_LEVEL_KEYS)))

    meta = _validate(RecipeMeta, data.get("recipe"), "recipe", problems, required=True)
    target = _validate(Target, data.get("target", {}), "target", problems) or Target()

    steps: dict[str, StepSpec] = {}
    for section in SECTION_STEPS:
        if section in data:
            spec = step_spec(section, section, data[section], problems)
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
        if not STEP_NAME.fullmatch(name) or len(name) > MAX_NAME:
            shown = name if len(name) <= 40 else name[:40] + "..."
            problems.append(Problem(key if len(name) <= 40 else f"steps.{shown}", f"invalid step name '{shown}'",
                                    f"use at most {MAX_NAME} letters, digits, '_' and '-', starting with a letter or '_'"))
            continue
        spec = step_spec(name, key, table, problems)
        if spec:
            steps[name] = spec
    steps = matrix.expand(steps, problems)
    if not steps and not problems:
        problems.append(Problem("steps", "the recipe declares no steps", "add a [dataset], a [model] and [steps.<name>] tables"))

    empty_vars = {key: tuple(names) for key, names in empty.items()}
    if problems:
        raise RecipeError(file, note_empty_vars(problems, empty_vars))
    assert meta is not None
    return Recipe(path=path.resolve(), meta=meta, target=target, steps=steps, origin=origin, empty_vars=empty_vars)


def _read_recipe(path: Path, file: str) -> tuple[bytes, os.stat_result]:
    """The recipe's bytes and stat, read only from a regular file of at most
    :data:`MAX_RECIPE_BYTES` (a FIFO or ``/dev/zero`` must not hang the build)."""
    too_big = RecipeError(file, [Problem("", f"the recipe is over {MAX_RECIPE_BYTES:,} bytes (1 MiB), the limit for recipes",
                                         "a recipe holds settings, not data: put data in files the recipe names")])
    try:
        with open_regular(path, MAX_RECIPE_BYTES) as f:
            st = stat_of(f)
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(file, [Problem("", "no such recipe file", "check the path, or create it (see README: Recipe reference)")]) from None
    except FileTooLarge:
        raise too_big from None
    except NotRegularFile as exc:
        raise RecipeError(file, [Problem("", f"the recipe path {exc.strerror}", "give the path of a recipe .toml file")]) from None
    except BadPath as exc:
        raise RecipeError(file, [Problem("", f"cannot read the recipe: {exc.strerror}", "give the path of a recipe .toml file")]) from None
    except OSError as exc:
        raise RecipeError(file, [Problem("", f"cannot read the recipe: {exc.strerror or exc}", "the recipe must be a readable UTF-8 text file")]) from None
    if len(raw) > MAX_RECIPE_BYTES:  # grew while read
        raise too_big
    return raw, st


def _parse_toml(text: str, file: str) -> dict[str, Any]:
    """:func:`tinybuild.tomlparse.loads` with every failure mode as a :class:`RecipeError`:
    its own decode errors, ``ValueError`` for integers of over 4,300 digits
    (Python's int-str limit) and ``RecursionError`` for deep nesting."""
    try:
        return tomlparse.loads(text)
    except tomlparse.TOMLDecodeError as exc:
        raise RecipeError(file, [_toml_problem(exc)]) from None
    except RecursionError:
        raise RecipeError(file, [Problem("", "invalid TOML: arrays or inline tables nested too deeply",
                                         f"nest tables and arrays at most {MAX_DEPTH} levels deep")]) from None
    except ValueError as exc:  # int("1" * 5000): Python refuses to convert it
        raise RecipeError(file, [Problem("", f"invalid TOML: {exc}".split(";")[0],
                                         "TOML integers are 64-bit: between -2^63 and 2^63-1")]) from None


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
        key += str((err.get("ctx") or {}).get("at", ""))  # an item of a list field (tinybuild.paramsbase)
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
            ctx = err.get("ctx") or {}
            got = ctx["got"] if "got" in ctx else err.get("input")  # "got": the list item, not the list
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            shown = shown if len(shown) <= 80 else shown[:60] + "..." + shown[-10:]
            msg = err["msg"].removeprefix("Value error, ")
            got_text = "" if isinstance(got, dict) else f" (got {shown})"  # a whole table: the message says what
            out.append(Problem(key, f"{msg}{got_text}", _hint_for(kind, err)))
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
    if "fix" in ctx:  # tinybuild.paramsbase says how to write the value
        return str(ctx["fix"])
    if kind == "input_file":  # tinybuild.api.INPUT_FILE_ERROR
        return "give the path of a regular file (relative paths resolve against the recipe's folder)"
    if kind == "literal_error" and "expected" in ctx:
        return f"use one of {ctx['expected']}"
    if kind == "int_from_float":
        return "write a whole number (the key takes an integer)"
    if kind.startswith(("greater_than", "less_than")):
        return "change the value to satisfy the bound"
    if kind == "string_pattern_mismatch" and "pattern" in ctx:
        return f"use a value matching {ctx['pattern']}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "change the value's type"
    return "see the allowed values in the README or `tinybuild schema`"


def _suggest(word: str, choices: Any) -> str:
    return did_you_mean(word, choices)


def _toml_problem(exc: tomlparse.TOMLDecodeError) -> Problem:
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


def note_empty_vars(problems: list[Problem], empty_vars: dict[str, tuple[str, ...]]) -> list[Problem]:
    """Problems at a key whose value had a variable expand to "" say so: an
    empty ``${DATA_DIR}`` makes ``${DATA_DIR}/x.npz`` the path ``/x.npz``,
    and "file not found: /x.npz" alone does not say why."""
    if not empty_vars:
        return problems
    out = []
    for p in problems:
        names = [n for key, found in empty_vars.items() if p.key == key or p.key.startswith((key + ".", key + "["))
                 for n in found]
        if names:
            shown = ", ".join(dict.fromkeys(f"${{{n}}}" for n in names))
            first = names[0]
            p = p._replace(message=f"{p.message} ({shown} expanded to an empty string)",
                           hint=f"{p.hint}; set {first} to a non-empty value, or give a default: ${{{first}:-value}}")
        out.append(p)
    return out
