"""recipes/mnist_sweep.toml plans to the expansion its comments and the README
describe: 3 sparsities x 2 cluster counts x 2 quantization modes, fan-out down
to the evaluations and one report that gathers them. Planning only (fast):
the figures of a real build are in the README."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tinybuild import cli

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "mnist_sweep.toml"
SPARSITIES, CLUSTERS, MODES = [0.5, 0.75, 0.9], [8, 16], ["float16", "int8"]


def enc(value) -> str:
    return str(value).replace(".", "p")


def test_the_sweep_recipe_plans_its_expansion(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TINYBUILD_PLUGINS", raising=False)
    code = cli.main(["plan", str(RECIPE), "--json", "--cache-dir", str(tmp_path / "cache"),
                     "--lock", str(tmp_path / "lock.json")])
    out = capsys.readouterr().out
    assert code == 0
    items = {i["step"]: i for i in json.loads(out)}
    pruned = [f"pruned-final_sparsity_{enc(s)}" for s in SPARSITIES]
    clustered = [f"clustered-final_sparsity_{enc(s)}-clusters_{c}" for s, c in itertools.product(SPARSITIES, CLUSTERS)]
    tfl = [f"tfl-final_sparsity_{enc(s)}-clusters_{c}-quantize_{q}"
           for s, c, q in itertools.product(SPARSITIES, CLUSTERS, MODES)]
    evals = [name.replace("tfl-", "eval-", 1) for name in tfl]
    assert list(items) == ["dataset", "model", "train", *pruned, *clustered, *tfl, *evals, "report"]
    assert len(evals) >= 12
    assert [items[n]["step_type"] for n in tfl] == ["tflite"] * 12
    member = items["tfl-final_sparsity_0p75-clusters_8-quantize_int8"]
    assert member["sweep"] == {"table": "tfl", "coordinates": {"final_sparsity": 0.75, "clusters": 8, "quantize": "int8"}}


def test_each_member_reads_its_own_upstream_member_and_the_report_reads_all(tmp_path, monkeypatch):
    from tinybuild.project import load_project

    monkeypatch.delenv("TINYBUILD_PLUGINS", raising=False)
    project = load_project(RECIPE, cache_dir=tmp_path / "cache")
    steps = project.steps
    assert steps["clustered-final_sparsity_0p9-clusters_16"].inputs == ("pruned-final_sparsity_0p9",)
    assert steps["clustered-final_sparsity_0p9-clusters_16"].params.clusters == 16
    assert steps["pruned-final_sparsity_0p9"].params.final_sparsity == 0.9
    assert steps["tfl-final_sparsity_0p5-clusters_8-quantize_float16"].inputs == ("clustered-final_sparsity_0p5-clusters_8",)
    assert steps["eval-final_sparsity_0p5-clusters_8-quantize_int8"].inputs == ("tfl-final_sparsity_0p5-clusters_8-quantize_int8",)
    evals = [n for n in project.order if n.startswith("eval-")]
    assert steps["report"].inputs == tuple(evals) and len(evals) == 12
    assert steps["report"].params.require == "any"
