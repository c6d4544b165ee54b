"""Sweeps: a step table's ``matrix`` expands into one ordinary step per combination.

Why here, between the two loading phases: every later stage (params
validation, the DAG, keys, plan, executor, lock file) sees only ordinary
steps, so a member is cached, planned, forced and shown like any step, and a
member with the same params as a hand-written step has the same key.

Rules (the README's "Sweeps" section says the same to users):

* ``matrix = { a = [1, 2], b = ["x", "y"] }`` is the cartesian product, in
  table order then list order: (1, x), (1, y), (2, x), (2, y).
* A member is named ``<step>-<param>_<value>`` for each coordinate, e.g.
  ``pruned-final_sparsity_0p5-clusters_8``: numbers write ``.`` as ``p`` and
  ``-`` as ``m``; other characters a step name cannot hold become ``_``. The
  name passes the step-name rules, so ``--only``, ``--force`` and ``show``
  take it as it is.
* Fan-out: a step whose ``input = "x"`` names a swept step becomes one step
  per member of ``x``, carrying the member's coordinates in its name
  (``int8`` on ``pruned`` → ``int8-final_sparsity_0p5``), then its own
  matrix on top. Fan-out follows ``input`` only.
* Gather: a step whose ``inputs = [...]`` names a swept step receives every
  member in its place, in member order (e.g. one ``report`` over the sweep).

Structural problems (not a table, an empty or non-list value, a value that
is no number, string or boolean, a repeated value, a matrix on ``[dataset]``
or ``[model]``) are found here; values the step type's params model rejects
and unknown parameters are found when params are validated, and
:func:`locate` points those problems at ``<step>.matrix.<param>[i]``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from typing import Any, Iterable, Mapping

from .errors import Problem

KEY = "matrix"
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def encode(value: Any) -> str:
    """A matrix value as it appears in a member's name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value).replace("-", "m").replace("+", "").replace(".", "p")
    return _UNSAFE.sub("_", str(value))


def suffix(coordinates: Iterable[tuple[str, Any]]) -> str:
    return "".join(f"-{param}_{encode(value)}" for param, value in coordinates)


def describe(coordinates: Iterable[tuple[str, Any]]) -> str:
    """``final_sparsity=0.5, clusters=8``: a combination for messages and listings."""
    return ", ".join(f"{param}={value!r}" if isinstance(value, str) else f"{param}={value}"
                     for param, value in coordinates)


def _check(spec: Any, problems: list[Problem]) -> list[tuple[str, list[Any]]] | None:
    """The matrix as [(param, values)], or None after recording what is wrong."""
    key = f"{spec.key}.{KEY}"
    matrix = spec.matrix
    if spec.key in ("dataset", "model"):
        problems.append(Problem(key, f"a matrix on [{spec.key}] is not supported",
                                "sweep a step under [steps.*] instead (e.g. the training or pruning step)"))
        return None
    if not isinstance(matrix, dict):
        problems.append(Problem(key, "must be a table of parameter lists",
                                "e.g. matrix = { final_sparsity = [0.5, 0.7, 0.9] }"))
        return None
    if not matrix:
        problems.append(Problem(key, "is empty", "list at least one parameter, or remove the matrix"))
        return None
    ok = True
    axes = []
    for param, values in matrix.items():
        where = f"{key}.{param}"
        if not _PARAM.fullmatch(param):
            problems.append(Problem(where, f"'{param}' is not a parameter name",
                                    "sweep a top-level parameter of the step (nested tables cannot be swept)"))
            ok = False
            continue
        if param in spec.raw_params:
            problems.append(Problem(where, f"'{param}' is given both as a parameter and in the matrix",
                                    f"remove {param} = ... from [{spec.key}] or from its matrix"))
            ok = False
        if not isinstance(values, list):
            problems.append(Problem(where, f"must be a list of values (got {type(values).__name__})",
                                    f"e.g. {param} = [{values!r}]" if isinstance(values, (int, float, str)) else
                                    f"e.g. {param} = [1, 2]"))
            ok = False
            continue
        if not values:
            problems.append(Problem(where, "is an empty list", f"give at least one value, or remove {param}"))
            ok = False
            continue
        names: dict[str, int] = {}
        for i, value in enumerate(values):
            if not isinstance(value, (bool, int, float, str)):
                problems.append(Problem(f"{where}[{i}]", f"a matrix value must be a number, a string or a boolean (got {type(value).__name__})",
                                        "sweep scalar parameters; write tables and lists as separate steps"))
                ok = False
                continue
            encoded = encode(value)
            if encoded in names:
                j = names[encoded]
                same = values[j] == value and type(values[j]) is type(value)
                problems.append(Problem(f"{where}[{i}]", f"{value!r} {'repeats' if same else 'gives the same member name as'} "
                                        f"{param}[{j}] = {values[j]!r}",
                                        "remove the repeated value" if same else "choose values that differ in letters or digits"))
                ok = False
            names[encoded] = i
        axes.append((param, list(values)))
    return axes if ok else None


