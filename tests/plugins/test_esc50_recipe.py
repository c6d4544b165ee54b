"""recipes/esc50_events.toml: the thesis pipeline on the ESC-50 subset, built for real.

The data is not part of the repository (``${TINYBUILD_DATA}/esc50-subset``;
see the recipe): the build test skips, saying where it looked, when it is
absent. The missing-data error needs no data and always runs.

To stay around half a minute the build uses the recipe with one epoch per
training step (same steps, same wiring); the recipe's own figures come from
``benchmarks/audio.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "esc50_events.toml"
HEAVY = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "ai_edge_litert",
         "soundfile", "soxr", "scipy")
CHECK = """
import json, sys
from tinybuild.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def data_root() -> Path:
    """Where the recipe looks: ${TINYBUILD_DATA}, else ../../shared/data from recipes/."""
    return Path(os.environ.get("TINYBUILD_DATA") or (RECIPE.parent / "../../shared/data")).resolve()


def build(recipe: Path, root: Path, data: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
    env["TINYBUILD_DATA"] = str(data)
    args = ["build", str(recipe), "--plain", "--cache-dir", str(root / "cache"), "--out", str(root / "out"),
            "--lock", str(root / "lock.json")]
    proc = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, env=env, timeout=600)
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stdout + proc.stderr


def test_missing_data_is_a_recipe_error_naming_path_and_variable(tmp_path):
    result, log = build(RECIPE, tmp_path, tmp_path / "no-data-here")
    assert result["code"] == 2, log
    assert str(tmp_path / "no-data-here" / "esc50-subset" / "audio") in log
    assert "TINYBUILD_DATA" in log and "Traceback" not in log


def test_esc50_recipe_builds_with_a_clip_grouped_split(tmp_path):
    data = data_root()
    if not (data / "esc50-subset" / "meta.csv").is_file():
        pytest.skip(f"ESC-50 subset not found at {data / 'esc50-subset'}: set TINYBUILD_DATA to the folder holding it")
    quick = tmp_path / "esc50_events.toml"  # same recipe, one epoch per training step
    text = re.sub(r"(?m)^epochs = \d+", "epochs = 1", RECIPE.read_text())
    quick.write_text(text.replace("patience = 8", ""))
    result, log = build(quick, tmp_path, data)
    assert result["code"] == 0, log
    out = tmp_path / "out" / "esc50-events"

    meta = json.loads((out / "dataset" / "meta.json").read_text())
    assert meta["input_shape"] == [90, 90, 1] and meta["audio"]["side"] == 90
    assert sum(meta["splits"].values()) == 49 * 9  # 5 s clips, 1 s windows every 0.5 s
    assert sum(meta["groups"].values()) == 47  # 47 source recordings, each in one split only
    assert all(n > 0 for n in meta["class_counts"]["train"].values())

    original = json.loads((out / "eval_original" / "metrics.json").read_text())
    int8 = json.loads((out / "eval_int8" / "metrics.json").read_text())
    assert original["class_names"] == int8["class_names"] == meta["class_names"]
    assert len(original["confusion_matrix"]) == 6 and all("accuracy" in c for c in int8["per_class"])
    assert set(original["upstream"]["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert [e["optimization"] for e in int8["upstream"]["training"]] == ["trained", "pruned", "qat"]

    shrinklog = (out / "report" / "shrinklog.txt").read_text()
    for line in ("Sample rate:        8000 Hz", "2-D side length:    90", "Pruning epochs:     1", "Batch size:         32"):
        assert line in shrinklog
    assert {p.suffix for p in (out / "firmware").iterdir()} == {".h", ".cc"}

    again, log = build(quick, tmp_path, data)  # nothing changed: no TensorFlow, no audio library
    assert again == {"code": 0, "heavy": []}, log
