"""Device budget gates: what the ``[target]`` budgets check, variant by variant.

Budgets mean the device. When the runtime is TFLite Micro (``[target]
runtime = "tflm"``, the default as soon as a gated variant was evaluated with
``tflm = true``):

* a variant TFLM cannot run fails a ``runtime`` gate with TFLM's reason --
  a model the device cannot execute does not "fit" whatever its size;
* ``ram_kb`` checks the *measured* arena (the recording allocator's total)
  plus ``arena_margin`` (default 10%, rounded up to 16 B: the figure
  ``kTensorArenaSize`` gets), never an estimate when a measurement exists;
* ``max_arena_kb`` checks the measured arena alone (what a firmware's arena
  section holds);
* ``min_accuracy`` checks the accuracy measured on TFLM.

A variant with no TFLM run (or ``runtime = "litert"``) is checked against the
arena *estimate*, and the gate text says "arena estimate". ``flash_kb``
always checks raw bytes (no device un-gzips a model) plus
``runtime_flash_kb``, the interpreter and kernels the user measured for their
board. Each check is a dict ``{variant, budget, limit, value, passed, text}``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from tinybuild_plugins.tflite.tflm import DEFAULT_MARGIN, arena_with_margin, needed_arena

KIB = 1024
TFLITE = "tflite"


def budget_bytes(limit_kb: float) -> int:
    """The most bytes a ``*_kb`` budget allows (floor: 21.9 KiB = 22,425 B)."""
    return math.floor(limit_kb * KIB)


def runtime(rows: Sequence[Mapping[str, Any]], gated: Sequence[str], target: Mapping[str, Any]) -> str:
    """"tflm" or "litert": the recipe's choice, else tflm when a gated
    variant carries a TFLM measurement."""
    if target.get("runtime"):
        return str(target["runtime"])
    return "tflm" if any(r.get("tflm") and r["variant"] in gated for r in rows) else "litert"


def _bytes_check(variant: str, budget: str, what: str, value: int, limit: float) -> dict[str, Any]:
    allowed = budget_bytes(limit)
    passed = value <= allowed
    return {"variant": variant, "budget": budget, "limit": limit, "value": value, "passed": passed,
            "text": f"{what} {value:,} B ({value / KIB:.2f} KiB) {'<=' if passed else '>'} "
                    f"{budget} {limit:g} ({allowed:,} B)"}


def _flash(row: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    size = int(row["size_bytes"])
    extra_kb = float(target.get("runtime_flash_kb") or 0)
    if not extra_kb:
        return _bytes_check(row["variant"], "flash_kb", "size", size, float(target["flash_kb"]))
    extra = math.ceil(extra_kb * KIB)
    return _bytes_check(row["variant"], "flash_kb", f"size {size:,} B + runtime_flash_kb {extra_kb:g} ({extra:,} B) =",
                        size + extra, float(target["flash_kb"]))


def _measured(row: Mapping[str, Any], device: str) -> Mapping[str, Any] | None:
    section = row.get("tflm")
    return section if device == "tflm" and section else None


def device_checks(row: Mapping[str, Any], target: Mapping[str, Any], device: str) -> list[dict[str, Any]]:
    """Every budget check of one gated variant, in a stable order."""
    checks: list[dict[str, Any]] = []
    variant = row["variant"]
    deployed = row.get("model_kind") == TFLITE
    measured = _measured(row, device) if deployed else None
    if measured is not None and not measured.get("runs"):
        checks.append({"variant": variant, "budget": "runtime", "limit": "tflm", "value": None, "passed": False,
                       "text": measured.get("reason") or "does not run on TFLM"})
    if target.get("flash_kb") is not None and deployed:
        checks.append(_flash(row, target))
    runs = measured is not None and measured.get("runs")
    margin = DEFAULT_MARGIN if target.get("arena_margin") is None else float(target["arena_margin"])
    if target.get("ram_kb") is not None and deployed:
        if runs:
            arena = needed_arena(measured)
            checks.append(_bytes_check(variant, "ram_kb", f"TFLM arena {arena:,} B + {margin:.0%} margin =",
                                       arena_with_margin(arena, margin), float(target["ram_kb"])))
        elif measured is None and row.get("arena_bytes") is not None:
            checks.append(_bytes_check(variant, "ram_kb", "arena estimate", int(row["arena_bytes"]),
                                       float(target["ram_kb"])))
    if target.get("max_arena_kb") is not None and deployed:
        if runs:
            checks.append(_bytes_check(variant, "max_arena_kb", "TFLM arena", needed_arena(measured),
                                       float(target["max_arena_kb"])))
        elif measured is None and row.get("arena_bytes") is not None:
            checks.append(_bytes_check(variant, "max_arena_kb", "arena estimate", int(row["arena_bytes"]),
                                       float(target["max_arena_kb"])))
    if target.get("min_accuracy") is not None and not (measured is not None and not runs):
        checks.append(_accuracy(row, float(target["min_accuracy"]), measured if runs else None))
    return checks


def _accuracy(row: Mapping[str, Any], limit: float, measured: Mapping[str, Any] | None) -> dict[str, Any]:
    value = float(measured["accuracy"]) if measured is not None else float(row["accuracy"])
    split = row.get("split", "test")
    what = ("TFLM accuracy" if measured is not None else "accuracy") if split == "test" else f"{split} accuracy"
    passed = value >= limit
    return {"variant": row["variant"], "budget": "min_accuracy", "limit": limit, "value": value,
            "passed": passed, "split": split,
            "text": f"{what} {value:.4f} {'>=' if passed else '<'} min_accuracy {limit:g}"
                    + ("" if split == "test" else f" (on the {split} split, not test)")}


def check_gates(rows: Sequence[Mapping[str, Any]], gated: Sequence[str],
                target: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (variant, budget) check of the gated variants, passed or not."""
    device = runtime(rows, gated, target)
    checks: list[dict[str, Any]] = []
    for row in rows:
        if row["variant"] in gated:
            checks.extend(device_checks(row, target, device))
    return checks


def estimate_warnings(rows: Sequence[Mapping[str, Any]], gated: Sequence[str],
                      target: Mapping[str, Any]) -> list[str]:
    """Gated .tflite variants whose RAM is judged by an estimate although the
    budgets mean TFLM: the user should evaluate them with ``tflm = true``."""
    if runtime(rows, gated, target) != "tflm" or (target.get("ram_kb") is None and target.get("max_arena_kb") is None):
        return []
    missing = [r["variant"] for r in rows
               if r["variant"] in gated and r.get("model_kind") == TFLITE and not r.get("tflm")]
    if not missing:
        return []
    return [f"[target] runtime is tflm but {', '.join(missing)} {'was' if len(missing) == 1 else 'were'} not "
            "evaluated on TFLM: the RAM gate uses the arena estimate there, which is below what TFLM needs; "
            "set tflm = true in their evaluate steps"]