def expand(steps: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """Recipe-order ``{name: StepSpec}`` with every swept step replaced by its
    members and every ``input``/``inputs`` rewired to them (rules above)."""
    if not any(spec.matrix is not None for spec in steps.values()):
        return dict(steps)
    members: dict[str, list[Any]] = {}  # table name -> its expanded specs
    visiting: set[str] = set()

    def own_axes(spec: Any) -> list[tuple[str, list[Any]]] | None:
        return _check(spec, problems) if spec.matrix is not None else []

    def expand_one(name: str) -> list[Any]:
        if name in members:
            return members[name]
        spec = steps[name]
        if name in visiting:  # a cycle: graph.py names it; do not fan out through it
            return [spec]
        visiting.add(name)
        axes = own_axes(spec)
        if axes is None:
            members[name] = [replace(spec, matrix=None)]
            visiting.discard(name)
            return members[name]
        upstream: list[Any] = [None]
        if spec.inputs is not None and spec.inputs_key == "input" and spec.inputs[0] in steps:
            ups = expand_one(spec.inputs[0])
            if len(ups) > 1 or ups[0].coordinates:
                upstream = ups
        gathered = spec.inputs
        if spec.inputs is not None and spec.inputs_key == "inputs":
            gathered = _gather(spec.inputs, steps, expand_one, name)
        combos = list(itertools.product(*[[(param, i, v) for i, v in enumerate(values)] for param, values in axes]))
        out = []
        for up in upstream:
            for combo in combos:
                own = tuple((param, value) for param, _, value in combo)
                inherited = up.coordinates if up is not None else ()
                coordinates = inherited + own
                raw = {**spec.raw_params, **{param: value for param, value in own}}
                out.append(replace(
                    spec,
                    name=name + suffix(coordinates),
                    inputs=(up.name,) if up is not None else gathered,
                    raw_params=raw,
                    matrix=None,
                    table=name if coordinates else None,
                    coordinates=coordinates,
                    combination=tuple((param, i) for param, i, _ in combo),
                ))
        members[name] = out
        visiting.discard(name)
        return out

    result: dict[str, Any] = {}
    for name in steps:
        for member in expand_one(name):
            if member.name in result or (member.name != name and member.name in steps):
                problems.append(Problem(steps[name].key, f"the sweep member '{member.name}' has the name of another step",
                                        f"rename the step '{member.name}' or the swept step '{name}'"))
                continue
            result[member.name] = member
    return result


def repeats(steps: Iterable[Any]) -> list[Problem]:
    """Matrix values that differ as written but are one value once the step
    type's params read them (``epochs = [1, 1.0]``: both are the integer 1):
    their members would be the same step under two names. ``steps`` are
    resolved steps (``.spec``, ``.params``) whose params validated."""
    import json

    seen: dict[tuple[str, str], dict[str, tuple[int, Any]]] = {}
    found: dict[tuple[str, str, int], Problem] = {}
    for step in steps:
        spec = step.spec
        if not spec.combination:
            continue
        dumped = step.params.model_dump(mode="json")
        for param, index in spec.combination:
            if param not in dumped:
                continue
            values = seen.setdefault((spec.key, param), {})
            text = json.dumps(dumped[param], sort_keys=True)
            first, raw = values.setdefault(text, (index, spec.raw_params.get(param)))
            if first != index and (spec.key, param, max(first, index)) not in found:
                i, j = sorted((first, index))
                later = spec.raw_params.get(param) if j == index else raw
                earlier = raw if j == index else spec.raw_params.get(param)
                found[(spec.key, param, j)] = Problem(
                    f"{spec.key}.{KEY}.{param}[{j}]",
                    f"{later!r} is the same {param} as {param}[{i}] = {earlier!r} once read as the parameter's type "
                    f"(both are {dumped[param]!r})",
                    "remove the repeated value")
    return list(found.values())


def _gather(inputs: tuple[str, ...], steps: Mapping[str, Any], expand_one: Any, self_name: str) -> tuple[str, ...]:
    """``inputs`` with each swept step replaced by its members, in order;
    unknown names and self-references stay, for resolve to report."""
    out: list[str] = []
    for name in inputs:
        if name in steps and name != self_name:
            out.extend(m.name for m in expand_one(name))
        else:
            out.append(name)
    return tuple(out)


def locate(spec: Any, found: list[Problem]) -> list[Problem]:
    """Point params problems of a sweep member at the matrix entry that caused
    them (``steps.pruned.matrix.final_sparsity[2]``) and name the combination;
    problems from the table's own keys keep their key."""
    if not spec.combination:
        return found
    index = dict(spec.combination)
    out = []
    for p in found:
        rest = p.key[len(spec.key) + 1:] if p.key.startswith(spec.key + ".") else None
        param = re.split(r"[.\[]", rest, maxsplit=1)[0] if rest else None
        if param in index:
            tail = rest[len(param):]
            key = f"{spec.key}.{KEY}.{param}[{index[param]}]{tail}"
            if p.message.startswith("unknown key") and not tail:
                hint = p.hint.split("; a step's own keys")[0]
                out.append(Problem(f"{spec.key}.{KEY}.{param}", f"unknown parameter '{param}' of step type '{spec.use}'",
                                   hint, p.line, p.column))
                continue
            message = f"{p.message}, in combination {describe(spec.coordinates)} (step {spec.name})"
            out.append(Problem(key, message, p.hint, p.line, p.column))
        else:
            out.append(p)
    return out


def sweep_lines(specs: Iterable[Any]) -> list[str]:
    """One line per swept table for ``plan``: how it expanded."""
    tables: dict[str, list[Any]] = {}
    for spec in specs:
        if spec.table:
            tables.setdefault(spec.table, []).append(spec)
    lines = []
    for table, group in tables.items():
        own = [p for p, _ in group[0].combination]
        what = f"matrix over {', '.join(own)}" if own else "fans out with its input"
        if own and len(group[0].coordinates) > len(own):
            what += ", fans out with its input"
        names = [s.name for s in group]
        shown = ", ".join(names) if len(names) <= 4 else f"{names[0]}, ..., {names[-1]}"
        lines.append(f"sweep {table}: {len(group)} steps ({what}): {shown}")
    return lines
