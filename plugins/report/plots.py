"""The report's charts, drawn with matplotlib and inlined into report.html as SVG.

Why matplotlib, and why these settings: a plotting library places ticks,
legends and text far better than SVG written by hand, and its SVG backend can
be made byte-reproducible -- ``svg.hashsalt`` fixes the ids it derives for
clip paths, ``svg.fonttype = "none"`` keeps text as ``<text>`` (no glyph
outlines whose ids or shapes depend on font files), and metadata without
``Date`` or ``Creator`` leaves no timestamp or version in the file. The
report's cache key includes matplotlib's version (toolchain), so a new
version that draws differently rebuilds the report.

Variants are told apart by colour *and* marker (the Okabe-Ito palette, safe
for the common forms of colour blindness) and named in a legend, never by
text placed next to the points: variants of equal size sit on top of each
other, and labels placed beside them overlap.

matplotlib is imported inside the functions: importing this module costs
nothing, and a build that does not run the report never loads it.
"""

from __future__ import annotations

import io
import math
import re
from html import escape
from typing import Any, Mapping, Sequence

KIB = 1024
#: Okabe & Ito (2008), "Color Universal Design": distinguishable with deuteranopia and protanopia
#: (its yellow is left out: too pale for a marker on white)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h"]
BUDGET_COLOR = "#555555"


def style(index: int) -> tuple[str, str]:
    """(colour, marker) of the variant at ``index``: unique pairs for 56 variants,
    and neighbours differ in both."""
    colour, cycle = index % len(PALETTE), index // len(PALETTE)
    return PALETTE[colour], MARKERS[(colour + cycle) % len(MARKERS)]


def _translucent(colour: str, alpha: float = 0.35) -> tuple[float, float, float, float]:
    red, green, blue = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return (red, green, blue, alpha)


def _pyplot(salt: str) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({
        "svg.hashsalt": f"tinybuild-report-{salt}",  # stable ids, distinct per figure of one page
        "svg.fonttype": "none",
        "font.family": "sans-serif",
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.color": "#e5e5e5",
        "grid.linewidth": 0.8,
    })
    return plt


