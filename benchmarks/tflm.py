"""Benchmark: the example's variants on TensorFlow Lite Micro (device truth).

Reads the outputs of ``tinybuild build recipes/mnist_cnn.toml`` (build it
first) and prints, per .tflite variant: whether TFLM runs it (and why not),
the arena the evaluate step reported next to the recording allocator's total
measured here independently (a fresh process calling ``print_allocations``)
and the arena estimate; argmax agreement and max absolute output difference
between TFLM and LiteRT on the whole test split; accuracy on TFLM; and the
wall/CPU time of the TFLM run (the child process, as the build runs it).

Then the LUT-compressed clustered model against the targets (<= 13,000 B,
accuracy on TFLM within 0.5 points of fp32, outputs identical to the
uncompressed clustered model), the TFLM time a full build adds, and which
heavy modules a no-op build imports (none expected: not TensorFlow, LiteRT
or TFLM).

Run: .venv/bin/python benchmarks/tflm.py [build/mnist-cnn folder]   (exits 0)
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tinybuild_plugins.sdk.dataset import load_dataset
from tinybuild_plugins.tflite import arena as _arena
from tinybuild_plugins.tflite import litert, tflm

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "mnist_cnn.toml"
VARIANTS = ("fp32", "fp16", "dynamic", "int8", "int8_only", "pruned_int8", "clustered_int8", "qat_int8",
            "clustered_lut")
INT8 = ("int8", "int8_only", "pruned_int8", "clustered_int8", "qat_int8", "clustered_lut")
LUT_BYTES_TARGET = 13_000
ACCURACY_SLACK = 0.005
ADDED_SECONDS_TARGET = 10.0

#: TFLM's recording allocator, asked in a fresh process (independent of the step's code)
RECORDED = """
import sys, numpy as np
from tflite_micro.python.tflite_micro import runtime
r = runtime.Interpreter.from_bytes(open(sys.argv[1], 'rb').read(), arena_size=1 << 20)
d = r.get_input_details(0)
r.set_input(np.zeros(d['shape'], d['dtype']), 0)
r.invoke()
r.print_allocations()
"""
NOOP = """
import json, sys
from tinybuild.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tf_keras', 'keras',
               'tensorflow_model_optimization', 'ai_edge_litert', 'tflite_micro'})
