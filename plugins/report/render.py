"""Rendering a report dict (built by ``report.py``) as Markdown, HTML+SVG, a lab
log and a terminal table.

Pure functions of the report: no clock, no paths, no randomness, so the same
metrics always render to the same bytes. The HTML is one file with inline CSS
and an inline SVG chart; it loads nothing and runs no script, so it can be
attached to a CI run or mailed as is.
"""

from __future__ import annotations

import io
import math
from html import escape
from typing import Any, Mapping, Sequence

# -- shared cell formatting ---------------------------------------------------------------


def _int(value: Any) -> str:
    return "—" if value is None else f"{int(value):,}"


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def _ratio(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _points(value: Any) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _ms(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"


def _gate_status(report: Mapping[str, Any], variant: str) -> str:
    checks = [c for c in report["gates"] if c["variant"] == variant]
    if variant not in report["gated"]:
        return "not gated"
    if not checks:
        return "no budget"
    return "pass" if all(c["passed"] for c in checks) else "FAIL"


COLUMNS: list[tuple[str, str]] = [
    ("variant", "Variant"),
    ("label", "Kind"),
    ("accuracy", "Accuracy"),
    ("accuracy_change_points", "Δ acc (pts)"),
    ("size_bytes", "Size (B)"),
    ("gzip_bytes", "gzip (B)"),
    ("gzip_ratio", "gzip ×smaller"),
    ("param_count", "Params"),
    ("sparsity", "Sparsity"),
    ("arena_bytes", "Arena est. (B)"),
]


def _cells(report: Mapping[str, Any], row: Mapping[str, Any], latency: Mapping[str, Any] | None = None) -> list[str]:
    cells = [
        row["variant"],
        row["label"],
        _accuracy(row),
        _points(row["accuracy_change_points"]),
        _int(row["size_bytes"]),
        _int(row["gzip_bytes"]),
        _ratio(row["gzip_ratio"]),
        _int(row["param_count"]),
        _pct(row["sparsity"]),
        _int(row["arena_bytes"]),
    ]
    if latency is not None:
        cells.append(_ms(latency.get(row["variant"])))
    elif "latency_ms" in row:
        cells.append(_ms(row["latency_ms"]))
    cells.append(_gate_status(report, row["variant"]))
    return cells


def _headers(report: Mapping[str, Any], with_latency: bool) -> list[str]:
    return [h for _, h in COLUMNS] + (["Latency (ms)"] if with_latency else []) + ["Gate"]


def _has_latency(report: Mapping[str, Any]) -> bool:
    return any("latency_ms" in r for r in report["variants"])


def _target_line(report: Mapping[str, Any]) -> str:
    target = report["target"]
    parts = [f"{k} = {target[k]:g}" if isinstance(target[k], (int, float)) else f"{k} = {target[k]}"
             for k in sorted(target)]
    return ", ".join(parts) if parts else "none"


def _accuracy(row: Mapping[str, Any]) -> str:
    """The accuracy cell; figures not measured on the test split say which split."""
    split = row.get("split", "test")
    return _pct(row["accuracy"]) + ("" if split == "test" else f" ({split})")


def _no_gates_line(report: Mapping[str, Any]) -> str:
    """Why the gate list is empty, in words."""
    if not any(k in report["target"] for k in ("flash_kb", "ram_kb", "min_accuracy")):
        return "No [target] budgets."
    if report.get("gates_off"):
        return "No variant is gated (gate = [])."
    return "No budget was checked: see the warnings."


def _verdict(report: Mapping[str, Any]) -> str:
    if not report["passed"]:
        return "GATE FAILED"
    return "no gate failed (see the warnings)" if report.get("warnings") else "all gates passed"


def _failed(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in report["gates"] if not c["passed"]]


# -- Markdown -----------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown(report: Mapping[str, Any]) -> str:
    with_latency = _has_latency(report)
    headers = _headers(report, with_latency)
    lines = [
        f"# {_md_escape(report['title'])}",
        "",
        f"Seed {report['seed']} · target: {_target_line(report)} · baseline: `{report['baseline']}`",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers) - 1)) + "|---|",
    ]
    for row in report["variants"]:
        lines.append("| " + " | ".join(_md_escape(c) for c in _cells(report, row)) + " |")
    lines += ["", "## Gates", ""]
    if not report["gates"]:
        lines.append(_md_escape(_no_gates_line(report)))
    for check in report["gates"]:
        mark = "pass" if check["passed"] else "**FAIL**"
        lines.append(f"- `{check['variant']}`: {_md_escape(check['text'])} — {mark}")
    if report.get("warnings"):
        lines += ["", "**Warnings**", ""] + [f"- {_md_escape(w)}" for w in report["warnings"]]
    lines += ["", f"Result: {_verdict(report)}", ""]

    classes = report["variants"][0]["classes"] if report["variants"] else []
    if classes:
        lines += ["## F1 per class", "", "| Variant | " + " | ".join(_md_escape(c) for c in classes) + " |",
                  "|---|" + "---:|" * len(classes)]
        for row in report["variants"]:
            lines.append(f"| {_md_escape(row['variant'])} | " + " | ".join(f"{f:.3f}" for f in row["per_class_f1"]) + " |")
        lines.append("")
    lines += [
        "Sizes: the .tflite file, or a Keras model's weight files. gzip: level 9, mtime 0. "
        "Arena: peak of live activation tensors (ignores alignment and scratch buffers). "
        "Kernel sparsity: zero weights in conv/dense kernels.",
        "",
    ]
    return "\n".join(lines)


