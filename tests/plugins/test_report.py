"""The ``report`` step: files, comparisons, determinism and budget gates.

Most tests feed hand-written ``metrics.json`` files (the layout ``evaluate``
writes) so every figure in the report can be checked by hand and no
TensorFlow is needed; one test chains the real ``evaluate`` step, and one
builds a recipe through the CLI to check the exit code of a failed gate.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import GateFailed, StepError
from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.report import report

STEP = report.tinybuild_step_types()[0]
FILES = ["build.log", "report.html", "report.json", "report.md", "shrinklog.txt"]


def metrics_artifact(root: Path, variant: str, *, kind: str = "tflite", accuracy: float = 0.98,
                     size: int = 20_000, gzip: int = 15_000, arena: int | None = 8_000,
                     quantize: str | None = "int8", latency: float = 0.5, samples: int = 2000,
                     split: str = "test", classes: tuple[str, str] = ("0", "1"), **extra: object) -> object:
    """A metrics artifact as ``evaluate`` writes it (only the keys report reads are
    filled); ``extra`` adds keys other steps may write (``tflm``, ``compression``...)."""
    folder = root / f"eval_{variant}"
    folder.mkdir()
    correct = round(accuracy * samples)
    data = {
        "variant": variant,
        "model_kind": kind,
        "split": split,
        "accuracy": accuracy,
        "correct": correct,
        "samples": samples,
        "macro_f1": accuracy,
        "per_class": [{"class": classes[0], "precision": 1.0, "recall": 1.0, "f1": 0.99, "support": 1000},
                      {"class": classes[1], "precision": 1.0, "recall": 1.0, "f1": 0.97, "support": 1000}],
        "confusion_matrix": [[990, 10], [30, 970]],
        "param_count": 20_410,
        "sparsity": 0.0,
        "size_bytes": size,
        "gzip_bytes": gzip,
        "arena": {"peak_bytes": arena} if arena is not None else None,
        "upstream": {"quantize": quantize, "source": "train"} if quantize else {"epochs_run": 3},
    }
    if kind == "keras-model":
        data["keras"] = {"optimization": "none", "weight_files": 4}
    data.update(extra)
    (folder / "metrics.json").write_text(json.dumps(data))
    return artifact_from_dir(f"eval_{variant}", "metrics", folder,
                             metrics={"variant": variant, "latency_ms": latency, "accuracy": accuracy})


@pytest.fixture
def variants(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    return [
        metrics_artifact(src, "train", kind="keras-model", accuracy=0.9800, size=81_640, gzip=75_000,
                         arena=None, quantize=None, latency=1.5),
        metrics_artifact(src, "fp32", accuracy=0.9800, size=83_280, gzip=76_000, arena=33_000, quantize="float32"),
        metrics_artifact(src, "int8", accuracy=0.9790, size=22_480, gzip=18_000, arena=9_000, quantize="int8"),
        metrics_artifact(src, "clustered", accuracy=0.9720, size=22_480, gzip=6_250, arena=9_000, quantize="int8"),
    ]


def build(variants, params=None, target=None, out=None, logs=None):
    from tinybuild.context import RunContext

    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="tb-report-"))
    out.mkdir(parents=True, exist_ok=True)
    validated = STEP.params.model_validate(dict(params or {}))
    ctx = RunContext(step="report", out_dir=out, seed=7, recipe_dir=out, target=dict(target or {}),
                     on_log=(lambda step, msg: logs.append(msg)) if logs is not None else (lambda *a: None))
    metrics = STEP.run(ctx, variants, validated)
    return out, metrics


def test_all_report_files_are_written(variants):
    out, metrics = build(variants, {"title": "mnist-cnn"})
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert metrics["variants"] == 4 and metrics["passed"] is True
    assert metrics["smallest"] == "int8" and metrics["best_accuracy"] == "train"
    assert metrics["latency_ms"] == {"train": 1.5, "fp32": 0.5, "int8": 0.5, "clustered": 0.5}

    md = (out / "report.md").read_text()
    assert md.startswith("# mnist-cnn")
    for name in ("train", "fp32", "int8", "clustered"):
        assert re.search(rf"^\| {name} \|", md, re.M), name
    assert "| clustered | tflite int8 | 97.20% | -0.80 | 22,480 | 6,250 | 12.00× |" in md


class Page(HTMLParser):
    """What a reader sees in report.html: tables (rows of cell texts, by class),
    the inline SVGs' text, and every visible text."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.svgs: list[dict[str, object]] = []
        self.headings: list[str] = []
        self.texts: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None
        self._svg_depth = 0
        self._heading: list[str] | None = None
        self._in_style = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        attrs = dict(attrs)
        if tag == "svg":
            if self._svg_depth == 0:
                self.svgs.append({"attrs": attrs, "text": [], "paths": 0})
            self._svg_depth += 1
        elif self._svg_depth and tag in ("path", "use"):
            self.svgs[-1]["paths"] += 1
        elif tag == "table":
            self.tables.append((attrs.get("class") or "", []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2", "h3"):
            self._heading = []

    def handle_endtag(self, tag):
        self._in_style = False
        if tag == "svg":
            self._svg_depth -= 1
        elif tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        if self._in_style:  # CSS, not text a reader sees
            return
        self.texts.append(data)
        if self._svg_depth:
            self.svgs[-1]["text"].append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)

    def table(self, css_class: str) -> list[list[str]]:
        [rows] = [rows for cls, rows in self.tables if cls == css_class]
        return rows

    def svg_text(self, index: int) -> str:
        return " ".join(self.svgs[index]["text"])


def test_html_shows_summary_chart_budgets_and_confusion_matrices(tmp_path):
    names = ("dog", "siren")
    src = tmp_path / "src"
    src.mkdir()
    inputs = [
        metrics_artifact(src, "train", kind="keras-model", size=81_640, arena=None, quantize=None, classes=names),
        metrics_artifact(src, "int8", size=22_480, arena=9_000, classes=names),
        metrics_artifact(src, "clustered", accuracy=0.972, size=22_480, arena=9_000, classes=names),
    ]
    out, _ = build(inputs, target={"flash_kb": 96, "ram_kb": 16, "min_accuracy": 0.95})
    text = (out / "report.html").read_text()
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>")

    summary = page.table("summary")
    header = summary[0]
    for column in ("Variant", "Flash (B)", "RAM (B)", "Accuracy", "Gate"):
        assert column in header, column
    rows = {r[0]: dict(zip(header, r)) for r in summary[1:]}
    assert list(rows) == ["train", "int8", "clustered"]
    assert rows["int8"]["Flash (B)"] == "22,480" and rows["int8"]["RAM (B)"] == "9,000 est"
    assert rows["train"]["RAM (B)"] == "—" and rows["int8"]["Gate"] == "pass"
    assert rows["clustered"]["Accuracy"] == "97.20%"

    # the gates as a grid: a row per gated variant, a column per budget
    gates = page.table("gates")
    assert gates[0] == ["Variant", "flash_kb", "ram_kb", "min_accuracy"]
    assert [r[0] for r in gates[1:]] == ["int8", "clustered"]
    assert gates[1][1] == "pass size 22,480 B (21.95 KiB) <= flash_kb 96 (98,304 B)"
    assert gates[2][3] == "pass accuracy 0.9720 >= min_accuracy 0.95"

    # one chart, two panels: flash and RAM against accuracy, every budget drawn and named
    [chart] = page.svgs
    assert chart["attrs"]["width"] == "100%" and "viewbox" in chart["attrs"]
    svg = page.svg_text(0)
    for label in ("flash_kb 96 KiB", "ram_kb 16 KiB", "min_accuracy 95%", "Flash against accuracy",
                  "RAM against accuracy"):
        assert svg.count(label) >= 1, label
    assert svg.count("min_accuracy 95%") == 2  # drawn in both panels
    for legend in ("train (keras)", "int8 (tflite int8)", "clustered (tflite int8)"):
        assert svg.count(legend) == 1, legend  # each variant named once, in the legend
    assert chart["paths"] >= 3

    # a confusion matrix with class names and a per-class table per variant
    matrices = [rows for cls, rows in page.tables if cls == "cm"]
    assert len(matrices) == 3
    assert matrices[0][0][1:3] == ["dog", "siren"] and matrices[0][1][:3] == ["dog", "990", "10"]
    per_class = [rows for cls, rows in page.tables if cls == "pc"]
    assert len(per_class) == 3
    assert per_class[0][0] == ["Class", "Precision", "Recall", "F1", "Support", "One-vs-rest accuracy"]
    # one-vs-rest accuracy of "dog": (2000 - 10 - 30) / 2000, from the confusion matrix
    assert per_class[0][1] == ["dog", "1.000", "1.000", "0.990", "1,000", "98.00%"]
    assert any(h.startswith("clustered") for h in page.headings)

    visible = " ".join(page.texts)
    assert not re.search(r"\bnan\b|\bNone\b|\binf\b", visible, re.I)
    # self-contained: no script, no external resource; the only URLs are XML namespace names
    assert "script" not in page.tags
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text, re.I)
    assert references and all(r.startswith("#") for r in references)  # markers reused inside the SVG
    assert "url(" not in text.replace("url(#", "") and "@import" not in text
    assert set(re.findall(r"https?://[^\"' ]+", text)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def test_side_by_side_groups_come_first_one_per_row(variants):
    out, _ = build(variants, {"side_by_side": [["train", "int8"], ["clustered"]]})
    text = (out / "report.html").read_text()
    rows = re.findall(r'<div class="cards">(.*?)</div>\s*(?=<div class="cards">|\n<h2>|\n</main>)', text, re.S)
    order = [re.findall(r"<h3>(\w+) ", row) for row in rows]
    assert order == [["train", "int8"], ["clustered"], ["fp32"]]
    assert json.loads((out / "report.json").read_text())["side_by_side"] == [["train", "int8"], ["clustered"]]
    with pytest.raises(StepError, match="side_by_side names unknown variants: int9"):
        build(variants, {"side_by_side": [["train", "int9"]]})
    with pytest.raises(ValidationError, match="listed twice: int8"):
        STEP.params.model_validate({"side_by_side": [["int8"], ["train", "int8"]]})


def test_chart_without_ram_figures_has_one_panel(variants):
    out, _ = build(variants[:1], target={"flash_kb": 96})  # the Keras variant: no arena
    page = Page((out / "report.html").read_text())
    svg = page.svg_text(0)
    assert "flash_kb 96 KiB" in svg and "RAM against accuracy" not in svg


def test_every_variant_has_its_own_colour_and_marker():
    from tinybuild_plugins.report import plots

    styles = [plots.style(i) for i in range(56)]
    assert len(set(styles)) == 56
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(styles, styles[1:]))


