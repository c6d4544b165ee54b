"""The README's example, recipes/mnist_cnn.toml, built for real.

Two builds from empty caches (the second in a fresh process) must give
identical digests for every artifact, and a rebuild with nothing changed
must run nothing and import no TensorFlow (nor LiteRT, nor TFLM), on both
the fast and the normal path. This is the slowest test of the suite (two full builds, ~1 min).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "mnist_cnn.toml"
HEAVY = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "ai_edge_litert", "tflite_micro")

CHECK = """
import json, sys
from tinybuild.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def build_in_subprocess(root: Path, name: str, fast: bool = True) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
    if not fast:
        env["TINYBUILD_NO_FASTPATH"] = "1"
    args = ["build", str(RECIPE), "--plain", "--cache-dir", str(root / f"cache-{name}"),
            "--out", str(root / f"out-{name}"), "--lock", str(root / f"{name}.lock.json")]
    proc = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, env=env, timeout=900)
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    return result, proc.stderr


def digests(lock: Path) -> dict[str, str]:
    steps = json.loads(lock.read_text())["steps"]
    return {name: entry["output"]["digest"] for name, entry in steps.items()}


def test_example_recipe_is_reproducible_and_rebuilds_nothing(tmp_path):
    first, log = build_in_subprocess(tmp_path, "a")
    assert first["code"] == 0, log
    second, log = build_in_subprocess(tmp_path, "b")
    assert second["code"] == 0, log
    a, b = digests(tmp_path / "a.lock.json"), digests(tmp_path / "b.lock.json")
    assert len(a) == 30
    assert a == b  # every artifact, byte for byte, from two empty caches

    for fast in (False, True):
        again, log = build_in_subprocess(tmp_path, "a", fast=fast)
        assert again == {"code": 0, "heavy": []}, log
        assert " built" not in log.replace("0 built", "")

    report = json.loads((tmp_path / "out-a" / "mnist-cnn" / "report" / "report.json").read_text())
    variants = {v["variant"]: v for v in report["variants"]}
    assert variants["fp32"]["accuracy"] > 0.9
    assert variants["clustered_int8"]["gzip_bytes"] * 12 <= variants["fp32"]["gzip_bytes"]
    c_array = tmp_path / "out-a" / "mnist-cnn" / "firmware"
    assert {p.name for p in c_array.iterdir()} == {"mnist_model.h", "mnist_model.cc", "mnist_model_tflm.h"}

    # device truth: every int8 variant runs on TFLM with LiteRT's argmax; float16/dynamic do not run
    tflm = {name: v["tflm"] for name, v in variants.items() if v.get("tflm")}
    assert not tflm["fp16"]["runs"] and "DEQUANTIZE float16" in tflm["fp16"]["reason"]
    assert not tflm["dynamic"]["runs"] and "FULLY_CONNECTED float32 x int8" in tflm["dynamic"]["reason"]
    for name in ("int8", "int8_only", "pruned_int8", "clustered_int8", "qat_int8"):
        assert tflm[name]["argmax_agreement"] == 1.0, name
    lut = variants["clustered_lut"]
    assert lut["size_bytes"] <= 13_000 and lut["compression"]["bytes_before"] == 22_440
    assert lut["tflm"]["accuracy"] >= variants["fp32"]["accuracy"] - 0.005
    assert lut["tflm"]["confusion_matrix"] == tflm["clustered_int8"]["confusion_matrix"]