print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)
"""


def recorded_total(model: Path) -> int | None:
    done = subprocess.run([sys.executable, "-c", RECORDED, str(model)], capture_output=True, text=True)
    match = re.search(r"Arena allocation total (\d+) bytes", done.stderr)
    return int(match.group(1)) if match else None


def timed_child(model: Path, x: np.ndarray) -> tuple[dict, np.ndarray | None, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result, outputs = tflm.run_child(model, x, tflm.DEFAULT_ARENA_KB * 1024)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, outputs, wall, cpu


def litert_outputs(data: bytes, x: np.ndarray) -> np.ndarray | None:
    try:
        return litert.predict(litert.interpreter(data), x)
    except Exception:  # noqa: BLE001 - LiteRT has no DECODE kernel: compressed models only run on TFLM
        return None


def main(argv: list[str]) -> int:
    build = Path(argv[1]) if len(argv) > 1 else REPO / "recipes" / "build" / "mnist-cnn"
    if not (build / "dataset").is_dir():
        print(f"no build outputs in {build}: run `tinybuild build recipes/mnist_cnn.toml` first")
        return 0
    dataset = load_dataset(build / "dataset")
    x, y = dataset.x["test"], dataset.y["test"]
    rows, outputs, times = {}, {}, {}
    header = (f"{'variant':<15}{'bytes':>8}  {'TFLM':<5}{'reported':>10}{'recorded':>10}{'smallest':>10}"
              f"{'estimate':>10}{'argmax=':>9}{'max|diff|':>11}{'acc TFLM':>10}{'wall s':>8}{'cpu s':>7}")
    print(f"TFLM vs LiteRT on the test split ({len(y)} samples); arena figures in bytes")
    print(header)
    print("-" * len(header))
    for variant in VARIANTS:
        model = build / variant / "model.tflite"
        if not model.is_file():
            continue
        data = model.read_bytes()
        result, out, wall, cpu = timed_child(model, x)
        metrics_file = build / f"eval_{variant}" / "metrics.json"
        reported = None
        if metrics_file.is_file():
            reported = (json.loads(metrics_file.read_text()).get("tflm") or {}).get("arena_bytes")
        estimate = _arena.estimate_arena(data).peak_bytes
        ref = litert_outputs(data, x)
        times[variant] = (wall, cpu)
        if not result["runs"]:
            print(f"{variant:<15}{len(data):>8}  {'no':<5}{'-':>10}{'-':>10}{'-':>10}{estimate:>10}"
                  f"{'-':>9}{'-':>11}{'-':>10}{wall:>8.2f}{cpu:>7.2f}")
            print(f"{'':<15}  {result['reason'][:110]}")
            continue
        outputs[variant] = out
        recorded = recorded_total(model)
        accuracy = float(np.mean(out.argmax(1) == y))
        agree = diff = None
        if ref is not None:
            agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
            diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
        rows[variant] = {"accuracy": accuracy, "agree": agree, "bytes": len(data), "reported": reported,
                         "recorded": recorded}
        print(f"{variant:<15}{len(data):>8}  {'yes':<5}{reported or '-':>10}{recorded or '-':>10}"
              f"{result['arena_min_bytes']:>10}{estimate:>10}"
              f"{'-' if agree is None else f'{agree:.2%}':>9}{'-' if diff is None else f'{diff:.6f}':>11}"
              f"{accuracy:>10.2%}{wall:>8.2f}{cpu:>7.2f}")

    print()
    int8_agree = all(rows[v]["agree"] == 1.0 for v in INT8 if v in rows and rows[v]["agree"] is not None)
    arenas_match = all(r["reported"] == r["recorded"] for r in rows.values())
    print(f"every int8 variant: TFLM argmax = LiteRT argmax on 100% of samples: {'yes' if int8_agree else 'NO'}")
    print(f"reported arena = recording allocator's total for every runnable variant: "
          f"{'yes' if arenas_match else 'NO'}")
    if "clustered_lut" in rows and "fp32" in rows and "clustered_int8" in outputs:
        lut = rows["clustered_lut"]
        points = (rows["fp32"]["accuracy"] - lut["accuracy"]) * 100
        identical = np.array_equal(outputs["clustered_lut"], outputs["clustered_int8"])
        print(f"LUT-compressed clustered int8: {lut['bytes']:,} B (target <= {LUT_BYTES_TARGET:,}: "
              f"{'met' if lut['bytes'] <= LUT_BYTES_TARGET else 'MISSED'}); from "
              f"{rows['clustered_int8']['bytes']:,} B; accuracy on TFLM {lut['accuracy']:.2%}, "
              f"{points:+.2f} points below fp32 (target <= {ACCURACY_SLACK * 100:.1f}: "
              f"{'met' if points <= ACCURACY_SLACK * 100 else 'MISSED'}); TFLM outputs identical to "
              f"clustered_int8: {'yes' if identical else 'NO'}; arena {lut['recorded']:,} B vs "
              f"{rows['clustered_int8']['recorded']:,} B")
    # a full build runs TFLM once per evaluated variant, twice in tflm-compress (before/after), once in c-array
    int8_wall = sum(times[v][0] for v in INT8 if v in times) + 2 * times.get("clustered_int8", (0, 0))[0]
    int8_cpu = sum(times[v][1] for v in INT8 if v in times) + 2 * times.get("clustered_int8", (0, 0))[1]
    all_wall = sum(t[0] for t in times.values()) + 2 * times.get("clustered_int8", (0, 0))[0]
    print(f"TFLM time a full build adds: int8 variants (+ the compression check) {int8_wall:.1f} s wall, "
          f"{int8_cpu:.1f} s CPU (target < {ADDED_SECONDS_TARGET:.0f} s); all variants {all_wall:.1f} s wall")

    if RECIPE.is_file():
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", NOOP, "build", str(RECIPE), "--plain"],
                              capture_output=True, text=True, cwd=REPO)
        elapsed = time.perf_counter() - start
        try:
            result = json.loads(done.stderr.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"code": done.returncode, "heavy": ["(could not read)"]}
        print(f"no-op build: exit {result['code']} in {elapsed:.2f} s, heavy modules imported: "
              f"{', '.join(result['heavy']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
