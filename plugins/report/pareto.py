"""The Pareto front of a report's variants, and the answer a sweep is run for.

Why: a sweep builds dozens of variants; the user needs (a) the ones worth
considering at all -- those no other variant beats on every figure at once --
and (b) the one to ship: the smallest that passes every budget of the
``[target]``.

Definitions (the README's report section says the same):

* Candidates are the .tflite variants (what ships to the device; a Keras
  model has no deployed size or arena); without any, every variant.
* Objectives: flash (``size_bytes``, lower is better), accuracy (higher is
  better) and RAM (``ram_bytes``: the TFLM arena where measured, else the
  estimate; lower is better) -- RAM only when every candidate has a figure,
  since a variant cannot be compared on a figure it lacks.
* ``a`` dominates ``b`` when ``a`` is no worse on every objective and strictly
  better on at least one. The front is the candidates nobody dominates;
  variants with identical figures are both on it.
* The answer: among the gated variants that passed a check for *every*
  ``[target]`` budget (a budget that could not be checked, e.g. RAM without
  a figure, is not a pass), the one with the fewest flash bytes; ties go to
  the higher accuracy, then the lower RAM, then the recipe's order.

Pure functions of the report's rows and gate checks, no imports beyond the
standard library.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

#: the [target] keys that are budgets
BUDGETS = ("flash_kb", "ram_kb", "min_accuracy")


def candidates(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    deployed = [r for r in rows if r.get("model_kind") == "tflite"]
    return deployed or list(rows)


def objectives(cands: Sequence[Mapping[str, Any]]) -> list[str]:
    with_ram = bool(cands) and all(isinstance(r.get("ram_bytes"), int) for r in cands)
    return ["flash", "ram", "accuracy"] if with_ram else ["flash", "accuracy"]


def _costs(row: Mapping[str, Any], objs: Sequence[str]) -> tuple[float, ...]:
    """Every objective as a cost (lower is better)."""
    values = {"flash": row["size_bytes"], "ram": row.get("ram_bytes"), "accuracy": -row["accuracy"]}
    return tuple(values[o] for o in objs)


def dominates(a: Mapping[str, Any], b: Mapping[str, Any], objs: Sequence[str]) -> bool:
    ca, cb = _costs(a, objs), _costs(b, objs)
    return all(x <= y for x, y in zip(ca, cb)) and any(x < y for x, y in zip(ca, cb))


def front(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"objectives", "candidates", "front" (by flash, then accuracy),
    "dominated_by" ({variant: the first variant, in recipe order, that dominates it})}``."""
    cands = candidates(rows)
    objs = objectives(cands)
    dominated_by = {}
    for b in cands:
        winner = next((a for a in cands if a is not b and dominates(a, b, objs)), None)
        if winner is not None:
            dominated_by[b["variant"]] = winner["variant"]
    on_front = [r for r in cands if r["variant"] not in dominated_by]
    on_front.sort(key=lambda r: (r["size_bytes"], -r["accuracy"]))
    return {"objectives": objs, "candidates": [r["variant"] for r in cands],
            "front": [r["variant"] for r in on_front], "dominated_by": dominated_by}


def passes_every_gate(variant: str, gated: Sequence[str], checks: Sequence[Mapping[str, Any]],
                      target: Mapping[str, Any]) -> bool:
    budgets = [b for b in BUDGETS if target.get(b) is not None]
    if variant not in gated or not budgets:
        return False
    mine = [c for c in checks if c["variant"] == variant]
    return all(any(c["budget"] == b for c in mine) for b in budgets) and all(c["passed"] for c in mine)


def answer(rows: Sequence[Mapping[str, Any]], gated: Sequence[str], checks: Sequence[Mapping[str, Any]],
           target: Mapping[str, Any]) -> dict[str, Any]:
    """``{"variant": name or None, "passing": [names], "text": one sentence}``."""
    if not any(target.get(b) is not None for b in BUDGETS):
        return {"variant": None, "passing": [], "text": "no [target] budgets: nothing to pass"}
    order = {r["variant"]: i for i, r in enumerate(rows)}
    passing = [r for r in rows if passes_every_gate(r["variant"], gated, checks, target)]
    if not passing:
        return {"variant": None, "passing": [],
                "text": f"no variant passes every gate ({len(gated)} gated)"}
    best = min(passing, key=lambda r: (r["size_bytes"], -r["accuracy"],
                                       r["ram_bytes"] if isinstance(r.get("ram_bytes"), int) else float("inf"),
                                       order[r["variant"]]))
    ram = f", RAM {best['ram_bytes']:,} B" if isinstance(best.get("ram_bytes"), int) else ""
    return {"variant": best["variant"], "passing": [r["variant"] for r in passing],
            "text": f"{best['variant']}: " + (f"the smallest of the {len(passing)} variants that pass every gate"
                                              if len(passing) > 1 else "the only variant that passes every gate")
                    + f" (flash {best['size_bytes']:,} B{ram}, "
                    f"accuracy {best['accuracy'] * 100:.2f}%)"}


def mark(rows: Sequence[dict[str, Any]], result: Mapping[str, Any]) -> None:
    """Each row's ``pareto``: "front", "dominated" or None (not a candidate)."""
    cands = set(result["candidates"])
    for row in rows:
        name = row["variant"]
        row["pareto"] = None if name not in cands else ("dominated" if name in result["dominated_by"] else "front")