# -- HTML + SVG ---------------------------------------------------------------------------

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks between ``low`` and ``high``; every integer mantissa when
    that gives fewer than three (a range inside one decade)."""
    def ticks(mantissas: Sequence[int]) -> list[float]:
        out = []
        for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
            out += [m * 10.0 ** exponent for m in mantissas if low <= m * 10.0 ** exponent <= high]
        return out

    coarse = ticks((1, 2, 5))
    return coarse if len(coarse) >= 3 else ticks(range(1, 10))


def _kib_label(kib: float) -> str:
    return f"{kib:g} KiB" if kib < 1024 else f"{kib / 1024:g} MiB"


def _place_labels(points: Sequence[tuple[float, float, str]], char_width: float = 6.2,
                  height: float = 12.0) -> list[tuple[float, float]]:
    """Label positions (x, baseline y) that do not overlap: each label starts
    beside its point and moves down until it no longer collides with a label
    already placed (variants of equal size otherwise print over each other)."""
    placed: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 boxes
    positions: list[tuple[float, float]] = [(0.0, 0.0)] * len(points)
    for index in sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0])):
        x, y, text = points[index]
        lx, ly = x + 8, y + 4
        width = char_width * len(text)
        while any(lx < bx1 and lx + width > bx0 and ly - height < by1 and ly > by0 for bx0, by0, bx1, by1 in placed):
            ly += 2
        placed.append((lx, ly - height, lx + width, ly))
        positions[index] = (lx, ly)
    return positions


def scatter_svg(report: Mapping[str, Any], width: int = 780, height: int = 400) -> str:
    """Size (log scale) against accuracy, one labelled point per variant; the
    flash and accuracy budgets drawn as dashed lines when they exist."""
    rows = [r for r in report["variants"] if r["size_bytes"]]
    left, right, top, bottom = 64, 170, 20, 48  # the legend sits in the right margin
    plot_w, plot_h = width - left - right, height - top - bottom
    sizes = [float(r["size_bytes"]) for r in rows] or [1024.0]
    flash = report["target"].get("flash_kb")
    min_acc = report["target"].get("min_accuracy")
    x_values = sizes + ([flash * 1024.0] if flash else [])
    x_lo, x_hi = math.log10(min(x_values)) - 0.12, math.log10(max(x_values)) + 0.12
    accuracies = [r["accuracy"] for r in rows] or [0.0]
    y_values = accuracies + ([min_acc] if min_acc is not None else [])
    y_lo = max(0.0, min(y_values) - 0.01)
    y_hi = min(1.0, max(y_values) + 0.005)
    if y_hi - y_lo < 0.01:
        y_lo = max(0.0, y_hi - 0.01)

    def sx(size: float) -> float:
        return left + (math.log10(size) - x_lo) / (x_hi - x_lo) * plot_w

    def sy(acc: float) -> float:
        return top + (1 - (acc - y_lo) / (y_hi - y_lo)) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="Model size against accuracy" font-family="sans-serif">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#999"/>',
    ]
    for kib in _log_ticks(10 ** x_lo / 1024, 10 ** x_hi / 1024):
        x = sx(kib * 1024)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">{escape(_kib_label(kib))}</text>')
    step = 10 ** math.floor(math.log10((y_hi - y_lo) / 2)) if y_hi > y_lo else 0.01
    tick = math.ceil(y_lo / step) * step
    while tick <= y_hi + 1e-12:
        y = sy(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{tick * 100:.1f}%</text>')
        tick += step
    if flash:
        x = sx(flash * 1024.0)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#d62728" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{x + 4:.1f}" y="{top + 12}" font-size="11" fill="#d62728">flash_kb {flash:g}</text>')
    if min_acc is not None:
        y = sy(min_acc)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#d62728" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{left + plot_w - 4}" y="{y - 4:.1f}" font-size="11" text-anchor="end" fill="#d62728">min_accuracy {min_acc:g}</text>')
    kinds = sorted({r["label"] for r in rows})
    anchors = [(sx(float(r["size_bytes"])), sy(r["accuracy"]), r["variant"]) for r in rows]
    for row, (x, y, name), (lx, ly) in zip(rows, anchors, _place_labels(anchors)):
        color = _PALETTE[kinds.index(row["label"]) % len(_PALETTE)]
        tip = f"{row['variant']} ({row['label']}): {row['size_bytes']:,} B, accuracy {row['accuracy'] * 100:.2f}%"
        out.append(f'<g><title>{escape(tip)}</title><circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}" fill-opacity="0.85"/></g>')
        if ly - 4 - y > 6:  # moved away from its point: a leader line shows whose label it is
            out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{lx - 1:.1f}" y2="{ly - 4:.1f}" stroke="#aaa" stroke-width="0.8"/>')
        out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="11">{escape(name)}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" font-size="12" text-anchor="middle">model size (log scale)</text>')
    out.append(f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" font-size="12" text-anchor="middle">accuracy</text>')
    for i, kind in enumerate(kinds):  # legend, right of the plot
        color = _PALETTE[i % len(_PALETTE)]
        ly = top + 10 + 16 * i
        out.append(f'<circle cx="{left + plot_w + 16}" cy="{ly}" r="4" fill="{color}"/>')
        out.append(f'<text x="{left + plot_w + 26}" y="{ly + 4}" font-size="11">{escape(kind)}</text>')
    out.append("</svg>")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #2a7a2a; } .FAIL { color: #c62828; font-weight: bold; }
p.note { color: #555; font-size: 0.85rem; max-width: 52rem; }
.warn { color: #a15c00; } p.warn { font-weight: bold; }
""".strip()