def test_tflm_figures_are_shown_when_present(tmp_path):
    """A TFLite Micro run replaces the RAM estimate with the measured arena and
    shows its accuracy; a variant TFLM refuses says why, everywhere."""
    runs = {"runs": True, "reason": None, "arena_bytes": 11_952, "arena_min_bytes": 11_900, "accuracy": 0.9815,
            "correct": 1963, "samples": 2000, "per_class": None, "confusion_matrix": [[980, 20], [17, 983]],
            "max_abs_diff_vs_litert": 0.0, "argmax_agreement": 1.0}
    fails = {"runs": False, "reason": "does not run on TFLM: DEQUANTIZE of float16 is not supported", "arena_bytes": None,
             "arena_min_bytes": None, "accuracy": None, "correct": None, "samples": None, "per_class": None,
             "confusion_matrix": None, "max_abs_diff_vs_litert": None, "argmax_agreement": None}
    inputs = [metrics_artifact(tmp_path, "int8", arena=10_140, tflm=runs),
              metrics_artifact(tmp_path, "fp16", arena=122_200, quantize="float16", tflm=fails),
              metrics_artifact(tmp_path, "lut", size=12_784, arena=10_140,
                               compression={"bytes_before": 22_440, "bytes_after": 12_784})]
    logs: list[str] = []
    out, _ = build(inputs, {"gate": []}, logs=logs)
    data = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in data["variants"]}
    assert rows["int8"]["ram_bytes"] == 11_952 and rows["int8"]["ram_source"] == "tflm"
    assert rows["int8"]["arena_bytes"] == 10_140  # the estimate is kept beside the measurement
    assert rows["fp16"]["ram_source"] == "estimate" and rows["fp16"]["tflm"]["runs"] is False
    assert rows["lut"]["tflm"] is None and rows["lut"]["compression"]["bytes_after"] == 12_784

    page = Page((out / "report.html").read_text())
    summary = page.table("summary")
    cells = {r[0]: dict(zip(summary[0], r)) for r in summary[1:]}
    assert cells["int8"]["RAM (B)"] == "11,952" and cells["int8"]["On TFLM"] == "yes 98.15%"
    assert cells["fp16"]["RAM (B)"] == "122,200 est" and cells["fp16"]["On TFLM"] == "no"
    assert cells["lut"]["On TFLM"] == "—"
    visible = " ".join(page.texts)
    assert "DEQUANTIZE of float16 is not supported" in visible
    assert "22,440 B → 12,784 B" in visible  # LUT compression: flash before and after
    # TFLM predicted differently from LiteRT: its matrix is shown beside LiteRT's
    assert len([rows for cls, rows in page.tables if cls == "cm"]) == 4
    md = (out / "report.md").read_text()
    assert "| fp16 |" in md and "`fp16` does not run on TFLite Micro: DEQUANTIZE of float16" in md
    terminal = "\n".join(logs)
    assert "fp16: not on TFLite Micro: DEQUANTIZE" in terminal and "11,952" in terminal
    # the refusal is worded once everywhere, not "does not run on TFLite Micro: does not run on TFLM: ..."
    for text in (md, terminal, (out / "build.log").read_text(), " ".join(page.texts)):
        assert "does not run on TFLM" not in text