def _svg(fig: Any, title: str) -> str:
    """The figure as an SVG element for inlining: no XML prolog, doctype,
    comment or metadata block; width 100% of its container (the viewBox keeps
    the aspect ratio), so the chart uses the page's width."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight",
                metadata={"Title": title, "Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<!--.*?-->\s*", "", text, flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"',
                  lambda m: f'<svg {m.group(1)}width="100%" role="img" aria-label="{escape(title)}"', text, count=1)
    return text.strip()


def _kib_formatter(value: float, _pos: Any = None) -> str:
    if value < KIB:
        return f"{value:g} B"
    kib = value / KIB
    return f"{kib / KIB:g} MiB" if kib >= KIB else f"{kib:g} KiB"


def _accuracy_limits(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = max((high - low) * 0.15, 0.004)
    return max(0.0, low - pad), min(1.0 + 1e-9, high + pad)


def _size_axis(ax: Any, values: Sequence[float]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log", base=2)
    low, high = min(values), max(values)
    ax.set_xlim(low / 1.4, high * 1.4)
    # powers of two (8 KiB, 16 KiB, 32 KiB...): the sizes memories come in
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(_kib_formatter))
    ax.xaxis.set_minor_locator(LogLocator(base=2, subs=(1.5,)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _front_line(ax: Any, front: Sequence[Mapping[str, Any]]) -> None:
    """The Pareto front (report's ``pareto``) as a staircase through its
    variants, in increasing flash: nothing above-left of it exists."""
    if len(front) < 2:
        return
    ordered = sorted(front, key=lambda p: (p["flash"], -p["accuracy"]))
    ax.step([p["flash"] for p in ordered], [p["accuracy"] for p in ordered], where="post",
            color="#777777", linewidth=1.0, zorder=2)


def _budget_lines(ax: Any, x_budget: float | None, x_name: str, min_accuracy: float | None) -> None:
    if x_budget is not None:
        ax.axvline(x_budget, color=BUDGET_COLOR, linestyle="--", linewidth=1.2, zorder=1)
        ax.annotate(f"{x_name} {x_budget / KIB:g} KiB", xy=(x_budget, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4, -4), textcoords="offset points", ha="left", va="top", color=BUDGET_COLOR, fontsize=9)
    if min_accuracy is not None:
        ax.axhline(min_accuracy, color=BUDGET_COLOR, linestyle=":", linewidth=1.2, zorder=1)
        ax.annotate(f"min_accuracy {min_accuracy * 100:g}%", xy=(0.0, min_accuracy), xycoords=("axes fraction", "data"),
                    xytext=(4, 3), textcoords="offset points", ha="left", va="bottom", color=BUDGET_COLOR, fontsize=9)


def size_accuracy_svg(points: Sequence[Mapping[str, Any]], target: Mapping[str, Any]) -> str | None:
    """Flash against accuracy and, where any variant has a RAM figure, RAM
    against accuracy, side by side, with the ``[target]`` budgets as lines.

    ``points``: one dict per variant with ``variant``, ``label``, ``flash``
    (bytes), ``ram`` (bytes or None), ``ram_measured`` (bool) and ``accuracy``.
    Keras variants are drawn at their weights' size (what would ship if they
    were stored as is); a RAM estimate is drawn hollow, a TFLM measurement filled.
    """
    points = [p for p in points if p.get("flash") and p.get("accuracy") is not None
              and math.isfinite(p["accuracy"])]
    if not points:
        return None
    plt = _pyplot("size-accuracy")
    flash_kb, ram_kb, min_accuracy = target.get("flash_kb"), target.get("ram_kb"), target.get("min_accuracy")
    with_ram = [p for p in points if p.get("ram")]
    panels = 2 if with_ram else 1
    fig, axes = plt.subplots(1, panels, figsize=(12.5 if panels == 2 else 9.5, 5.0), squeeze=False)
    accuracy_values = [p["accuracy"] for p in points] + ([min_accuracy] if min_accuracy is not None else [])
    y_low, y_high = _accuracy_limits(accuracy_values)

    from matplotlib.ticker import PercentFormatter

    def draw(ax: Any, key: str, budget_kb: float | None, budget_name: str, xlabel: str) -> None:
        shown = [p for p in points if p.get(key)]
        budget = budget_kb * KIB if budget_kb is not None else None
        _size_axis(ax, [p[key] for p in shown] + ([budget] if budget else []))
        for p in shown:
            # translucent faces with solid edges: variants of equal size and accuracy
            # (same flash, same arena) stay visible on top of each other
            colour, marker = style(p["index"])
            hollow = key == "ram" and not p.get("ram_measured")
            ax.scatter([p[key]], [p["accuracy"]], s=110, marker=marker, zorder=3, linewidths=1.6,
                       facecolors="none" if hollow else _translucent(colour), edgecolors=colour)
        _budget_lines(ax, budget, budget_name, min_accuracy)
        if key == "flash":
            _front_line(ax, [p for p in shown if p.get("front")])
        ax.set_ylim(y_low, y_high)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")

    draw(axes[0][0], "flash", flash_kb, "flash_kb", "flash: model bytes (log scale)")
    axes[0][0].set_title("Flash against accuracy", loc="left", fontsize=11)
    if with_ram:
        measured = any(p.get("ram_measured") for p in with_ram)
        estimated = any(not p.get("ram_measured") for p in with_ram)
        xlabel = ("RAM: tensor arena measured on TFLM" if measured and not estimated else
                  "RAM: tensor arena estimate" if not measured else
                  "RAM: TFLM arena (filled), estimate (hollow)")
        draw(axes[0][1], "ram", ram_kb, "ram_kb", xlabel + " (log scale)")
        axes[0][1].set_title("RAM against accuracy", loc="left", fontsize=11)

    from matplotlib.lines import Line2D

    handles = []
    for p in points:
        colour, marker = style(p["index"])
        handles.append(Line2D([], [], linestyle="none", marker=marker, markersize=9, markeredgewidth=1.6,
                              markerfacecolor=_translucent(colour), markeredgecolor=colour,
                              label=f"{p['variant']} ({p['label']})"))
    columns = min(4, len(handles))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=columns, frameon=False,
               fontsize=9, handletextpad=0.3, columnspacing=1.5)
    fig.tight_layout()
    return _svg(fig, "Model size and RAM against accuracy, with the target budgets" if with_ram
                else "Model size against accuracy, with the target budgets")


def history_svg(variant: str, history: Mapping[str, Sequence[float]]) -> str | None:
    """Loss and accuracy per epoch (train solid, val dashed) of one training
    step, from the ``history`` it stored; None without a usable series."""
    series = {k: [float(v) for v in values] for k, values in history.items()
              if isinstance(values, (list, tuple)) and values
              and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)}
    panels = [name for name in ("loss", "accuracy") if name in series or f"val_{name}" in series]
    if not panels:
        return None
    plt = _pyplot(f"history-{variant}")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.0), squeeze=False)
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    for ax, name in zip(axes[0], panels):
        for key, colour, line, label in ((name, PALETTE[0], "-", "train"), (f"val_{name}", PALETTE[3], "--", "val")):
            if key in series:
                epochs = range(1, len(series[key]) + 1)
                ax.plot(list(epochs), series[key], color=colour, linestyle=line, linewidth=1.6,
                        marker="o" if len(series[key]) <= 12 else None, markersize=3.5, label=label)
        if name == "accuracy" and all(v <= 1.0 for key in (name, f"val_{name}") for v in series.get(key, [])):
            # decimals=None: as many as the axis range needs, so that close
            # ticks (96.5%, 97%, 97.5%) never print as "97%, 97%, 98%"
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
        ax.set_title(f"{variant}: {name}", loc="left", fontsize=11)
        ax.set_xlabel("epoch")
        # epochs are whole numbers: with one or a few the automatic ticks
        # would be fractions (0.95, 1.00, 1.05), so give the axis room and
        # place integer ticks only
        epochs_run = max(len(series.get(key, [])) for key in (name, f"val_{name}"))
        ax.set_xlim(0.5, epochs_run + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return _svg(fig, f"Training curves of {variant}")


__all__ = ["PALETTE", "MARKERS", "history_svg", "size_accuracy_svg", "style"]
