"""The ``report`` step: files, comparisons, determinism and budget gates.

Most tests feed hand-written ``metrics.json`` files (the layout ``evaluate``
writes) so every figure in the report can be checked by hand and no
TensorFlow is needed; one test chains the real ``evaluate`` step, and one
builds a recipe through the CLI to check the exit code of a failed gate.
"""

from __future__ import annotations

import json
import re
import tempfile
import textwrap
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
                     split: str = "test") -> object:
    """A metrics artifact as ``evaluate`` writes it (only the keys report reads are filled)."""
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
        "per_class": [{"class": "0", "precision": 1.0, "recall": 1.0, "f1": 0.99, "support": 1000},
                      {"class": "1", "precision": 1.0, "recall": 1.0, "f1": 0.97, "support": 1000}],
        "confusion_matrix": [[1000, 0], [0, 1000]],
        "param_count": 20_410,
        "sparsity": 0.0,
        "size_bytes": size,
        "gzip_bytes": gzip,
        "arena": {"peak_bytes": arena} if arena is not None else None,
        "upstream": {"quantize": quantize, "source": "train"} if quantize else {"epochs_run": 3},
    }
    if kind == "keras-model":
        data["keras"] = {"optimization": "none", "weight_files": 4}
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


def test_html_is_self_contained_with_an_svg_chart(variants):
    out, _ = build(variants, target={"flash_kb": 96, "min_accuracy": 0.95})
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 1 and "</svg>" in page
    assert page.count("<circle") >= 4  # one point per variant (+ legend)
    for name in ("train", "fp32", "int8", "clustered"):
        assert f">{name}</text>" in page
    assert "flash_kb 96" in page and "min_accuracy 0.95" in page  # budgets drawn on the chart
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=""", page, re.I)
    assert "url(" not in page and "@import" not in page
    # the only URL is the SVG namespace identifier, which is never fetched
    assert set(re.findall(r"https?://[^\"' ]+", page)) == {"http://www.w3.org/2000/svg"}


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


def test_build_log_reads_like_a_lab_log(variants):
    out, _ = build(variants, {"title": "mnist-cnn"}, target={"flash_kb": 96})
    log = (out / "build.log").read_text()
    assert "tinybuild build log: mnist-cnn" in log and "seed: 7" in log and "target: flash_kb = 96" in log
    assert "[3] int8 (tflite int8)" in log
    assert "accuracy: 0.9790 (1958/2000)" in log and "size: 22,480 B" in log
    assert "from its step: quantize=int8, source=train" in log
    assert "int8: size 22,480 B (21.95 KiB) <= flash_kb 96 (98,304 B) -> pass" in log
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}", log)  # no dates or times


def test_report_files_are_byte_deterministic(variants, tmp_path):
    first, _ = build(variants, out=tmp_path / "a")
    # latency is measured per run: different figures must not change the files
    jittered = [artifact_from_dir(a.step, a.kind, a.path, {**a.metrics, "latency_ms": 9.9}) for a in variants]
    second, _ = build(jittered, out=tmp_path / "b")
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_latency_can_be_written_into_the_files(variants):
    out, _ = build(variants, {"latency": True})
    assert "Latency (ms)" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["variants"][0]["latency_ms"] == 1.5


def test_terminal_table_goes_through_ctx_log(variants):
    logs: list[str] = []
    build(variants, logs=logs)
    text = "\n".join(logs)
    assert "clustered" in text and "97.20%" in text and "Latency (ms)" in text


def test_flash_gate_names_variant_budget_and_figure(tmp_path):
    big = metrics_artifact(tmp_path, "int8", size=86_221)  # 84.2 KiB
    with pytest.raises(GateFailed, match=r"variant int8: size 86,221 B \(84\.20 KiB\) > flash_kb 64 \(65,536 B\)") as failure:
        build([big], target={"flash_kb": 64}, out=tmp_path / "out")
    table = str(failure.value).splitlines()[1:]  # the full table follows the one-line summary
    assert any("Variant" in line and "Gate" in line for line in table)
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


def test_tinybuild_build_exits_3_when_a_budget_is_exceeded(tmp_path, capsys):
    from tinybuild import cli

    recipe = tmp_path / "gate.toml"
    recipe.write_text(textwrap.dedent(f"""
        [recipe]
        name = "gate-check"
        seed = 0

        [target]
        flash_kb = 1

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
        latency_runs = 0

        [steps.report]
        use = "report"
        inputs = ["eval_int8"]
    """))
    args = ["build", str(recipe), "--plain", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "build")]
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 3, err
    assert "variant int8: size" in err and "> flash_kb 1" in err
    # the failed gate still leaves the report in the build folder
    assert (tmp_path / "build" / "gate-check" / "report" / "report.html").exists()


def test_chart_labels_of_equal_points_do_not_overlap():
    from tinybuild_plugins.report import render as _report_render

    points = [(100.0, 50.0, "int8"), (100.0, 50.0, "pruned_int8"), (100.0, 50.0, "clustered_int8")]
    placed = _report_render._place_labels(points)
    ys = sorted(y for _, y in placed)
    assert all(b - a >= 12 for a, b in zip(ys, ys[1:]))


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