def test_training_curves_are_drawn_where_a_history_is_stored(tmp_path):
    curves = {"loss": [0.9, 0.5, 0.3], "accuracy": [0.7, 0.85, 0.9], "val_loss": [0.8, 0.6, 0.5],
              "val_accuracy": [0.72, 0.8, 0.86]}
    inputs = [metrics_artifact(tmp_path, "train", kind="keras-model", arena=None, quantize=None,
                               upstream={"epochs_run": 3, "history": curves}),
              # a list under "history" is a model's optimization history, not curves
              metrics_artifact(tmp_path, "pruned", kind="keras-model", arena=None, quantize=None,
                               upstream={"history": ["prune"]})]
    out, _ = build(inputs)
    page = Page((out / "report.html").read_text())
    assert "Training curves" in page.headings
    assert len(page.svgs) == 2  # size chart + the one history
    assert "train: loss" in page.svg_text(1) and "train: accuracy" in page.svg_text(1)
    data = json.loads((out / "report.json").read_text())
    assert data["variants"][0]["history"]["val_loss"] == [0.8, 0.6, 0.5]
    assert data["variants"][1]["history"] is None and data["variants"][1]["upstream"]["history"] == ["prune"]


def test_absent_per_class_data_is_left_out_not_an_error(tmp_path):
    bare = metrics_artifact(tmp_path, "int8")
    data = json.loads(bare.file("metrics.json").read_text())
    for key in ("per_class", "confusion_matrix"):
        data.pop(key)
    bare.file("metrics.json").write_text(json.dumps(data))
    out, _ = build([bare], target={"flash_kb": 64})
    page = Page((out / "report.html").read_text())
    assert not [rows for cls, rows in page.tables if cls == "cm"]
    assert len(page.svgs) == 1 and "F1 per class" not in (out / "report.md").read_text()


