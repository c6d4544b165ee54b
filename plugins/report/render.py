"""Rendering a report dict (built by ``report.py``) as files and a terminal table.

``report.json`` is the dict itself; ``report.md`` and ``report.html`` come from
jinja2 templates (``templates/``), the HTML's charts from ``plots`` (matplotlib
SVG, inlined); ``build.log`` and the terminal table are plain text built here.

Pure functions of the report: no clock, no paths, no randomness, so the same
metrics always render to the same bytes. The HTML is one file with inline CSS
and inline SVG; it loads nothing and runs no script, so it can be attached to
a CI run or mailed as is. jinja2 and matplotlib are imported only when a file
is rendered: importing this module (which every plan does, through the step
type's registration) costs nothing.

Cells are formatted here, not in the templates, so that the Markdown, the
HTML and the terminal say the same thing in the same words; anything absent
(a variant TFLM never ran, a Keras model's arena) prints as "—".
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

TEMPLATES = Path(__file__).resolve().parent / "templates"
HTML_TEMPLATE = "report.html.j2"
MD_TEMPLATE = "report.md.j2"
DASH = "—"

# -- shared cell formatting ---------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _int(value: Any) -> str:
    return DASH if _number(value) is None else f"{int(value):,}"


def _pct(value: Any, decimals: int = 2) -> str:
    return DASH if _number(value) is None else f"{value * 100:.{decimals}f}%"


def _ratio(value: Any) -> str:
    return DASH if _number(value) is None else f"{value:.2f}×"


def _points(value: Any) -> str:
    return DASH if _number(value) is None else f"{value:+.2f}"


def _ms(value: Any) -> str:
    return DASH if _number(value) is None else f"{value:.3f}"


def _fraction(value: Any) -> str:
    return DASH if _number(value) is None else f"{value:.3f}"


def _gate_status(report: Mapping[str, Any], variant: str) -> str:
    checks = [c for c in report["gates"] if c["variant"] == variant]
    if variant not in report["gated"]:
        return "not gated"
    if not checks:
        return "no budget"
    return "pass" if all(c["passed"] for c in checks) else "FAIL"


def _target_line(report: Mapping[str, Any]) -> str:
    target = report["target"]
    parts = [f"{k} = {target[k]:g}" if isinstance(target[k], (int, float)) else f"{k} = {target[k]}"
             for k in sorted(target)]
    return ", ".join(parts) if parts else "none"


#: the runtime that produced a row's predictions, as the report names it
RUNTIME_NAMES = {"tflm": "TFLite Micro", "litert": "LiteRT", "keras": "Keras"}


def _runtime(row: Mapping[str, Any]) -> str:
    scored = row.get("scored_on") or ("litert" if row.get("model_kind") == "tflite" else "keras")
    return RUNTIME_NAMES.get(scored, str(scored))


def _accuracy(row: Mapping[str, Any], mark_runtime: bool = True) -> str:
    """The accuracy cell; figures not measured on the test split say which
    split, and figures TFLite Micro scored (LiteRT cannot load the model) say
    "TFLM" -- the column is otherwise LiteRT's (or Keras's)."""
    marks = [] if row.get("split", "test") == "test" else [str(row["split"])]
    if mark_runtime and row.get("scored_on") == "tflm":
        marks.append("TFLM")
    return _pct(row["accuracy"]) + (f" ({', '.join(marks)})" if marks else "")


def _ram(row: Mapping[str, Any]) -> str:
    """RAM: the arena measured on TFLite Micro, else the estimate, marked "est"."""
    if row.get("ram_bytes") is None:
        return DASH
    return _int(row["ram_bytes"]) + (" est" if row.get("ram_source") == "estimate" else "")


def _tflm_short(row: Mapping[str, Any]) -> str:
    """"yes 98.05%", "no" or "—" (not run on TFLM); the reason is given apart."""
    tflm = row.get("tflm")
    if not tflm:
        return DASH
    if not tflm["runs"]:
        return "no"
    return "yes" + (f" {_pct(tflm['accuracy'])}" if tflm.get("accuracy") is not None else "")


#: how tflite/tflm_child.py words a refusal; every place here says "does not run
#: on TFLite Micro" itself, so the cause is shown without it (said once, not twice)
REFUSAL_PREFIX = "does not run on TFLM: "


def _tflm_reason(row: Mapping[str, Any]) -> str | None:
    """Why TFLite Micro cannot run the variant (the cause only), or None."""
    tflm = row.get("tflm")
    if tflm and not tflm["runs"]:
        reason = tflm.get("reason") or "no reason given"
        return reason[len(REFUSAL_PREFIX):] if reason.startswith(REFUSAL_PREFIX) else reason
    return None


def _gate_table(report: Mapping[str, Any]) -> dict[str, Any]:
    """The checks as a grid: one row per gated variant, one column per budget."""
    budgets = list(dict.fromkeys(c["budget"] for c in report["gates"]))
    rows: dict[str, dict[str, Any]] = {}
    for check in report["gates"]:
        rows.setdefault(check["variant"], {})[check["budget"]] = {"text": check["text"], "passed": check["passed"]}
    return {"budgets": budgets, "rows": [(variant, [cells.get(b) for b in budgets]) for variant, cells in rows.items()]}


def _compression_line(row: Mapping[str, Any]) -> str | None:
    """"22,440 B → 12,784 B" for a variant whose weights were LUT-compressed."""
    compression = row.get("compression") or {}
    before, after = _number(compression.get("bytes_before")), _number(compression.get("bytes_after"))
    if before is None or after is None:
        return None
    return f"{_int(before)} B → {_int(after)} B"


def _no_gates_line(report: Mapping[str, Any]) -> str:
    """Why the gate list is empty, in words."""
    if not any(k in report["target"] for k in ("flash_kb", "ram_kb", "max_arena_kb", "min_accuracy")):
        return "No [target] budgets."
    if report.get("gates_off"):
        return "No variant is gated (gate = [])."
    return "No budget was checked: see the warnings."


def _verdict(report: Mapping[str, Any]) -> str:
    if not report["passed"]:
        return "GATE FAILED"
    failed = {c["variant"] for c in report["gates"] if not c["passed"]}
    if failed:  # require = "any": a sweep passes on its answer
        return (f"passed on its answer, {report['answer']['variant']} (require = \"any\"; "
                f"{len(failed)} of {len(report['gated'])} gated variants fail a budget)")
    return "no gate failed (see the warnings)" if report.get("warnings") else "all gates passed"


def _has_latency(report: Mapping[str, Any]) -> bool:
    return any("latency_ms" in r for r in report["variants"])


def _has_tflm(report: Mapping[str, Any]) -> bool:
    return any(r.get("tflm") for r in report["variants"])


NOTES = (
    "Flash: the model's bytes as stored on the device (the .tflite file; for a Keras model, its weight files); "
    "gzip (level 9, mtime 0) is only a measure of how compressible they are. "
    "RAM: the tensor arena TensorFlow Lite Micro measured when the variant ran there; \"est\" marks the "
    "estimate (peak of live activation tensors; ignores alignment, scratch buffers and the runtime's "
    "bookkeeping, so a real arena is larger). "
    "Sparsity: zero weights in conv/dense kernels."
)
LATENCY_NOTE = ("Latency: median of N single-sample (batch 1) inferences on the build machine's CPU "
                "(LiteRT for .tflite, TensorFlow for Keras); not a microcontroller timing.")


# -- the summary table (Markdown, HTML, terminal) ---------------------------------------


def summary_columns(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, header) of the summary table's columns: what a device decision
    needs first (flash, RAM, TFLM, accuracy, gate), so a narrow window that
    scrolls the table still shows them; comparisons and model facts after."""
    columns = [("variant", "Variant"), ("label", "Kind"), ("flash", "Flash (B)"), ("ram", "RAM (B)")]
    if _has_tflm(report):
        columns.append(("tflm", "On TFLM"))
    columns += [("accuracy", "Accuracy"), ("gate", "Gate")]
    if report.get("pareto"):
        columns.append(("pareto", "Pareto"))
    columns += [("change", "Δ acc (pts)"), ("gzip", "gzip (B)"),
                ("gzip_ratio", "gzip ×smaller"), ("macro_f1", "Macro-F1"), ("params", "Params"),
                ("sparsity", "Sparsity")]
    if any(r.get("macs") is not None for r in report["variants"]):
        columns.append(("macs", "MACs"))
    if _has_latency(report):  # written into the files only with the report's latency = true
        columns.append(("latency", "Latency (ms)"))
    return columns


