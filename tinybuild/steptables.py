"""A step's table as written: the checks and ``${VAR}`` interpolation every
table gets before its plugin validates its params.

Split from :mod:`tinybuild.recipe` because that module builds the recipe's own
pydantic models (``[recipe]``, ``[target]``) when imported, and a delta
rebuild (:mod:`tinybuild.delta`) re-reads only the step tables an edit
touched: it needs these checks, applied exactly as the full load applies
them, and nothing else of the recipe module. Standard library only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from . import matrix
from .errors import Problem
from .shapes import CORE_STEP_KEYS

#: Deepest nesting of tables and arrays a recipe may use (the built-in
#: plugins need 3); bounded so no recursive code downstream can overflow.
MAX_DEPTH = 32
#: TOML integers are 64-bit signed (TOML 1.0: "an error must be thrown" beyond).
INT_RANGE = (-(2**63), 2**63 - 1)
#: ``$$``, ``${VAR}``, ``${VAR:-default}`` (unset or empty) and ``${VAR-default}`` (unset only), as in the shell
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


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


def edited_step_spec(name: str, key: str, table: Any, environ: dict[str, str], problems: list[Problem],
                     empty: dict[str, list[str]]) -> StepSpec | None:
    """One step table, checked and interpolated as :func:`tinybuild.recipe.load_recipe` does,
    for a delta rebuild (:mod:`tinybuild.delta`) that re-reads only the tables
    an edit touched; ``empty`` collects the variables that expanded to "" (for
    the errors that name them). A table with a ``matrix`` is not one step: None."""
    check_values(table, problems, key, key.count(".") + 1)  # as deep as in the whole recipe
    if problems:
        return None
    table = interpolate(table, key, environ, problems, empty)
    spec = None if problems else step_spec(name, key, table, problems)
    return None if spec is None or spec.matrix is not None else spec


def check_values(data: dict[str, Any], problems: list[Problem], key: str = "", depth: int = 0) -> None:
    """Nesting depth and integer range, walked without recursion (so a
    10,000-level document cannot overflow the check meant to stop it);
    ``key`` and ``depth``: where ``data`` sits in the recipe."""
    stack: list[tuple[Any, str, int]] = [(data, key, depth)]
    while stack and len(problems) < 20:
        value, key, depth = stack.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            # pydantic would turn inf into null in JSON (and key material) for untyped tables
            problems.append(Problem(key, f"should be a finite number (got {value})",
                                    "nan and inf are not allowed in recipes; write a number"))
        elif isinstance(value, int) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
            problems.append(Problem(key, f"integer out of range ({value.bit_length()} bits)",
                                    "TOML integers are 64-bit: between -2^63 and 2^63-1"))
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                problems.append(Problem(key, f"nested more than {MAX_DEPTH} levels deep",
                                        f"nest tables and arrays at most {MAX_DEPTH} levels deep"))
                return
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                child = (f"{key}.{k}" if key else str(k)) if isinstance(value, dict) else f"{key}[{k}]"
                stack.append((v, child, depth + 1))


def step_spec(name: str, key: str, table: Any, problems: list[Problem]) -> StepSpec | None:
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


def interpolate(value: Any, key: str, environ: dict[str, str], problems: list[Problem],
                 empty: dict[str, list[str]]) -> Any:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` (and ``$$`` → ``$``)
    in every string, recording in ``empty`` which variables expanded to "" where.

    As in the shell, ``:-`` takes the default when VAR is unset *or empty* (CI
    systems often define variables they leave empty), ``-`` only when unset."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{key}.{k}" if key else k, environ, problems, empty) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{key}[{i}]", environ, problems, empty) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        found = environ.get(name)
        if op == ":-" and not found or op == "-" and found is None:
            found = default
        if found is None:
            problems.append(Problem(key, f"environment variable {name} is not set", f"set {name}, or give a default: ${{{name}:-value}}"))
            return m.group(0)
        if not found:
            empty.setdefault(key, []).append(name)
        return found

    return _VAR.sub(substitute, value)