def test_figures_that_are_not_numbers_show_as_a_dash(tmp_path):
    """A metrics.json written by another tool may hold NaN (Python's json reads it):
    the reader sees "—", never "nan"."""
    odd = metrics_artifact(tmp_path, "int8", macro_f1=float("nan"), sparsity=float("inf"),
                           tflm={"runs": True, "accuracy": float("nan"), "arena_bytes": 12_000})
    out, _ = build([odd])
    page = Page((out / "report.html").read_text())
    cells = dict(zip(*page.table("summary")[:2]))
    assert cells["Macro-F1"] == "—" and cells["Sparsity"] == "—" and cells["On TFLM"] == "yes"
    visible = " ".join(page.texts)
    assert not re.search(r"\bnan\b|\binf\b", visible, re.I)
    assert not re.search(r"\bnan\b", (out / "report.md").read_text(), re.I)


def test_json_holds_every_figure_and_the_comparisons(variants):
    out, _ = build(variants, {"baseline": "fp32"})
    data = json.loads((out / "report.json").read_text())
    assert data["baseline"] == "fp32" and data["seed"] == 7
    rows = {r["variant"]: r for r in data["variants"]}
    assert rows["clustered"]["gzip_ratio"] == pytest.approx(76_000 / 6_250, abs=1e-4)
    assert rows["clustered"]["accuracy_change_points"] == pytest.approx(-0.8)
    assert rows["int8"]["arena_bytes"] == 9_000 and rows["train"]["arena_bytes"] is None
    assert rows["fp32"]["label"] == "tflite float32" and rows["train"]["label"] == "keras"
    assert "latency_ms" not in rows["int8"]  # machine-dependent: off by default


def test_a_variant_tflm_scored_is_labelled_tflm_everywhere(tmp_path):
    """evaluate falls back to TFLite Micro where LiteRT cannot load a model
    (``scored_on = "tflm"``): the accuracy is TFLM's, and no report file may
    call it LiteRT's."""
    runs = {"runs": True, "reason": None, "arena_bytes": 11_872, "accuracy": 0.9775, "correct": 1955,
            "samples": 2000, "confusion_matrix": [[980, 20], [25, 975]], "argmax_agreement": None}
    inputs = [metrics_artifact(tmp_path, "int8", accuracy=0.98),
              metrics_artifact(tmp_path, "clustered_lut", accuracy=0.9775, tflm=runs, scored_on="tflm",
                               litert_error="DECODE is not a LiteRT op")]
    logs: list[str] = []
    out, _ = build(inputs, {"gate": []}, logs=logs)
    rows = {r["variant"]: r for r in json.loads((out / "report.json").read_text())["variants"]}
    assert rows["clustered_lut"]["scored_on"] == "tflm" and rows["int8"]["scored_on"] == "litert"
    html = (out / "report.html").read_text()
    assert "accuracy 97.75% (TFLite Micro)" in html and "accuracy 97.75% (LiteRT)" not in html
    assert "accuracy 98.00% (LiteRT)" in html
    assert "| clustered_lut | tflite int8 | 97.75% (TFLM) |" in (out / "report.md").read_text()
    log = (out / "build.log").read_text()
    assert "accuracy (TFLite Micro): 0.9775" in log and "accuracy (LiteRT): 0.9800" in log
    assert "97.75% (TFLM)" in "\n".join(logs)


def test_build_log_reads_like_a_lab_log(variants):
    out, _ = build(variants, {"title": "mnist-cnn"}, target={"flash_kb": 96})
    log = (out / "build.log").read_text()
    assert "tinybuild build log: mnist-cnn" in log and "seed: 7" in log and "target: flash_kb = 96" in log
    assert "[3] int8 (tflite int8)" in log
    assert "accuracy (LiteRT): 0.9790 (1958/2000)" in log and "size: 22,480 B" in log
    assert "from its step: quantize=int8, source=train" in log
    assert "int8: size 22,480 B (21.95 KiB) <= flash_kb 96 (98,304 B) -> pass" in log
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}", log)  # no dates or times


def test_report_files_are_byte_deterministic(variants, tmp_path):
    target = {"flash_kb": 96, "ram_kb": 64, "min_accuracy": 0.9}
    first, _ = build(variants, out=tmp_path / "a", target=target)
    # latency is measured per run: different figures must not change the files
    jittered = [artifact_from_dir(a.step, a.kind, a.path, {**a.metrics, "latency_ms": 9.9}) for a in variants]
    second, _ = build(jittered, out=tmp_path / "b", target=target)
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # and in a fresh interpreter (matplotlib's SVG ids and glyphs must not depend on the process)
    script = ("import json, sys; from tinybuild_plugins.report import render; "
              "sys.stdout.write(render.html(json.load(open(sys.argv[1]))))")
    fresh = subprocess.run([sys.executable, "-c", script, str(first / "report.json")], capture_output=True,
                           text=True, check=True).stdout
    assert fresh == (first / "report.html").read_text()
    assert "<dc:date>" not in fresh and "Matplotlib v" not in fresh  # no timestamp, no version


def test_latency_can_be_written_into_the_files(variants):
    out, _ = build(variants, {"latency": True})
    assert "Latency (ms)" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["variants"][0]["latency_ms"] == 1.5