def html(report: Mapping[str, Any]) -> str:
    with_latency = _has_latency(report)
    headers = _headers(report, with_latency)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in report["variants"]:
        cells = _cells(report, row)
        tds = []
        for i, cell in enumerate(cells):
            css = "num" if 2 <= i < len(cells) - 1 else ""
            if i == len(cells) - 1:
                css = "pass" if cell == "pass" else ("FAIL" if cell == "FAIL" else "")
            tds.append(f'<td class="{css}">{escape(cell)}</td>' if css else f"<td>{escape(cell)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    gates = "".join(
        f'<li><code>{escape(c["variant"])}</code>: {escape(c["text"])} — '
        f'<span class="{"pass" if c["passed"] else "FAIL"}">{"pass" if c["passed"] else "FAIL"}</span></li>'
        for c in report["gates"]
    ) or f"<li>{escape(_no_gates_line(report))}</li>"
    warnings = "".join(f"<li>{escape(w)}</li>" for w in report.get("warnings") or [])
    verdict = _verdict(report)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(report['title'])}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(report['title'])}</h1>",
        f"<p>Seed {report['seed']} · target: {escape(_target_line(report))} · baseline: "
        f"<code>{escape(str(report['baseline']))}</code> · <strong>{verdict}</strong></p>",
        scatter_svg(report),
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>",
        f"<h2>Gates</h2>\n<ul>{gates}</ul>",
        *([f'<p class="warn">Warnings</p>\n<ul class="warn">{warnings}</ul>'] if warnings else []),
        '<p class="note">Sizes: the .tflite file, or a Keras model\'s weight files. gzip: level 9, '
        "mtime 0. Arena: peak of live activation tensors in execution order (ignores alignment, "
        "scratch buffers and runtime bookkeeping). Sparsity: zero weights in conv/dense kernels.</p>",
        "</body>",
        "</html>",
        "",
    ])


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
        lines.append(f"    accuracy: {row['accuracy']:.4f}{correct}{on_split}, change vs baseline {_points(row['accuracy_change_points'])} points")
        lines.append(
            f"    size: {_int(row['size_bytes'])} B, gzip {_int(row['gzip_bytes'])} B "
            f"({_ratio(row['gzip_ratio'])} smaller than baseline), params {_int(row['param_count'])}, "
            f"kernel sparsity {_pct(row['sparsity'])}"
        )
        if row.get("arena_bytes") is not None:
            lines.append(f"    tensor arena estimate: {_int(row['arena_bytes'])} B")
        if "latency_ms" in row:
            lines.append(f"    latency: {_ms(row['latency_ms'])} ms (median, batch 1; machine-dependent)")
        lines.append(f"    gate: {_gate_status(report, row['variant'])}")
        lines.append("")
    lines.append("gates:")
    for check in report["gates"] or []:
        lines.append(f"    {check['variant']}: {check['text']} -> {'pass' if check['passed'] else 'FAIL'}")
    if not report["gates"]:
        lines.append(f"    none: {_no_gates_line(report)}")
    for warning in report.get("warnings") or []:
        lines.append(f"warning: {warning}")
    lines.append(f"result: {_verdict(report)}")
    lines.append("")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return str(value)


def text_table(report: Mapping[str, Any], latency: Mapping[str, Any] | None = None) -> str:
    """The comparison table as plain text (rich, ASCII box, no colour), for the
    build log lines the core shows in the terminal."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    measured = dict(latency or {}) if latency and any(v is not None for v in latency.values()) else None
    headers = _headers(report, measured is not None or _has_latency(report))
    table = Table(box=box.ASCII2, title=report["title"], title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if 2 <= i < len(headers) - 1 else "left")
    for row in report["variants"]:
        table.add_row(*_cells(report, row, measured))
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None, force_terminal=False, legacy_windows=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


__all__ = ["html", "lab_log", "markdown", "scatter_svg", "text_table"]
