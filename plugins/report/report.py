"""The ``report`` step type: compare every evaluated variant, and enforce budgets.

Inputs are ``metrics`` artifacts (one per evaluated variant, in the order the
recipe lists them). This module gathers the figures (``collect_variants``)
and checks the budgets (``evaluate_gates``); ``render`` turns the result into
``report.json`` (every figure, per-class metrics and confusion matrices
included), ``report.md`` (compact), ``report.html`` (self-contained: inline
CSS and matplotlib charts as inline SVG, no scripts, no external assets) and
``build.log`` (a plain-text lab log); ``shrinklog`` adds ``shrinklog.txt`` (the
thesis-style run log). Absent data (no TFLM run, no training
history, no per-class figures) is shown as "—" or left out, never an error.

RAM is the tensor arena TFLite Micro measured when the variant ran there
(``metrics["tflm"]``), else the estimate, labelled as one.

The terminal table is not printed here: the core owns the terminal's live
display, so the table goes out line by line through ``ctx.log`` (a compact
view that fits the terminal's width; details are in the files) and the
figures come back as the step's metrics.

Gates. The recipe's ``[target]`` budgets apply to the *gated* variants:
``gate`` lists them by name; by default every .tflite variant is gated (a
Keras model is not what ships to the device). For each gated variant:

* ``flash_kb`` -- .tflite file size (KiB, 1 kB = 1024 B), plus
  ``runtime_flash_kb``, must not exceed it;
* ``ram_kb`` -- the arena TFLM measured plus ``arena_margin`` (the estimate
  only for variants with no TFLM run) must not exceed it; ``max_arena_kb``
  bounds the measured arena alone; a variant TFLM cannot run fails a
  ``runtime`` gate (details in ``gates``);
* ``min_accuracy`` -- accuracy must reach it (also for Keras variants listed
  in ``gate``; flash/RAM budgets are skipped for them: they have no deployed
  size or arena). It is meant for test accuracy: a variant evaluated on the
  val split is still checked, but the text says "val accuracy" and a warning
  says why that figure flatters the model.

Gate texts give exact bytes next to the budget in KiB
(``size 22,440 B (21.91 KiB) > flash_kb 21.9 (22,425 B)``): a rounded figure
could print "21.9 kB > flash_kb 21.9". A ``[target]`` budget that ends up
checking no variant (e.g. only Keras variants are evaluated) is a warning, in
the build log and in every report file, never a silent pass; ``gate = []``
turns the gates off on purpose and stays silent.

A failed gate raises ``GateFailed`` (exit code 3) *after* the report files are
written: the user needs the report most when a gate fails. The core keeps a
gate-failed step's output folder (it is not cached), and the message carries
every failed figure plus the full table.

Determinism: the files hold no timestamp, path or machine figure, so the same
metrics give the same bytes. Latency is machine-dependent; it appears in the
terminal table and the returned metrics, and in the files only with
``latency = true`` (which makes them machine-dependent too). No date is
written, not even from ``SOURCE_DATE_EPOCH``: the variable is not part of the
cache key, so a cached report would show a stale date anyway.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field, field_validator

from tinybuild.api import Artifact, GateFailed, Kind, ParamProblem, Params, StepError, StepType, StepView, hookimpl
from tinybuild.errors import did_you_mean

from tinybuild_plugins.report import gates, pareto, render
from tinybuild_plugins.report import shrinklog as _shrinklog

#: the [target] keys that are budgets (``name`` is only a label)
BUDGETS = ("flash_kb", "ram_kb", "max_arena_kb", "min_accuracy")


class ReportParams(Params):
    title: str | None = Field(
        None, max_length=200,
        description="heading of the report; default: the recipe name when the core provides it, "
                    "else \"tinybuild report\"",
    )
    gate: list[str] | None = Field(
        None,
        description="variant names (evaluated steps' inputs) the [target] budgets apply to; "
                    "default: every .tflite variant; [] gates nothing",
    )
    baseline: str | None = Field(
        None,
        description="variant the others are compared with (accuracy change, gzip ratio); "
                    "default: the first input",
    )
    side_by_side: list[list[str]] = Field(
        default_factory=list,
        description="groups of variants whose confusion matrices are shown next to each other, e.g. "
                    "[[\"train\", \"int8\"]] (an original model and its conversion); the others "
                    "follow in the recipe's order",
    )
    require: Literal["all", "any"] = Field(
        "all",
        description="\"all\": every gated variant must pass every budget (exit code 3 otherwise); "
                    "\"any\": for a sweep, the build passes when at least one gated variant passes "
                    "every budget (the report's answer), and the failures are listed, not fatal",
    )
    latency: bool = Field(
        False,
        description="also write the measured latency into the report files (makes them "
                    "machine-dependent; it is always in the terminal table and step metrics)",
    )

    @field_validator("side_by_side")
    @classmethod
    def _groups(cls, value: list[list[str]]) -> list[list[str]]:
        names = [name for group in value for name in group]
        dupes = sorted({v for v in names if names.count(v) > 1})
        if dupes:
            raise ValueError(f"variants listed twice: {', '.join(dupes)}")
        if any(not group for group in value):
            raise ValueError("a group must name at least one variant")
        return value

    @field_validator("gate")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            dupes = sorted({v for v in value if value.count(v) > 1})
            if dupes:
                raise ValueError(f"variants listed twice: {', '.join(dupes)}")
            if any(not v.strip() for v in value):
                raise ValueError("variant names must not be empty")
        return value


# -- plan-time check of the variant names --------------------------------------------------


def planned_variants(inputs: Sequence[StepView]) -> list[str] | None:
    """The variant names the inputs will have, known from the recipe alone: an
    ``evaluate`` step's variant is the model it evaluates (its first input). None
    when an input is not an ``evaluate`` step (its ``metrics.json`` names the
    variant only when it runs; the run-time check covers it)."""
    if not all(view.use == "evaluate" and view.inputs for view in inputs):
        return None
    return list(dict.fromkeys(view.inputs[0] for view in inputs))


def _unknown_variant(key: str, name: str, variants: Sequence[str], inputs: Sequence[StepView]) -> ParamProblem:
    """The problem for one name that is no variant, with the likeliest fix first."""
    evaluated = {view.name: view.inputs[0] for view in inputs}
    members = [v for v in variants if v.startswith(f"{name}-")]
    if name in evaluated:  # the evaluate step named instead of the model it evaluates
        fix = f"'{name}' is the evaluate step; name the model it evaluates: '{evaluated[name]}'."
    elif members:  # a swept step's table name instead of its members
        fix = f"'{name}' is a sweep; name its members, e.g. '{members[0]}'."
    else:
        fix = did_you_mean(name, variants)
    listing = f"variants (the models the report's evaluate inputs evaluate): {', '.join(variants)}"
    return ParamProblem(key, f"'{name}' is not a variant of this report", f"{fix} {listing}" if fix else listing)


def check_variant_names(params: ReportParams, inputs: Sequence[StepView]) -> list[ParamProblem]:
    """``baseline``, ``gate`` and ``side_by_side`` name variants: an unknown
    name fails ``plan`` (exit 2) instead of the report after every model trained."""
    variants = planned_variants(inputs)
    if variants is None:
        return []
    named = [("baseline", params.baseline)] if params.baseline is not None else []
    named += [(f"gate[{i}]", name) for i, name in enumerate(params.gate or ())]
    named += [(f"side_by_side[{i}][{j}]", name) for i, group in enumerate(params.side_by_side)
              for j, name in enumerate(group)]
    return [_unknown_variant(key, name, variants, inputs) for key, name in named if name not in variants]


# -- collecting the variants --------------------------------------------------------------


def _label(metrics: Mapping[str, Any]) -> str:
    """"tflite int8-only", "keras pruned"...: what kind of artifact the variant is."""
    upstream = metrics.get("upstream") or {}
    if metrics.get("model_kind") == Kind.TFLITE:
        mode = upstream.get("quantize")
        return f"tflite {mode}" if mode else "tflite"
    optimization = (metrics.get("keras") or {}).get("optimization") or upstream.get("optimization")
    return f"keras {optimization}" if optimization and optimization != "none" else "keras"


def _load(artifact: Artifact) -> dict[str, Any]:
    try:
        data = json.loads(artifact.file("metrics.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StepError(f"metrics.json of step '{artifact.step}' is not JSON: {exc}") from None
    for key in ("variant", "accuracy", "size_bytes"):
        if key not in data:
            raise StepError(f"metrics.json of step '{artifact.step}' has no '{key}'; was it written by 'evaluate'?")
    return data


def _finite(value: Any) -> float | None:
    """A number that can be shown, or None (absent, not a number, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _square_counts(matrix: Any, size: int) -> list[list[int]] | None:
    """A confusion matrix as ``size`` rows of ``size`` non-negative ints, or None
    when it is missing or malformed (the report shows "—" rather than failing)."""
    if not isinstance(matrix, list) or len(matrix) != size or size == 0:
        return None
    if not all(isinstance(r, list) and len(r) == size and all(isinstance(v, int) and not isinstance(v, bool)
                                                                and v >= 0 for v in r) for r in matrix):
        return None
    return [list(r) for r in matrix]


def one_vs_rest_accuracy(matrix: Sequence[Sequence[int]], index: int) -> float | None:
    """(TP + TN) / N for one class against all others: how often the model is
    right about "is it this class or not"."""
    total = sum(sum(r) for r in matrix)
    if not total:
        return None
    false_negative = sum(matrix[index]) - matrix[index][index]
    false_positive = sum(r[index] for r in matrix) - matrix[index][index]
    return (total - false_negative - false_positive) / total


def per_class_rows(per_class: Any, matrix: list[list[int]] | None) -> list[dict[str, Any]]:
    """Precision, recall, F1, support and one-vs-rest accuracy per class. The
    one-vs-rest figure is taken from the metrics when ``evaluate`` wrote it, else
    computed from the confusion matrix (same definition)."""
    rows = []
    for index, entry in enumerate(per_class if isinstance(per_class, list) else []):
        if not isinstance(entry, Mapping):
            continue
        given = next((entry[k] for k in ("one_vs_rest_accuracy", "ovr_accuracy", "accuracy") if k in entry), None)
        ovr = _finite(given)
        if ovr is None and matrix is not None and index < len(matrix):
            ovr = one_vs_rest_accuracy(matrix, index)
        support = entry.get("support")
        rows.append({
            "class": str(entry.get("class", index)),
            "precision": _finite(entry.get("precision")),
            "recall": _finite(entry.get("recall")),
            "f1": _finite(entry.get("f1")),
            "support": support if isinstance(support, int) and not isinstance(support, bool) else None,
            "one_vs_rest_accuracy": ovr,
        })
    return rows


def training_history(metrics: Mapping[str, Any]) -> dict[str, list[float]] | None:
    """Per-epoch curves a training step stored (``history = {"loss": [...], ...}``),
    as passed on by ``evaluate`` under ``upstream``. A list under that name is
    something else (the optimizations a model went through) and is ignored."""
    for source in (metrics.get("upstream") or {}, metrics):
        history = source.get("history") if isinstance(source, Mapping) else None
        if isinstance(history, Mapping):
            curves = {str(k): [float(v) for v in values] for k, values in sorted(history.items())
                      if isinstance(values, list) and values and all(_finite(v) is not None for v in values)}
            if curves:
                return curves
    return None


def tflm_facts(metrics: Mapping[str, Any], classes: int) -> dict[str, Any] | None:
    """What a TFLite Micro run found (``metrics["tflm"]``), keys missing as None."""
    tflm = metrics.get("tflm")
    if not isinstance(tflm, Mapping):
        return None
    matrix = _square_counts(tflm.get("confusion_matrix"), classes)
    return {
        "runs": bool(tflm.get("runs")),
        "reason": str(tflm["reason"]) if tflm.get("reason") else None,
        "arena_bytes": tflm.get("arena_bytes") if isinstance(tflm.get("arena_bytes"), int) else None,
        "arena_min_bytes": tflm.get("arena_min_bytes") if isinstance(tflm.get("arena_min_bytes"), int) else None,
        "accuracy": _finite(tflm.get("accuracy")),
        "correct": tflm.get("correct"),
        "samples": tflm.get("samples"),
        "per_class": per_class_rows(tflm.get("per_class"), matrix),
        "confusion_matrix": matrix,
        "max_abs_diff_vs_litert": _finite(tflm.get("max_abs_diff_vs_litert")),
        "argmax_agreement": _finite(tflm.get("argmax_agreement")),
    }


def scored_on(metrics: Mapping[str, Any]) -> str:
    """The runtime whose predictions the accuracy and confusion matrix are:
    "tflm" where evaluate fell back to TFLite Micro because LiteRT cannot load
    the model (``metrics["scored_on"]``), else LiteRT for a .tflite, Keras
    otherwise -- so no report labels a TFLM figure as LiteRT's."""
    if metrics.get("scored_on") == "tflm":
        return "tflm"
    return "litert" if metrics.get("model_kind") == "tflite" else "keras"


def collect_variants(inputs: Sequence[Artifact], baseline: str | None, with_latency: bool) -> list[dict[str, Any]]:
    """One row per input, with comparisons against the baseline variant."""
    loaded = [(artifact, _load(artifact)) for artifact in inputs]
    names = [m["variant"] for _, m in loaded]
    if baseline is not None and baseline not in names:
        raise StepError(f"report baseline '{baseline}' is not an evaluated variant; variants: {', '.join(names)}")
    base = next(m for _, m in loaded if m["variant"] == (baseline or names[0]))
    rows = []
    for artifact, m in loaded:
        arena = (m.get("arena") or {}).get("peak_bytes")
        per_class = m.get("per_class") if isinstance(m.get("per_class"), list) else []
        names_given = m.get("class_names")
        class_names = ([str(c) for c in names_given] if isinstance(names_given, list) and len(names_given) == len(per_class)
                       else [str(c.get("class", i)) if isinstance(c, Mapping) else str(i) for i, c in enumerate(per_class)])
        matrix = _square_counts(m.get("confusion_matrix"), len(class_names))
        tflm = tflm_facts(m, len(class_names))
        measured_arena = tflm["arena_bytes"] if tflm and tflm["runs"] else None
        compression = m.get("compression") if isinstance(m.get("compression"), Mapping) else None
        row = {
            "variant": m["variant"],
            "evaluated_by": artifact.step,
            "model_kind": m.get("model_kind"),
            "split": m.get("split", "test"),
            "label": _label(m),
            "accuracy": m["accuracy"],
            "scored_on": scored_on(m),
            "correct": m.get("correct"),
            "samples": m.get("samples"),
            "macro_f1": m.get("macro_f1"),
            "per_class_f1": [None if c["f1"] is None else round(c["f1"], 6) for c in per_class_rows(per_class, matrix)],
            "classes": class_names,
            "per_class": per_class_rows(per_class, matrix),
            "confusion_matrix": matrix,
            "size_bytes": m["size_bytes"],
            "gzip_bytes": m.get("gzip_bytes"),
            "param_count": m.get("param_count"),
            "sparsity": m.get("sparsity"),
            "macs": m.get("macs") if isinstance(m.get("macs"), int) else None,
            "arena_bytes": arena,
            "ram_bytes": measured_arena if measured_arena is not None else arena,
            "ram_source": "tflm" if measured_arena is not None else ("estimate" if arena is not None else None),
            "tflm": tflm,
            "compression": {k: v for k, v in sorted(compression.items()) if isinstance(v, (int, float, str, bool))}
                           if compression else None,
            "history": training_history(m),
            "accuracy_change_points": round((m["accuracy"] - base["accuracy"]) * 100, 4),
            "gzip_ratio": (round(base["gzip_bytes"] / m["gzip_bytes"], 4)
                           if m.get("gzip_bytes") and base.get("gzip_bytes") else None),
            "upstream": {k: v for k, v in (m.get("upstream") or {}).items() if k != "history" or isinstance(v, list)},
        }
        if with_latency:
            row["latency_ms"] = artifact.metrics.get("latency_ms")
        rows.append(row)
    return rows


# -- gates --------------------------------------------------------------------------------


def gated_variants(rows: Sequence[Mapping[str, Any]], gate: list[str] | None) -> list[str]:
    names = [r["variant"] for r in rows]
    if gate is None:
        return [r["variant"] for r in rows if r["model_kind"] == Kind.TFLITE]
    unknown = [g for g in gate if g not in names]
    if unknown:
        raise StepError(f"report gate names unknown variants: {', '.join(unknown)}; "
                        f"evaluated variants: {', '.join(names)}")
    return list(gate)


def check_gates(rows: Sequence[Mapping[str, Any]], gated: Sequence[str], target: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (variant, budget) check, passed or not, in a stable order (see ``gates``)."""
    return gates.check_gates(rows, gated, target)


def gate_warnings(rows: Sequence[Mapping[str, Any]], gated: Sequence[str], gate: list[str] | None,
                  target: Mapping[str, Any], checks: Sequence[Mapping[str, Any]]) -> list[str]:
    """What a user who wrote [target] budgets must not miss: a budget that
    checked nothing (the build would otherwise pass silently), and accuracy
    gated on the val split. ``gate = []`` means "check nothing" and is silent."""
    if gate == []:
        return []
    warnings = gates.estimate_warnings(rows, gated, target)
    checked = {c["budget"] for c in checks}
    unchecked = [b for b in BUDGETS if target.get(b) is not None and b not in checked]
    if unchecked:
        budgets = ", ".join(f"{b} = {target[b]:g}" for b in unchecked)
        if not gated:
            kinds = ", ".join(f"{r['variant']} ({r['label']})" for r in rows)
            reason = (f"no variant is gated (by default only .tflite variants are; evaluated: {kinds}). "
                      "Evaluate a .tflite variant, or list the variants to check in the report's gate")
        else:
            reason = (f"the gated variants ({', '.join(gated)}) are Keras models, which have no deployed "
                      "file size or tensor arena. Gate a .tflite variant")
        warnings.append(f"[target] {budgets} {'checks' if len(unchecked) == 1 else 'check'} no variant: "
                        f"{reason}; set gate = [] in the report to check no budget on purpose")
    for check in checks:
        if check["budget"] == "min_accuracy" and check.get("split", "test") != "test":
            warnings.append(
                f"variant {check['variant']}: min_accuracy is checked against {check['split']}-split accuracy "
                f"(its evaluate step has split = \"{check['split']}\"); training chose its best epoch on the "
                "val split, so that figure is optimistic. Evaluate the test split to gate on test accuracy")
    return warnings


# -- the step -----------------------------------------------------------------------------


def evaluate_gates(rows: Sequence[Mapping[str, Any]], gate: list[str] | None,
                   target: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """(gated variants, every check, warnings): the gate logic in one call, kept
    apart from rendering so it can change (or move) without touching the rest."""
    gated = gated_variants(rows, gate)
    checks = check_gates(rows, gated, target)
    return gated, checks, gate_warnings(rows, gated, gate, target, checks)


def run(ctx: Any, inputs: Sequence[Artifact], params: ReportParams) -> dict[str, Any]:
    rows = collect_variants(inputs, params.baseline, params.latency)
    unknown = [n for group in params.side_by_side for n in group if n not in {r["variant"] for r in rows}]
    if unknown:
        raise StepError(f"report side_by_side names unknown variants: {', '.join(unknown)}; "
                        f"evaluated variants: {', '.join(r['variant'] for r in rows)}")
    target = {k: v for k, v in dict(ctx.target or {}).items() if v is not None}
    gated, checks, warnings = evaluate_gates(rows, params.gate, target)
    failures = [c for c in checks if not c["passed"]]
    # the Pareto front and the sweep's answer (pareto.py); require = "any" passes on an answer
    front = pareto.front(rows)
    pareto.mark(rows, front)
    answer = pareto.answer(rows, gated, checks, target)
    fatal = failures if params.require == "all" or answer["variant"] is None else []
    title = params.title or ctx.recipe_name or "tinybuild report"
    report = {
        "title": title,
        "seed": ctx.seed,
        "target": target,
        "baseline": params.baseline or rows[0]["variant"],
        "gated": gated,
        "gates": checks,
        "gates_off": params.gate == [],
        "warnings": warnings,
        "passed": not fatal,
        "require": params.require,
        "pareto": front,
        "answer": answer,
        "side_by_side": params.side_by_side,
        "variants": rows,
    }
    render.write_files(ctx.out_dir, report)
    # -- further report files, one clearly separated call each --
    # shrinklog.txt: the thesis-style run log (its own module; no rendering here)
    _shrinklog.write(ctx.out_dir, title, inputs, params.baseline)

    latencies = {a.metrics.get("variant", a.step): a.metrics.get("latency_ms") for a in inputs}
    # one multi-line message: the console shows it as a block indented by 4 columns
    table = render.text_table(report, latencies, width=render.terminal_width() - 4)
    for warning in warnings:
        ctx.log(f"warning: {warning}")
    if fatal:  # the failure message carries the table: logging it too printed it twice
        summary = "; ".join(f"variant {c['variant']}: {c['text']}" for c in failures)
        raise GateFailed(f"budget gate failed: {summary}\n{table}")
    ctx.log(table)
    return {
        "variants": len(rows),
        "gated": gated,
        "gates_checked": len(checks),
        "warnings": warnings,
        "passed": True,
        "best_accuracy": max(rows, key=lambda r: r["accuracy"])["variant"],
        "smallest": min(rows, key=lambda r: r["size_bytes"])["variant"],
        "latency_ms": latencies,
        "pareto_front": front["front"],
        "answer": answer["variant"],
        "gates_failed": len(failures),
    }


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [
        StepType(
            name="report",
            version="1.0",
            produces=Kind.REPORT,
            consumes=(Kind.METRICS,),
            params=ReportParams,
            run=run,
            arity=(1, None),
            toolchain=("rich", "jinja2", "matplotlib"),
            description="Compare evaluated variants (report.md/.json/.html, build.log) and enforce "
                        "the [target] budgets (exit code 3)",
            fingerprint_modules=("tinybuild_plugins.report.render", "tinybuild_plugins.report.plots",
                                 "tinybuild_plugins.report.shrinklog", "tinybuild_plugins.report.gates",
                                 "tinybuild_plugins.report.pareto", "tinybuild_plugins.tflite.tflm"),
            check_inputs=check_variant_names,  # unknown variant names fail plan (the run checks again)
            input_files=render.template_files,  # the templates shape the files: their content is in the key
            uses_target=True,
            uses_input_metrics=True,  # latency comes from the evaluations' step metrics (volatile: not keyed)
            volatile_metrics=("latency_ms",),
        )
    ]