def test_terminal_table_goes_through_ctx_log(variants, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    logs: list[str] = []
    build(variants, logs=logs)
    [table] = logs  # one multi-line message: the console indents it as a block
    assert "clustered" in table and "97.20%" in table and "Lat. ms" in table
    assert max(len(line) for line in table.splitlines()) <= 156


def _long_named(tmp_path):
    src = tmp_path / "long"
    src.mkdir()
    return [metrics_artifact(src, name, size=size, arena=arena, kind=kind, quantize=quantize)
            for name, size, arena, kind, quantize in (
                ("train", 81_640, None, "keras-model", None), ("fp32", 83_280, 33_000, "tflite", "float32"),
                ("pruned_clustered_int8_only", 22_480, 9_000, "tflite", "int8-only"),
                ("qat_int8", 22_496, 9_000, "tflite", "int8"))]


@pytest.mark.parametrize("width", [76, 80, 160])
def test_terminal_table_fits_the_width_one_line_per_variant(tmp_path, width):
    from tinybuild_plugins.report import render

    out, _ = build(_long_named(tmp_path), {"title": "a report title longer than the narrowest terminal " * 2},
                   target={"flash_kb": 96})
    report_dict = json.loads((out / "report.json").read_text())
    latency = {"train": 1.5, "fp32": 0.5, "pruned_clustered_int8_only": 0.25, "qat_int8": 0.3}
    lines = render.text_table(report_dict, latency, width=width).splitlines()
    assert max(len(line) for line in lines) <= width
    for name in ("train", "fp32", "pruned_clustered_int8_only", "qat_int8"):
        [row] = [line for line in lines if re.match(rf"\| {name} +\|", line)]  # whole, on one line
        assert "%" in row and ("pass" in row or "not gated" in row)
    header = next(line for line in lines if "Variant" in line)
    for column in ("Flash B", "RAM B", "Accuracy", "Gate"):
        assert column in header  # the compact view keeps these at any width
    if width >= 160:
        assert "Kind" in header and "gzip B" in header and "Lat. ms" in header
        assert "more columns" not in lines[-1]
    else:
        assert "Kind" not in header and "more columns in report.md / report.html" in lines[-1]


def test_console_shows_a_table_as_a_block_that_fits_80_columns(tmp_path):
    """What the user sees: the report's table through the core's console, in 80 columns."""
    import io

    from tinybuild.console import ConsoleReporter
    from tinybuild_plugins.report import render

    out, _ = build(_long_named(tmp_path), target={"flash_kb": 96})
    table = render.text_table(json.loads((out / "report.json").read_text()), None, width=80 - 4)
    buffer = io.StringIO()
    reporter = ConsoleReporter(live=False, stream=buffer)
    reporter.tinybuild_build_started("r", ["a_rather_long_step_name", "report"])
    reporter.tinybuild_step_log("report", table)
    shown = buffer.getvalue().splitlines()
    assert len(shown) == len(table.splitlines())
    assert all(len(line) <= 80 and line.startswith("    ") for line in shown)
    assert any("pruned_clustered_int8_only" in line for line in shown)


def test_flash_gate_names_variant_budget_and_figure(tmp_path):
    big = metrics_artifact(tmp_path, "int8", size=86_221)  # 84.2 KiB
    logs: list[str] = []
    with pytest.raises(GateFailed, match=r"variant int8: size 86,221 B \(84\.20 KiB\) > flash_kb 64 \(65,536 B\)") as failure:
        build([big], target={"flash_kb": 64}, out=tmp_path / "out", logs=logs)
    table = str(failure.value).splitlines()[1:]  # the full table follows the one-line summary
    assert any("Variant" in line and "Gate" in line for line in table)
    assert not any("Variant" in message for message in logs)  # ...and is printed once, not logged as well
    assert any("int8" in line and "FAIL" in line for line in table)
    # the report is written before the gate fails: the user needs it most then
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == FILES
    assert "FAIL" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["passed"] is False


def test_ram_and_accuracy_gates(tmp_path):
    model = metrics_artifact(tmp_path, "int8", accuracy=0.91, arena=40_960)
    with pytest.raises(GateFailed) as failure:
        build([model], target={"ram_kb": 32, "min_accuracy": 0.95, "flash_kb": 64})
    message = str(failure.value)
    assert "variant int8: arena estimate 40,960 B (40.00 KiB) > ram_kb 32 (32,768 B)" in message
    assert "variant int8: accuracy 0.9100 < min_accuracy 0.95" in message
    assert "flash_kb" not in message.splitlines()[0]  # 20 kB fits: not listed as a failure


def test_budgets_exactly_met_pass(tmp_path):
    exact = metrics_artifact(tmp_path, "int8", size=64 * 1024, arena=32 * 1024, accuracy=0.95)
    _, metrics = build([exact], target={"flash_kb": 64, "ram_kb": 32, "min_accuracy": 0.95})
    assert metrics["passed"] and metrics["gates_checked"] == 3


def test_gate_text_gives_exact_bytes_when_kib_would_round_alike(tmp_path):
    """22,440 B is 21.91 KiB and the budget 21.9 KiB is 22,425.6 B: rounded to
    one decimal both print "21.9", which made "21.9 kB > flash_kb 21.9"."""
    over = metrics_artifact(tmp_path, "int8", size=22_440, arena=16_500)
    with pytest.raises(GateFailed) as failure:
        build([over], target={"flash_kb": 21.9, "ram_kb": 16.1})
    first_line = str(failure.value).splitlines()[0]
    assert "variant int8: size 22,440 B (21.91 KiB) > flash_kb 21.9 (22,425 B)" in first_line
    assert "variant int8: arena estimate 16,500 B (16.11 KiB) > ram_kb 16.1 (16,486 B)" in first_line
    # the byte figure shown is the exact limit: one byte less passes
    fits = metrics_artifact(tmp_path, "fits", size=22_425, arena=16_486)
    _, metrics = build([fits], target={"flash_kb": 21.9, "ram_kb": 16.1})
    assert metrics["passed"] and metrics["gates_checked"] == 2


def test_budgets_that_check_no_variant_are_a_warning_not_a_silent_pass(variants, tmp_path):
    keras_only = [variants[0]]  # the Keras "train" variant: not gated by default
    logs: list[str] = []
    out, metrics = build(keras_only, target={"flash_kb": 64, "min_accuracy": 0.5}, logs=logs)
    assert metrics["passed"] and metrics["gates_checked"] == 0
    [warning] = metrics["warnings"]
    assert "[target] flash_kb = 64, min_accuracy = 0.5 check no variant" in warning
    assert "train (keras)" in warning and "gate = []" in warning
    assert any(line.startswith("warning: [target] flash_kb = 64") for line in logs)
    for name in ("report.md", "build.log"):
        text = (out / name).read_text()
        assert "check no variant" in text and "all gates passed" not in text, name
    assert "check no variant" in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["warnings"] == [warning]

    # a gated Keras variant is held to min_accuracy, but flash_kb still checks nothing
    _, metrics = build(keras_only, {"gate": ["train"]}, target={"flash_kb": 64, "min_accuracy": 0.5})
    assert metrics["gates_checked"] == 1
    assert len(metrics["warnings"]) == 1 and "flash_kb = 64 checks no variant" in metrics["warnings"][0]
    assert "Keras models" in metrics["warnings"][0]

    # gate = [] turns the gates off on purpose: silent
    logs.clear()
    out, metrics = build(keras_only, {"gate": []}, target={"flash_kb": 64}, logs=logs)
    assert metrics["warnings"] == [] and not any("warning" in line for line in logs)
    assert "No variant is gated (gate = [])." in (out / "report.md").read_text()
    # no [target] at all: nothing to warn about
    _, metrics = build(keras_only)
    assert metrics["warnings"] == []


def test_accuracy_measured_on_the_val_split_is_labelled_as_such(tmp_path):
    val = metrics_artifact(tmp_path, "int8", accuracy=0.97, split="val")
    logs: list[str] = []
    out, metrics = build([val], target={"min_accuracy": 0.95}, logs=logs)
    report_json = json.loads((out / "report.json").read_text())
    [check] = report_json["gates"]
    assert check["text"] == "val accuracy 0.9700 >= min_accuracy 0.95 (on the val split, not test)"
    assert check["split"] == "val"
    assert any("val-split accuracy" in w for w in metrics["warnings"])
    md = (out / "report.md").read_text()
    assert "| int8 | tflite int8 | 97.00% (val) |" in md
    assert "val accuracy 0.9700" in md and "val-split accuracy" in md
    assert "(on the val split)" in (out / "build.log").read_text()
    with pytest.raises(GateFailed, match=r"variant int8: val accuracy 0\.9700 < min_accuracy 0\.98"):
        build([val], target={"min_accuracy": 0.98})


def test_default_gates_cover_tflite_variants_only(variants):
    with pytest.raises(GateFailed) as failure:
        build(variants, target={"flash_kb": 64, "min_accuracy": 0.975})
    first_line = str(failure.value).splitlines()[0]
    assert "variant fp32: size 83,280 B (81.33 KiB) > flash_kb 64 (65,536 B)" in first_line
    assert "variant clustered: accuracy 0.9720 < min_accuracy 0.975" in first_line
    assert "variant train" not in first_line


def test_gate_param_chooses_the_variants(variants):
    _, metrics = build(variants, {"gate": ["int8", "clustered"]}, target={"flash_kb": 64})
    assert metrics["passed"] and metrics["gated"] == ["int8", "clustered"]
    # a listed Keras variant is held to min_accuracy but has no flash/RAM budget
    with pytest.raises(GateFailed, match="variant train: accuracy 0.9800 < min_accuracy 0.99"):
        build(variants, {"gate": ["train"]}, target={"flash_kb": 1, "ram_kb": 1, "min_accuracy": 0.99})
    _, metrics = build(variants, {"gate": []}, target={"flash_kb": 1})
    assert metrics["gated"] == [] and metrics["gates_checked"] == 0


def test_unknown_gate_or_baseline_names_are_step_errors(variants):
    with pytest.raises(StepError, match="unknown variants: int9"):
        build(variants, {"gate": ["int9"]})
    with pytest.raises(StepError, match="baseline 'fp16'"):
        build(variants, {"baseline": "fp16"})
    with pytest.raises(ValidationError):
        STEP.params.model_validate({"gate": ["a", "a"]})
    with pytest.raises(ValidationError):
        STEP.params.model_validate({"gates": ["a"]})


def test_metrics_not_written_by_evaluate_are_a_step_error(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(StepError, match="has no 'variant'"):
        build([artifact_from_dir("odd", "metrics", tmp_path)])


def test_report_on_real_evaluations(tmp_path):
    """evaluate -> report with a real (tiny) model: the schema the two share."""
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.report import evaluate
    from tinybuild_plugins.tflite import convert as tflite
    from tinybuild_plugins.sdk.dataset import save_dataset
    from tinybuild_plugins.sdk.keras_model import save_keras_model

    rng = np.random.default_rng(0)
    x = {s: rng.random((n, 4), dtype=np.float32) for s, n in (("train", 50), ("val", 10), ("test", 40))}
    (tmp_path / "data").mkdir()
    save_dataset(tmp_path / "data", x, {s: v.argmax(1) % 2 for s, v in x.items()}, {"input_shape": [4], "num_classes": 2})
    dataset = artifact_from_dir("dataset", "dataset", tmp_path / "data")
    _tf.seed_everything(0)
    k = _tf.keras()
    save_keras_model(k.Sequential([k.layers.Input((4,)), k.layers.Dense(2)]), tmp_path / "model")
    model = artifact_from_dir("model", "keras-model", tmp_path / "model")
    int8 = run_step(tflite.tinybuild_step_types()[0], [model], {"quantize": "int8"}, dataset=dataset, step="int8")
    evaluate_step = evaluate.tinybuild_step_types()[0]
    evaluated = [run_step(evaluate_step, [a], {"latency_runs": 2}, dataset=dataset, step=f"eval_{a.step}")
                 for a in (model, int8)]
    out, metrics = build(evaluated, target={"flash_kb": 64})
    data = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in data["variants"]] == ["model", "int8"]
    assert data["gated"] == ["int8"] and data["passed"]
    assert data["variants"][1]["label"] == "tflite int8"
    assert data["variants"][1]["arena_bytes"] > 0
    assert set(metrics["latency_ms"]) == {"model", "int8"}


# -- through the CLI: a failed gate is exit code 3 ------------------------------------------

MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


def test_cli_build_keeps_the_report_on_a_rerun_and_exits_3_when_a_budget_is_exceeded(tmp_path, capsys):
    """Through the CLI with real evaluate -> report: a forced re-evaluation measures a
    new latency but writes the same metrics.json, so the report stays cached (early
    cutoff); then a budget the model exceeds fails the build with exit code 3."""
    from tinybuild import cli

    recipe = tmp_path / "gate.toml"
    recipe.write_text(textwrap.dedent(f"""
        [recipe]
        name = "gate-check"
        seed = 0

        [target]
        flash_kb = 64

        [dataset]
        use = "idx"
        images = "{MNIST / 't10k-images-idx3-ubyte.gz'}"
        labels = "{MNIST / 't10k-labels-idx1-ubyte.gz'}"
        limit = 300

        [model]
        use = "keras"
        architecture = "mlp"
        options = {{ hidden = [8] }}

        [steps.int8]
        use = "tflite"
        input = "model"
        quantize = "int8"
        representative_samples = 20

        [steps.eval_int8]
        use = "evaluate"
        input = "int8"
        latency_runs = 3
        warmup_runs = 1

        [steps.report]
        use = "report"
        inputs = ["eval_int8"]
    """))
    args = ["build", str(recipe), "--plain", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "build")]
    assert cli.main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert cli.main(args + ["--force", "eval_int8"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"eval_int8 +built", err) and re.search(r"report +cached", err), err

    recipe.write_text(recipe.read_text().replace("flash_kb = 64", "flash_kb = 1"))
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 3, err
    assert "variant int8: size" in err and "> flash_kb 1" in err
    # the failed gate still leaves the report in the build folder
    assert (tmp_path / "build" / "gate-check" / "report" / "report.html").exists()


def test_example_recipe_plans_and_gates_real_variants(tmp_path, capsys):
    """recipes/mnist_cnn.toml: every step's params validate and the wiring type-checks
    (``tinybuild plan`` runs nothing), and the report gates variants it evaluates."""
    import tomllib

    from tinybuild import cli

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "mnist_cnn.toml"
    code = cli.main(["plan", str(recipe), "--json", "--cache-dir", str(tmp_path / "cache"),
                     "--lock", str(tmp_path / "lock.json")])
    plan = json.loads(capsys.readouterr().out)
    assert code == 0
    steps = json.loads(json.dumps(tomllib.loads(recipe.read_text())))["steps"]
    assert {item["step"] for item in plan} == {"dataset", "model", *steps}
    evaluated = {steps[name]["input"] for name in steps["report"]["inputs"]}
    assert set(steps["report"]["gate"]) <= evaluated
    tflite_steps = {name for name, table in steps.items() if table["use"] == "tflite"}
    assert tflite_steps <= evaluated  # every converted variant is evaluated and reported


@pytest.mark.parametrize("history", [
    {"accuracy": [0.955, 0.962, 0.971, 0.98], "val_accuracy": [0.95, 0.96, 0.965, 0.975], "loss": [0.3, 0.2, 0.15, 0.1]},
    {"accuracy": [0.97], "loss": [0.1]},  # a single epoch
])
def test_training_curve_ticks_are_distinct_and_epochs_whole(history):
    """Close accuracies used to print "98%, 97%, 97%, 96%, 96%", and a single
    epoch got ticks 0.95, 1.00, 1.05."""
    from tinybuild_plugins.report.plots import history_svg

    texts = re.findall(r"<text[^>]*>([^<]*)</text>", history_svg("t", history))
    panels = "\n".join(texts).split("epoch")  # x ticks, then "epoch", then the panel's y ticks ...
    percents = [t for t in texts if t.endswith("%")]
    assert percents and len(percents) == len(set(percents)), percents
    epochs = len(history["accuracy"])
    x_ticks = [t for t in panels[0].split("\n") if t]
    assert x_ticks == [str(e) for e in range(1, epochs + 1)], x_ticks


# -- variant names are checked at plan time (exit 2), before anything runs -------------------

PLAN_RECIPE = f"""
[recipe]
name = "names"
seed = 0

[dataset]
use = "idx"
images = "{MNIST / 't10k-images-idx3-ubyte.gz'}"
labels = "{MNIST / 't10k-labels-idx1-ubyte.gz'}"
limit = 300

[model]
use = "keras"
architecture = "mlp"
options = {{ hidden = [8] }}

[steps.fp32]
use = "tflite"
input = "model"

[steps.int8]
use = "tflite"
input = "model"
quantize = "int8"
representative_samples = 20

[steps.eval_model]
use = "evaluate"
input = "model"

[steps.eval_fp32]
use = "evaluate"
input = "fp32"

[steps.eval_int8]
use = "evaluate"
input = "int8"

[steps.report]
use = "report"
inputs = ["eval_model", "eval_fp32", "eval_int8"]
"""


def _cli(tmp_path, capsys, command: str, recipe_text: str) -> tuple[int, str]:
    from tinybuild import cli

    recipe = tmp_path / "names.toml"
    recipe.write_text(recipe_text)
    capsys.readouterr()
    code = cli.main([command, str(recipe), "--cache-dir", str(tmp_path / "cache"),
                     *(["--plain", "--out", str(tmp_path / "build")] if command == "build" else [])])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("line, key, hint", [
    ('baseline = "int9"', "steps.report.baseline: 'int9' is not a variant", "did you mean 'int8'?"),
    ('gate = ["int8", "eval_fp32"]', "steps.report.gate[1]: 'eval_fp32' is not a variant",
     "'eval_fp32' is the evaluate step; name the model it evaluates: 'fp32'."),
    ('side_by_side = [["model", "int8"], ["fp23"]]', "steps.report.side_by_side[1][0]: 'fp23' is not a variant",
     "did you mean 'fp32'?"),
])
def test_unknown_variant_names_fail_plan_naming_the_key_and_the_variants(tmp_path, capsys, line, key, hint):
    code, err = _cli(tmp_path, capsys, "plan", PLAN_RECIPE + line + "\n")
    assert code == 2, err
    assert f"names.toml: {key}" in err and hint in err and "Traceback" not in err
    assert "variants (the models the report's evaluate inputs evaluate): model, fp32, int8" in err


def test_unknown_variant_name_fails_build_before_any_step_runs(tmp_path, capsys):
    code, err = _cli(tmp_path, capsys, "build", PLAN_RECIPE + 'gate = ["int9"]\n')
    assert code == 2 and "steps.report.gate[0]: 'int9' is not a variant" in err
    written = [p for root in (tmp_path / "cache", tmp_path / "build") if root.exists()
               for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".tflite", ".npy")]
    assert written == []  # not even the dataset step ran


