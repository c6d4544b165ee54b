"""recipes/mnist_joint.toml resolves: every step type, param, input role and kind checks out.

A full build takes about a minute on 2 cores (measured: 28 steps), too
long for the suite next to the example recipe's; the steps it chains are each
tested in test_distill.py, test_separable.py, test_tfmot.py and test_tflm_compress.py."""

from __future__ import annotations

from pathlib import Path

from tinybuild.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "mnist_joint.toml"


def test_the_joint_recipe_plans_every_variant(tmp_path, capsys):
    assert main(["plan", str(RECIPE), "--cache-dir", str(tmp_path / "cache"), "--lock", str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    for step, kind in (("student", "distill"), ("separable", "separable"), ("pruned_qat", "qat"),
                       ("clustered_qat", "qat"), ("clustered_qat_lut", "tflm-compress"), ("student_model", "keras"),
                       ("report", "report")):
        assert f" {step} " in out and f"[{kind}]" in out
    assert "0 cached, 28 to run" in out