#: report.md's compact table, in reading order
MARKDOWN_COLUMNS = ["variant", "label", "accuracy", "change", "flash", "gzip", "gzip_ratio", "ram", "tflm",
                    "latency", "gate", "pareto"]


def summary_cells(report: Mapping[str, Any], row: Mapping[str, Any],
                  latency: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Every summary cell of one variant, formatted."""
    measured = latency.get(row["variant"]) if latency is not None else row.get("latency_ms")
    return {
        "variant": row["variant"],
        "label": row["label"],
        "accuracy": _accuracy(row),
        "change": _points(row["accuracy_change_points"]),
        "flash": _int(row["size_bytes"]),
        "gzip": _int(row["gzip_bytes"]),
        "gzip_ratio": _ratio(row["gzip_ratio"]),
        "ram": _ram(row),
        "tflm": _tflm_short(row),
        "macro_f1": _fraction(row.get("macro_f1")),
        "params": _int(row["param_count"]),
        "sparsity": _pct(row["sparsity"]),
        "macs": _int(row.get("macs")),
        "latency": _ms(measured),
        "gate": _gate_status(report, row["variant"]),
        "pareto": _pareto_cell(report, row),
    }


# -- the Pareto front and the answer (computed in pareto.py) -----------------------------


def _pareto_cell(report: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    """"front" / "no" / "—" (not a candidate), with "answer" on the answer."""
    mark = {"front": "front", "dominated": "no"}.get(row.get("pareto") or "", DASH)
    return mark + (", answer" if (report.get("answer") or {}).get("variant") == row["variant"] else "")


def front_line(report: Mapping[str, Any]) -> str | None:
    """"Pareto front (flash, RAM, accuracy): a, b" -- None for a report without one."""
    result = report.get("pareto")
    if not result or not result.get("front"):
        return None
    objectives = ", ".join("RAM" if o == "ram" else o for o in result["objectives"])
    return f"Pareto front ({objectives}): {', '.join(result['front'])}"


def answer_line(report: Mapping[str, Any]) -> str | None:
    """"Answer: X: the smallest ... " -- only where [target] has budgets."""
    answer = report.get("answer")
    if not answer or (answer["variant"] is None and not any(
            k in report["target"] for k in ("flash_kb", "ram_kb", "min_accuracy"))):
        return None
    return f"Answer: {answer['text']}"


# -- files --------------------------------------------------------------------------------


def template_files(params: Any = None) -> dict[str, Path]:
    """The templates the step reads: their content enters its cache key
    (``StepType.input_files``), so editing one rebuilds the report."""
    return {f"template {name}": TEMPLATES / name for name in (HTML_TEMPLATE, MD_TEMPLATE)}


def _environment(autoescape: bool) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,  # a template naming a missing key is a bug, not a blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = lambda text: str(text).replace("|", "\\|")
    return env


def _notes(report: Mapping[str, Any]) -> list[str]:
    return [NOTES] + ([LATENCY_NOTE] if _has_latency(report) else [])


def _page(report: Mapping[str, Any]) -> dict[str, Any]:
    """What both templates show, formatted."""
    columns = summary_columns(report)
    classes = report["variants"][0]["classes"] if report["variants"] else []
    same_classes = all(r["classes"] == classes for r in report["variants"])
    return {
        "title": report["title"],
        "seed": report["seed"],
        "target_line": _target_line(report),
        "baseline": report["baseline"],
        "verdict": _verdict(report),
        "passed": report["passed"],
        "columns": columns,
        "rows": [summary_cells(report, row) for row in report["variants"]],
        "gates": [{"variant": c["variant"], "text": c["text"], "passed": c["passed"]} for c in report["gates"]],
        "gate_table": _gate_table(report),
        "no_gates": _no_gates_line(report),
        "warnings": list(report.get("warnings") or []),
        "tflm_reasons": [(r["variant"], _tflm_reason(r)) for r in report["variants"] if _tflm_reason(r)],
        "compressed": [(r["variant"], line) for r in report["variants"] if (line := _compression_line(r))],
        "f1_classes": classes if same_classes else [],
        "f1_rows": [(r["variant"], [_fraction(f) for f in r["per_class_f1"]]) for r in report["variants"]],
        "notes": _notes(report),
        "front_line": front_line(report),
        "answer_line": answer_line(report),
    }


def markdown(report: Mapping[str, Any]) -> str:
    page = _page(report)
    # the Markdown table is the compact one: the HTML and report.json hold the rest
    headers = dict(page["columns"])
    page["columns"] = [(key, headers[key]) for key in MARKDOWN_COLUMNS if key in headers]
    return _environment(autoescape=False).get_template(MD_TEMPLATE).render(**page)


# -- HTML ---------------------------------------------------------------------------------


def _heat(count: int, row_total: int, diagonal: bool) -> tuple[str, str]:
    """(background, text colour) of a confusion-matrix cell: blue for correct
    predictions, vermilion for errors (Okabe-Ito), stronger with the share of
    the true class's samples; errors on a square-root scale so that a few
    stand out."""
    share = count / row_total if row_total else 0.0
    if count == 0:
        return "transparent", "#999"
    alpha = share if diagonal else min(1.0, math.sqrt(share))
    alpha = max(alpha, 0.08)
    rgb = "0,114,178" if diagonal else "213,94,0"
    return f"rgba({rgb},{alpha:.3f})", ("#fff" if alpha > 0.55 else "#222")


def confusion_view(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> dict[str, Any]:
    rows = []
    for i, counts in enumerate(matrix):
        total = sum(counts)
        cells = []
        for j, count in enumerate(counts):
            background, colour = _heat(count, total, i == j)
            share = f"{count / total * 100:.1f}%" if total else DASH
            cells.append({"count": count, "style": f"background:{background};color:{colour}",
                          "title": f"true {classes[i]}, predicted {classes[j]}: {count} ({share} of {classes[i]})"})
        rows.append({"name": classes[i], "cells": cells, "total": total})
    return {"classes": list(classes), "rows": rows, "vertical": any(len(c) > 3 for c in classes)}


def per_class_view(per_class: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [{"class": c["class"], "precision": _fraction(c["precision"]), "recall": _fraction(c["recall"]),
             "f1": _fraction(c["f1"]), "support": _int(c["support"]),
             "ovr": _pct(c["one_vs_rest_accuracy"])} for c in per_class]


def _card_groups(report: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """Cards in rows: each ``side_by_side`` group on its own, then the other
    variants in the recipe's order."""
    cards = {card["variant"]: card for card in _variant_cards(report)}
    groups = [[cards[n] for n in group if n in cards] for group in report.get("side_by_side") or []]
    grouped = {n for group in report.get("side_by_side") or [] for n in group}
    rest = [card for name, card in cards.items() if name not in grouped]
    return [g for g in groups if g] + ([rest] if rest else [])


def _variant_cards(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One card per evaluated variant with a confusion matrix: the matrix, the
    per-class table and, when TFLite Micro ran it and predicted differently,
    TFLM's matrix beside it."""
    cards = []
    for row in report["variants"]:
        if row.get("confusion_matrix") is None:
            continue
        tflm = row.get("tflm") or {}
        tflm_matrix = tflm.get("confusion_matrix") if tflm.get("runs") else None
        cards.append({
            "variant": row["variant"],
            "label": row["label"],
            "accuracy": _accuracy(row, mark_runtime=False),  # the card names the runtime beside it
            "runtime": _runtime(row),
            "matrix": confusion_view(row["classes"], row["confusion_matrix"]),
            "per_class": per_class_view(row.get("per_class") or []),
            "tflm_matrix": (confusion_view(row["classes"], tflm_matrix)
                            if tflm_matrix is not None and tflm_matrix != row["confusion_matrix"] else None),
            "tflm_line": _tflm_line(row),
        })
    return cards


def _tflm_line(row: Mapping[str, Any]) -> str | None:
    tflm = row.get("tflm")
    if not tflm:
        return None
    if not tflm["runs"]:
        return f"TFLite Micro cannot run it: {_tflm_reason(row)}"
    parts = [f"TFLite Micro: accuracy {_pct(tflm['accuracy'])}" if tflm.get("accuracy") is not None else "TFLite Micro runs it"]
    if tflm.get("arena_bytes") is not None:
        parts.append(f"arena {_int(tflm['arena_bytes'])} B")
    if tflm.get("argmax_agreement") is not None:
        parts.append(f"same prediction as LiteRT on {_pct(tflm['argmax_agreement'])} of samples")
    if tflm.get("max_abs_diff_vs_litert") is not None:
        parts.append(f"max |output − LiteRT| {tflm['max_abs_diff_vs_litert']:.3g}")
    return ", ".join(parts)


def _chart_points(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    points = []
    for index, row in enumerate(report["variants"]):
        tflm = row.get("tflm") or {}
        accuracy = tflm.get("accuracy") if tflm.get("runs") and tflm.get("accuracy") is not None else row["accuracy"]
        points.append({"index": index, "variant": row["variant"], "label": row["label"],
                       "flash": row["size_bytes"], "ram": row.get("ram_bytes"),
                       "ram_measured": row.get("ram_source") == "tflm", "accuracy": _number(accuracy),
                       "front": row.get("pareto") == "front"})
    return points


def html(report: Mapping[str, Any]) -> str:
    from tinybuild_plugins.report import plots

    page = _page(report)
    page["chart"] = plots.size_accuracy_svg(_chart_points(report), report["target"])
    page["card_groups"] = _card_groups(report)
    page["grouped"] = bool(report.get("side_by_side"))
    page["curves"] = [(row["variant"], svg) for row in report["variants"]
                      if row.get("history") and (svg := plots.history_svg(row["variant"], row["history"]))]
    page["budgets"] = {k: f"{report['target'][k]:g}" for k in ("flash_kb", "ram_kb", "min_accuracy")
                       if _number(report["target"].get(k)) is not None}
    return _environment(autoescape=True).get_template(HTML_TEMPLATE).render(**page)


# -- plain text: the lab log and the terminal table ---------------------------------------


def lab_log(report: Mapping[str, Any]) -> str:
    """A build log in the spirit of a thesis lab notebook: what was built, with
    which settings, and what came out -- one paragraph per variant."""
    lines = [
        f"tinybuild build log: {report['title']}",
        f"seed: {report['seed']}",
        f"target: {_target_line(report)}",
        f"baseline: {report['baseline']}",
        f"variants: {len(report['variants'])}",
        "",
    ]
    for number, row in enumerate(report["variants"], start=1):
        lines.append(f"[{number}] {row['variant']} ({row['label']}), evaluated by '{row['evaluated_by']}'")
        upstream = row.get("upstream") or {}
        if upstream:
            settings = ", ".join(f"{k}={_plain(v)}" for k, v in sorted(upstream.items()))
            lines.append(f"    from its step: {settings}")
        correct = f" ({row['correct']}/{row['samples']})" if row.get("correct") is not None else ""
        split = row.get("split", "test")
        on_split = "" if split == "test" else f" (on the {split} split)"
        lines.append(f"    accuracy ({_runtime(row)}): {row['accuracy']:.4f}{correct}{on_split}, "
                     f"change vs baseline {_points(row['accuracy_change_points'])} points")
        lines.append(
            f"    size: {_int(row['size_bytes'])} B, gzip {_int(row['gzip_bytes'])} B "
            f"({_ratio(row['gzip_ratio'])} smaller than baseline), params {_int(row['param_count'])}, "
            f"kernel sparsity {_pct(row['sparsity'])}"
        )
        if row.get("arena_bytes") is not None:
            lines.append(f"    tensor arena estimate: {_int(row['arena_bytes'])} B")
        if _tflm_line(row):
            lines.append(f"    {_tflm_line(row)}")
        if "latency_ms" in row:
            lines.append(f"    latency: {_ms(row['latency_ms'])} ms (median, batch 1, host CPU; not a microcontroller timing)")
        lines.append(f"    gate: {_gate_status(report, row['variant'])}")
        lines.append("")
    lines.append("gates:")
    for check in report["gates"] or []:
        lines.append(f"    {check['variant']}: {check['text']} -> {'pass' if check['passed'] else 'FAIL'}")
    if not report["gates"]:
        lines.append(f"    none: {_no_gates_line(report)}")
    for warning in report.get("warnings") or []:
        lines.append(f"warning: {warning}")
    for line in (front_line(report), answer_line(report)):
        if line:
            lines.append(line)
    lines.append(f"result: {_verdict(report)}")
    lines.append("")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return str(value)


#: the terminal's columns, most important first: the first five always stay;
#: the others are dropped, last first, until the table fits
TERMINAL_COLUMNS = ["variant", "flash", "ram", "accuracy", "gate", "pareto",
                    "latency", "tflm", "label", "change", "gzip", "params", "sparsity"]
TERMINAL_HEADERS = {"variant": "Variant", "flash": "Flash B", "ram": "RAM B", "accuracy": "Accuracy",
                    "gate": "Gate", "latency": "Lat. ms", "tflm": "TFLM", "label": "Kind", "change": "Δ pts",
                    "gzip": "gzip B", "params": "Params", "sparsity": "Sparsity", "pareto": "Pareto"}


def terminal_width(default: int = 80) -> int:
    """Columns of the terminal the build runs in: ``$COLUMNS``, else the size of
    whichever standard stream is still a terminal, else ``default`` (80, which
    every terminal has). A step runs with descriptors 1 and 2 pointing at its
    log file, so without ``$COLUMNS`` this is usually the default: the compact
    table, which is readable everywhere."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    except ValueError:
        pass
    for stream in ("__stderr__", "__stdout__"):
        handle = getattr(sys, stream, None)
        try:
            return os.get_terminal_size(handle.fileno()).columns
        except (AttributeError, OSError, ValueError):
            continue
    return default


def _rich_table(report: Mapping[str, Any], keys: Sequence[str], cells: Sequence[Mapping[str, str]],
                titled: bool = True) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.ASCII2, title=report["title"] if titled else None, title_justify="left")
    numeric = {"flash", "ram", "accuracy", "latency", "change", "gzip", "params", "sparsity"}
    for key in keys:
        table.add_column(TERMINAL_HEADERS[key], justify="right" if key in numeric else "left",
                         no_wrap=True, overflow="ellipsis")
    for row in cells:
        table.add_row(*(row[key] for key in keys))
    return table


def _print(renderable: Any, width: int) -> list[str]:
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False,
            highlight=False).print(renderable)
    return [line.rstrip() for line in buffer.getvalue().splitlines()]


def sweep_short_names(names: Sequence[str]) -> tuple[list[str], str | None]:
    """Sweep members are named ``<step>-<param>_<value>-...`` (tinybuild.matrix);
    in a narrow terminal show only the values that differ (``0p5-8-int8``) and
    the pattern once (``tfl-final_sparsity_*-clusters_*-quantize_*``). Names
    of another shape, or of different lengths, stay as they are: (names, None)."""
    parts = [name.split("-") for name in names]
    if len(names) < 2 or len({len(p) for p in parts}) != 1 or len(parts[0]) < 2:
        return list(names), None
    short: list[list[str]] = [[] for _ in names]
    pattern = []
    for segments in zip(*parts):
        if len(set(segments)) == 1:
            pattern.append(segments[0])
            continue
        prefix = os.path.commonprefix(list(segments))
        prefix = prefix[: prefix.rfind("_") + 1]
        if not prefix:
            return list(names), None
        pattern.append(prefix + "*")
        for i, segment in enumerate(segments):
            short[i].append(segment[len(prefix):])
    out = ["-".join(s) for s in short]
    if len(set(out)) != len(out):
        return list(names), None
    return out, "-".join(pattern)


def text_table(report: Mapping[str, Any], latency: Mapping[str, Any] | None = None, width: int = 80) -> str:
    """The comparison table as plain text for a terminal ``width`` columns wide:
    one line per variant, never wrapped. Columns are dropped, least important
    first, until it fits (the files have every figure); notes below the table
    say what "est" means and why a variant does not run on TFLite Micro."""
    measured = dict(latency) if latency and any(v is not None for v in latency.values()) else None
    cells = [summary_cells(report, row, measured) for row in report["variants"]]
    pattern = None
    full = _print(_rich_table(report, TERMINAL_COLUMNS[:6], cells, False), 10_000)
    if max(len(line) for line in full) > width:  # sweep members' long names: show their values only
        short, pattern = sweep_short_names([c["variant"] for c in cells])
        if pattern:
            cells = [{**c, "variant": name} for c, name in zip(cells, short)]
    available = [k for k in TERMINAL_COLUMNS
                 if not (k == "latency" and measured is None and not _has_latency(report))
                 and not (k == "tflm" and not _has_tflm(report))
                 and not (k == "pareto" and not report.get("pareto"))]
    keys = list(available)
    # measured without the title: a long title wraps, a row must not
    while len(keys) > 5 and max(len(line) for line in _print(_rich_table(report, keys, cells, False), 10_000)) > width:
        keys.pop()
    lines = _print(_rich_table(report, keys, cells), width)
    notes = [f"Variant: {pattern}" if pattern else None, front_line(report), answer_line(report)]
    notes = [line for line in notes if line]
    if any(r.get("ram_source") == "estimate" for r in report["variants"]):
        notes.append("RAM: \"est\" = estimate (no TFLite Micro measurement)")
    if "latency" in keys:
        notes.append("Lat. ms: median batch-1 latency on the host CPU, not a microcontroller timing")
    notes += [f"{variant}: not on TFLite Micro: {reason}" for variant, reason in
              ((r["variant"], _tflm_reason(r)) for r in report["variants"]) if reason]
    if len(keys) < len(available):
        notes.append("more columns in report.md / report.html")
    for note in notes:
        lines += textwrap.wrap(note, width=max(width, 20), subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines)


def write_files(out_dir: Path, report: Mapping[str, Any]) -> None:
    """report.json, report.md, report.html and build.log into ``out_dir``."""
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    (out_dir / "report.html").write_text(html(report), encoding="utf-8")
    (out_dir / "build.log").write_text(lab_log(report), encoding="utf-8")


__all__ = ["html", "lab_log", "markdown", "summary_cells", "summary_columns", "template_files",
           "terminal_width", "text_table", "write_files"]