def test_valid_variant_names_plan(tmp_path, capsys):
    code, err = _cli(tmp_path, capsys, "plan", PLAN_RECIPE + textwrap.dedent("""\
        baseline = "fp32"
        gate = ["int8", "model"]
        side_by_side = [["model", "int8"], ["fp32"]]
    """))
    assert code == 0, err


def test_tflm_on_a_keras_input_fails_plan(tmp_path, capsys):
    text = PLAN_RECIPE.replace('[steps.eval_model]\nuse = "evaluate"\n', '[steps.eval_model]\nuse = "evaluate"\ntflm = true\n')
    code, err = _cli(tmp_path, capsys, "plan", text)
    assert code == 2 and "steps.eval_model.tflm: tflm = true runs a .tflite model" in err
    assert "'model' produces a keras-model" in err
    code, err = _cli(tmp_path, capsys, "plan", text.replace('tflm = true\ninput = "model"', 'tflm = true\ninput = "int8"'))
    assert code == 0, err


def _sweep_recipe(extra: str) -> str:
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "mnist_sweep.toml"
    return recipe.read_text().replace('"../data/mnist/', f'"{MNIST}/') + extra + "\n"


def test_sweep_members_are_the_variant_names(tmp_path, capsys):
    member = "tfl-final_sparsity_0p75-clusters_8-quantize_int8"
    code, err = _cli(tmp_path, capsys, "plan", _sweep_recipe(
        f'baseline = "tfl-final_sparsity_0p5-clusters_16-quantize_float16"\ngate = ["{member}"]'))
    assert code == 0, err
    code, err = _cli(tmp_path, capsys, "plan", _sweep_recipe('gate = ["tfl"]'))
    assert code == 2
    assert "steps.report.gate[0]: 'tfl' is not a variant" in err
    assert "'tfl' is a sweep; name its members, e.g. 'tfl-final_sparsity_0p5-clusters_8-quantize_float16'." in err
    assert member in err


def test_the_check_is_left_to_the_run_when_an_input_is_not_an_evaluate_step():
    from tinybuild.api import StepView

    params = STEP.params.model_validate({"baseline": "nope"})
    evaluated = StepView("eval_int8", "evaluate", "metrics", ("int8",))
    other = StepView("custom", "acme-metrics", "metrics", ("int8",))
    assert [p.key for p in report.check_variant_names(params, [evaluated])] == ["baseline"]
    assert report.check_variant_names(params, [evaluated, other]) == []
