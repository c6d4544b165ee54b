"""recipes/graph_optimize.toml builds end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tinybuild import cli

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "graph_optimize.toml"


def test_graph_optimize_recipe_builds_and_both_branches_agree(tmp_path, capsys):
    args = ["build", str(RECIPE), "--plain", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "build"), "--lock", str(tmp_path / "lock.json")]
    code = cli.main(args)
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "build" / "graph-optimize"
    frozen, optimized = (out / "frozen" / "graph.pb").stat().st_size, (out / "optimized" / "graph.pb").stat().st_size
    assert optimized < frozen
    graph_eval = json.loads((out / "eval_graph_fp32" / "metrics.json").read_text())
    keras_eval = json.loads((out / "eval_keras_fp32" / "metrics.json").read_text())
    assert graph_eval["accuracy"] == keras_eval["accuracy"] > 0.5
    report = json.loads((out / "report" / "report.json").read_text())
    assert "graph_fp32" in json.dumps(report) and "keras_fp32" in json.dumps(report)
    extras = json.loads((tmp_path / "lock.json").read_text())["steps"]["optimized"]["material"]["extras"]
    assert [name for name, *_ in extras["graph_passes"]][-3:] == ["fold-batchnorm", "fold-input-affine", "remove-dead"]
    assert cli.main(args) == 0  # a second build is fully cached
    assert "10 cached" in capsys.readouterr().err
