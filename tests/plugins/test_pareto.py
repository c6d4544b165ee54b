"""The report's Pareto front and answer, on hand-built rows.

Expectations come from the definition (no other variant at least as good on
every figure and better on one; the answer is the smallest variant passing
every budget), either reasoned out per case or checked by brute force over
random rows -- never pasted from a run.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path

import pytest

from tinybuild.api import GateFailed
from tinybuild_plugins.report import pareto

sys.path.insert(0, str(Path(__file__).parent))
from test_report import build, metrics_artifact  # noqa: E402  (the report tests' artifact builder)


def row(name, flash, accuracy, ram=None, kind="tflite"):
    return {"variant": name, "size_bytes": flash, "accuracy": accuracy, "ram_bytes": ram, "model_kind": kind}


def check_gates(rows, gated, target):
    """Gate checks in the report's shape ({variant, budget, passed}), from the
    budgets' meaning; a budget without a figure to check is left out, as the
    report does."""
    figures = {"flash_kb": lambda r: r["size_bytes"], "ram_kb": lambda r: r["ram_bytes"]}
    checks = []
    for r in rows:
        if r["variant"] not in gated:
            continue
        for budget, figure in figures.items():
            if budget in target and figure(r) is not None:
                checks.append({"variant": r["variant"], "budget": budget, "passed": figure(r) <= target[budget] * 1024})
        if "min_accuracy" in target:
            checks.append({"variant": r["variant"], "budget": "min_accuracy", "passed": r["accuracy"] >= target["min_accuracy"]})
    return checks


def test_a_variant_beaten_on_every_figure_is_off_the_front():
    rows = [row("a", 10, 0.90), row("b", 20, 0.95), row("c", 20, 0.90), row("d", 30, 0.95)]
    result = pareto.front(rows)
    # c: a has less flash and the same accuracy; d: b has less flash and the same accuracy
    assert result["objectives"] == ["flash", "accuracy"]
    assert result["front"] == ["a", "b"]
    assert result["dominated_by"] == {"c": "a", "d": "b"}


def test_ram_counts_when_every_candidate_has_a_figure():
    # c loses to a on flash/accuracy as above, but needs less RAM than anyone: on the front
    rows = [row("a", 10, 0.90, ram=500), row("b", 20, 0.95, ram=500), row("c", 20, 0.90, ram=100)]
    assert pareto.front(rows)["objectives"] == ["flash", "ram", "accuracy"]
    assert pareto.front(rows)["front"] == ["a", "b", "c"]  # by flash, then higher accuracy first
    # one candidate without a RAM figure: RAM cannot be compared, so it is left out for all
    rows[1]["ram_bytes"] = None
    assert pareto.front(rows)["objectives"] == ["flash", "accuracy"]
    assert "c" in pareto.front(rows)["dominated_by"]


def test_identical_variants_are_both_on_the_front():
    result = pareto.front([row("x", 10, 0.9, 50), row("y", 10, 0.9, 50)])
    assert result["front"] == ["x", "y"] and result["dominated_by"] == {}


def test_keras_variants_are_not_candidates_when_tflite_ones_exist():
    rows = [row("train", 5, 0.99, kind="keras-model"), row("int8", 20, 0.95, ram=100)]
    result = pareto.front(rows)
    assert result["candidates"] == ["int8"] and result["front"] == ["int8"]
    pareto.mark(rows, result)
    assert [r["pareto"] for r in rows] == [None, "front"]
    only_keras = [row("train", 5, 0.99, kind="keras-model")]
    assert pareto.front(only_keras)["front"] == ["train"]


@pytest.mark.parametrize("seed", range(5))
def test_front_matches_the_definition_on_random_rows(seed):
    rng = random.Random(seed)
    # few distinct values, so that ties on some figures are common
    rows = [row(f"v{i}", rng.choice([100, 200, 300, 400]), rng.choice([0.8, 0.85, 0.9, 0.95]),
                rng.choice([10, 20, 30])) for i in range(25)]
    result = pareto.front(rows)

    def beats(a, b):  # written out from the definition, independent of the module
        no_worse = a["size_bytes"] <= b["size_bytes"] and a["ram_bytes"] <= b["ram_bytes"] and a["accuracy"] >= b["accuracy"]
        better = a["size_bytes"] < b["size_bytes"] or a["ram_bytes"] < b["ram_bytes"] or a["accuracy"] > b["accuracy"]
        return no_worse and better

    expected = {r["variant"] for r in rows if not any(beats(o, r) for o in rows)}
    assert set(result["front"]) == expected
    for loser, winner in result["dominated_by"].items():
        assert beats(next(r for r in rows if r["variant"] == winner), next(r for r in rows if r["variant"] == loser))
    flashes = [next(r for r in rows if r["variant"] == n)["size_bytes"] for n in result["front"]]
    assert flashes == sorted(flashes)
    # with every candidate gated, the smallest variant passing the budgets is on the front
    # (whoever dominated it would pass them too, and be at least as small)
    target = {"flash_kb": 0.3, "ram_kb": 0.025, "min_accuracy": 0.85}
    names = [r["variant"] for r in rows]
    checks = check_gates(rows, names, target)
    answer = pareto.answer(rows, names, checks, target)
    passing = [r for r in rows if r["size_bytes"] <= 307 and r["ram_bytes"] <= 25 and r["accuracy"] >= 0.85]
    if passing:
        assert answer["variant"] in result["front"]
        best = min(r["size_bytes"] for r in passing)
        chosen = next(r for r in rows if r["variant"] == answer["variant"])
        assert chosen["size_bytes"] == best
        assert chosen["accuracy"] == max(r["accuracy"] for r in passing if r["size_bytes"] == best)
    else:
        assert answer["variant"] is None


def test_answer_is_the_smallest_variant_passing_every_budget():
    rows = [row("big", 40_000, 0.99, 9_000), row("small_bad", 10_000, 0.90, 9_000),
            row("mid", 20_000, 0.97, 9_000), row("mid_better", 20_000, 0.98, 9_000)]
    target = {"flash_kb": 32, "min_accuracy": 0.95}
    names = [r["variant"] for r in rows]
    answer = pareto.answer(rows, names, check_gates(rows, names, target), target)
    # big fails flash, small_bad fails accuracy; of the two at 20,000 B the more accurate wins
    assert answer["variant"] == "mid_better"
    assert answer["passing"] == ["mid", "mid_better"]
    assert answer["text"].startswith("mid_better: the smallest of the 2 variants that pass every gate (flash 20,000 B")


def test_a_budget_that_could_not_be_checked_is_not_a_pass():
    rows = [row("no_ram", 10_000, 0.99, None), row("with_ram", 20_000, 0.99, 4_000)]
    target = {"flash_kb": 32, "ram_kb": 8}
    names = [r["variant"] for r in rows]
    checks = check_gates(rows, names, target)
    assert pareto.answer(rows, names, checks, target)["variant"] == "with_ram"
    # an ungated variant is never the answer, and without budgets there is none
    assert pareto.answer(rows, ["no_ram"], checks, target)["variant"] is None
    assert pareto.answer(rows, names, [], {})["text"] == "no [target] budgets: nothing to pass"


# -- in the report step ------------------------------------------------------------------


@pytest.fixture
def sweep_variants(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    figures = {"tiny": (8_000, 0.90, 7_000), "small": (12_000, 0.96, 7_000), "small_worse": (12_000, 0.95, 7_500),
               "large": (30_000, 0.98, 9_000)}
    return [metrics_artifact(src, name, size=size, accuracy=acc, arena=arena)
            for name, (size, acc, arena) in figures.items()]


def test_report_marks_the_front_and_names_the_answer_everywhere(sweep_variants, tmp_path):
    target = {"flash_kb": 16, "min_accuracy": 0.95}
    logs: list[str] = []
    out, metrics = build(sweep_variants, {"require": "any"}, target=target, out=tmp_path / "out", logs=logs)
    # tiny fails accuracy, large fails flash; small and small_worse pass, small is better at equal flash
    assert metrics["answer"] == "small" and metrics["gates_failed"] == 2
    assert metrics["pareto_front"] == ["tiny", "small", "large"]
    report = json.loads((out / "report.json").read_text())
    assert report["answer"]["variant"] == "small" and report["passed"] is True
    assert report["pareto"]["dominated_by"] == {"small_worse": "small"}
    assert {r["variant"]: r["pareto"] for r in report["variants"]} == {
        "tiny": "front", "small": "front", "small_worse": "dominated", "large": "front"}
    answer_line = "Answer: small: the smallest of the 2 variants that pass every gate"
    for name in ("report.md", "report.html", "build.log"):
        text = (out / name).read_text()
        assert answer_line in text, name
        assert "Pareto front (flash, RAM, accuracy): tiny, small, large" in text, name
    table = "\n".join(logs)
    assert answer_line in table.replace("\n  ", " ")
    assert any(line.startswith("| small ") and "front, answer" in line for line in table.splitlines())
    assert "passed on its answer, small" in (out / "report.md").read_text()


def test_require_all_still_fails_on_any_failed_budget(sweep_variants):
    with pytest.raises(GateFailed, match="variant tiny: accuracy"):
        build(sweep_variants, target={"flash_kb": 16, "min_accuracy": 0.95})


def test_require_any_fails_when_no_variant_passes(sweep_variants):
    with pytest.raises(GateFailed):
        build(sweep_variants, {"require": "any"}, target={"flash_kb": 4})


def test_terminal_shows_sweep_members_by_their_values_when_names_do_not_fit(tmp_path):
    from tinybuild_plugins.report import render

    src = tmp_path / "src"
    src.mkdir()
    combos = list(itertools.product(["0p5", "0p9"], [8, 16], ["int8", "float16"]))
    names = [f"tfl-final_sparsity_{s}-clusters_{c}-quantize_{q}" for s, c, q in combos]
    variants = [metrics_artifact(src, name, size=20_000 if name.endswith("int8") else 40_000, accuracy=0.9 + 0.01 * i)
                for i, name in enumerate(names)]
    logs: list[str] = []
    build(variants, {"require": "any"}, target={"flash_kb": 32, "min_accuracy": 0.92}, out=tmp_path / "out", logs=logs)
    lines = logs[0].splitlines()
    assert max(len(line) for line in lines) <= 76
    for (s, c, q) in combos:
        assert sum(line.startswith(f"| {s}-{c}-{q} ") for line in lines) == 1
    assert "Variant: tfl-final_sparsity_*-clusters_*-quantize_*" in lines
    # the answer keeps its full name, unbroken: the int8 variant with the highest accuracy
    assert any(line.startswith(f"Answer: {names[6]}: ") for line in lines)
    # names that are not a sweep's stay whole
    assert render.sweep_short_names(["train", "int8"]) == (["train", "int8"], None)
    assert render.sweep_short_names(["a-x_1", "a-y_1"]) == (["a-x_1", "a-y_1"], None)
