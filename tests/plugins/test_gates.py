"""Device budget gates (``plugins/report/gates.py``): measured TFLM arena over
the estimate, refusals as failed gates, runtime flash, and the report step
failing with the variant and the cause."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from tinybuild.api import GateFailed
from tinybuild.testing import artifact_from_dir
from tinybuild_plugins.report import gates, report

STEP = report.tinybuild_step_types()[0]


def tflm_section(arena: int | None = 11_952, accuracy: float = 0.98, reason: str | None = None) -> dict:
    runs = reason is None
    return {"runs": runs, "reason": reason, "arena_bytes": arena if runs else None,
            "arena_min_bytes": arena if runs else None, "accuracy": accuracy if runs else None,
            "correct": 0, "samples": 100, "per_class": [], "confusion_matrix": [],
            "max_abs_diff_vs_litert": 0.0 if runs else None, "argmax_agreement": 1.0 if runs else None}


def row(variant: str = "int8", *, size: int = 22_440, estimate: int | None = 10_140, accuracy: float = 0.98,
        tflm: dict | None = None) -> dict:
    return {"variant": variant, "model_kind": "tflite", "split": "test", "accuracy": accuracy,
            "size_bytes": size, "arena_bytes": estimate, "tflm": tflm}


def texts(checks):
    return {c["budget"]: (c["passed"], c["text"]) for c in checks}


def test_ram_gate_uses_the_measured_arena_plus_margin_not_the_estimate():
    rows = [row(tflm=tflm_section(arena=11_952))]
    checks = texts(gates.check_gates(rows, ["int8"], {"ram_kb": 12}))
    # 11,952 B measured fits 12 KiB, but + 10% margin (13,152 B after 16-byte rounding) does not
    assert checks["ram_kb"] == (False, "TFLM arena 11,952 B + 10% margin = 13,152 B (12.84 KiB) > ram_kb 12 (12,288 B)")
    zero = texts(gates.check_gates(rows, ["int8"], {"ram_kb": 12, "arena_margin": 0}))
    assert zero["ram_kb"][0] is True and "11,952 B" in zero["ram_kb"][1]


def test_estimate_is_labelled_and_used_only_without_a_measurement():
    rows = [row("a", tflm=tflm_section(arena=30_000)), row("b", estimate=10_140)]
    checks = gates.check_gates(rows, ["a", "b"], {"ram_kb": 16})
    by_variant = {c["variant"]: c for c in checks}
    assert by_variant["a"]["passed"] is False and by_variant["a"]["text"].startswith("TFLM arena 30,000 B")
    assert by_variant["b"]["passed"] is True and by_variant["b"]["text"].startswith("arena estimate 10,140 B")
    warnings = gates.estimate_warnings(rows, ["a", "b"], {"ram_kb": 16})
    assert len(warnings) == 1 and "b was not evaluated on TFLM" in warnings[0]
    # runtime = "litert": the estimate everywhere, no warning
    litert = gates.check_gates(rows, ["a", "b"], {"ram_kb": 16, "runtime": "litert"})
    assert all(c["text"].startswith("arena estimate") for c in litert)
    assert gates.estimate_warnings(rows, ["a", "b"], {"ram_kb": 16, "runtime": "litert"}) == []


def test_a_variant_tflm_cannot_run_fails_with_the_reason():
    reason = "does not run on TFLM: DEQUANTIZE float16 -> float32 (operator 0 failed to prepare)"
    rows = [row("fp16", size=43_000, tflm=tflm_section(reason=reason))]
    checks = texts(gates.check_gates(rows, ["fp16"], {"flash_kb": 64, "ram_kb": 64, "min_accuracy": 0.9}))
    assert checks["runtime"] == (False, reason)
    assert checks["flash_kb"][0] is True
    assert "ram_kb" not in checks and "min_accuracy" not in checks  # nothing to measure them on


def test_flash_adds_runtime_flash_and_max_arena_checks_the_bare_arena():
    rows = [row(size=22_440, tflm=tflm_section(arena=11_952))]
    target = {"flash_kb": 31.5, "runtime_flash_kb": 10, "max_arena_kb": 11.5}
    checks = texts(gates.check_gates(rows, ["int8"], target))
    # the model alone (22,440 B) fits 31.5 KiB; with 10 KiB of interpreter and kernels it does not
    assert checks["flash_kb"] == (False, "size 22,440 B + runtime_flash_kb 10 (10,240 B) = 32,680 B (31.91 KiB) "
                                         "> flash_kb 31.5 (32,256 B)")
    assert checks["max_arena_kb"] == (False, "TFLM arena 11,952 B (11.67 KiB) > max_arena_kb 11.5 (11,776 B)")


def test_min_accuracy_uses_tflm_accuracy_when_measured():
    rows = [row(accuracy=0.99, tflm=tflm_section(accuracy=0.90))]
    checks = texts(gates.check_gates(rows, ["int8"], {"min_accuracy": 0.95}))
    assert checks["min_accuracy"] == (False, "TFLM accuracy 0.9000 < min_accuracy 0.95")


def test_report_step_fails_naming_the_variant_and_the_refusal(tmp_path):
    from tinybuild.context import RunContext

    reason = "does not run on TFLM: FULLY_CONNECTED float32 x int8 x float32 -> float32"
    variants = []
    for name, section in (("int8", tflm_section()), ("dynamic", tflm_section(reason=reason))):
        folder = tmp_path / f"eval_{name}"
        folder.mkdir()
        metrics = {"variant": name, "model_kind": "tflite", "split": "test", "accuracy": 0.98, "correct": 98,
                   "samples": 100, "per_class": [], "confusion_matrix": [], "size_bytes": 22_440,
                   "gzip_bytes": 18_000, "arena": {"peak_bytes": 10_140}, "upstream": {}, "tflm": section}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        variants.append(artifact_from_dir(f"eval_{name}", "metrics", folder))
    out = Path(tempfile.mkdtemp(prefix="tb-gates-"))
    ctx = RunContext(step="report", out_dir=out, seed=0, recipe_dir=out, target={"ram_kb": 16},
                     on_log=lambda *a: None)
    with pytest.raises(GateFailed, match=f"variant dynamic: {reason}"):
        STEP.run(ctx, variants, STEP.params.model_validate({}))
    saved = json.loads((out / "report.json").read_text())
    assert saved["variants"][1]["tflm"]["reason"] == reason


def test_gates_use_the_smallest_working_arena_when_it_exceeds_the_recorded_one():
    """TFLM's recording allocator can report less than the smallest arena
    that allocates (alignment, allocator bookkeeping): an arena of the
    recorded size then fails AllocateTensors() on the device, so a budget
    between the two must fail."""
    section = {**tflm_section(arena=1_584), "arena_min_bytes": 2_048}
    section["arena_bytes"] = 1_584  # as an older evaluate wrote it: the recorded total only
    rows = [row(tflm=section)]
    checks = texts(gates.check_gates(rows, ["int8"], {"max_arena_kb": 1.6, "ram_kb": 1.8, "arena_margin": 0}))
    assert checks["max_arena_kb"][0] is False and "2,048 B" in checks["max_arena_kb"][1]
    assert checks["ram_kb"][0] is False and "2,048 B" in checks["ram_kb"][1]
    fits = texts(gates.check_gates(rows, ["int8"], {"max_arena_kb": 2, "ram_kb": 2, "arena_margin": 0}))
    assert fits["max_arena_kb"][0] is True and fits["ram_kb"][0] is True
