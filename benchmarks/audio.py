"""Audio recipes: quality, size and speed of recipes/esc50_events.toml over seeds.

Usage: python benchmarks/audio.py [--seeds 0 1 2] [--log-mel] [--data DIR]

For each seed, builds the recipe (a copy with ``[recipe] seed`` changed; the
seed draws the clip-grouped split *and* the initial weights, so the spread
covers both) from an empty cache, as a user would (the ``tinybuild`` CLI), and
reads the evaluations: accuracy and macro-F1 of the original Keras model and
of the int8 TFLite model on the test split (val accuracy of the original too:
settings were chosen on it), and the size ratio.

"Original size" is what ``evaluate`` counts for a Keras model: its weight
files (float32 ``.npy``, 128-byte headers included), not the architecture
JSON; the int8 size is the ``.tflite`` file.

Then: the time to load and window the 49 clips (the ``audio`` step alone,
in-process: the first run, which imports the audio libraries, and the best
of 3; ``--load-only`` measures just this), and a no-op rebuild of seed 0 in a fresh process:
its wall time and whether it imported TensorFlow or an audio library.

``--log-mel`` adds the same pipeline with 40-band log-mel features instead of
squared raw windows (no settings tuned for it: same model and epochs).

Prints tables; exits 0. Data: ``--data`` or ``$TINYBUILD_DATA`` (the folder
holding ``esc50-subset/``), else ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "esc50_events.toml"
HEAVY = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "ai_edge_litert",
         "soundfile", "soxr", "scipy")
CHECK = """
import json, sys, time
start = time.perf_counter()
from tinybuild.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY})
print(json.dumps({"code": code, "heavy": heavy, "seconds": time.perf_counter() - start}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))

LOG_MEL = 'features = "log-mel"          # benchmark variant: 40-band log-mel, 25 ms frames every 10 ms\n'


def build(recipe: Path, work: Path, data: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
    env["TINYBUILD_DATA"] = str(data)
    args = ["build", str(recipe), "--plain", "--cache-dir", str(work / "cache"), "--out", str(work / "out"),
            "--lock", str(work / "lock.json")]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    if result["code"] != 0:
        sys.exit(f"build of {recipe} failed ({result['code']}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**result, "wall": wall}


def variant(recipe_text: str, seed: int, log_mel: bool) -> str:
    text = re.sub(r"(?m)^seed = \d+", f"seed = {seed}", recipe_text)
    if log_mel:
        text = text.replace('layout = "square"', LOG_MEL + 'layout = "square"')
    return text


def read(out: Path) -> dict:
    original = json.loads((out / "eval_original" / "metrics.json").read_text())
    int8 = json.loads((out / "eval_int8" / "metrics.json").read_text())
    val = original["upstream"].get("val_accuracy")
    return {
        "orig_acc": original["accuracy"], "orig_f1": original["macro_f1"],
        "int8_acc": int8["accuracy"], "int8_f1": int8["macro_f1"],
        "orig_bytes": original["size_bytes"], "int8_bytes": int8["size_bytes"],
        "ratio": original["size_bytes"] / int8["size_bytes"], "val_acc": val,
        "test_windows": original["samples"], "params": original["param_count"],
    }


def load_time(data: Path) -> list[float]:
    """3 in-process runs of the audio step alone (read, resample, window, split,
    save); the first includes importing soundfile, soxr and SciPy."""
    from tinybuild.testing import run_step
    from tinybuild_plugins.data.audio import AUDIO

    params = {"folder": str(data / "esc50-subset" / "audio"), "csv": str(data / "esc50-subset" / "meta.csv"),
              "group_column": "src_file", "sample_rate": 8000, "split": {"train": 0.6, "val": 0.2, "test": 0.2}}
    times = []
    for _ in range(3):
        out = Path(tempfile.mkdtemp(prefix="tb-audio-bench-"))
        start = time.perf_counter()
        run_step(AUDIO, [], params, out_dir=out)
        times.append(time.perf_counter() - start)
        shutil.rmtree(out, ignore_errors=True)
    return times


def window_split_leak(seed: int = 0) -> str:
    """What a window-by-window split (the idx/npz default) would do to the
    recipe's 49 x 9 windows: test windows whose clip has windows in train,
    and those with an overlapping (adjacent) window in train."""
    import numpy as np

    from tinybuild_plugins.data.datasets import Split, split_indices

    clips, per_clip = 49, 9
    clip_of = np.repeat(np.arange(clips), per_clip)
    position = np.tile(np.arange(per_clip), clips)
    labels = clip_of % 6  # the class does not matter for the count
    idx = split_indices(labels, Split(train=0.6, val=0.2, test=0.2), seed, stratify=True)
    train = set(zip(clip_of[idx["train"]].tolist(), position[idx["train"]].tolist()))
    test = list(zip(clip_of[idx["test"]].tolist(), position[idx["test"]].tolist()))
    same_clip = sum(any((c, q) in train for q in range(per_clip)) for c, _ in test)
    neighbour = sum(((c, w - 1) in train) or ((c, w + 1) in train) for c, w in test)
    return (f"window-by-window split (60/20/20, seed {seed}) for comparison: {same_clip} of {len(test)} test windows "
            f"share a clip with train windows, {neighbour} have a 50%-overlapping neighbour in train; "
            "clip-grouped split: 0 and 0")


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--log-mel", action="store_true", help="also benchmark 40-band log-mel features")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--load-only", action="store_true", help="only time loading and windowing the clips")
    args = parser.parse_args()
    data = (args.data or Path(os.environ.get("TINYBUILD_DATA") or ROOT.parent / "shared" / "data")).resolve()
    if not (data / "esc50-subset" / "meta.csv").is_file():
        print(f"ESC-50 subset not found at {data / 'esc50-subset'}; set TINYBUILD_DATA or pass --data")
        return 0

    if args.load_only:
        times = load_time(data)
        print(f"load + window 49 clips (audio step): first run {times[0]:.2f} s (imports included), "
              f"best of 3 {min(times):.2f} s   target: < 5 s")
        print(window_split_leak())
        return 0
    recipe_text = RECIPE.read_text()
    work = Path(tempfile.mkdtemp(prefix="tinybuild-audio-bench-"))
    rows: dict[str, list[dict]] = {}
    noop = None
    try:
        for label, log_mel in [("raw 90x90", False)] + ([("log-mel 98x40", True)] if args.log_mel else []):
            rows[label] = []
            for seed in args.seeds:
                folder = work / f"{'mel' if log_mel else 'raw'}-{seed}"
                folder.mkdir()
                recipe = folder / "esc50_events.toml"
                recipe.write_text(variant(recipe_text, seed, log_mel))
                result = build(recipe, folder, data)
                rows[label].append({"seed": seed, "build_s": result["wall"], **read(folder / "out" / "esc50-events")})
                if noop is None:
                    noop = build(recipe, folder, data)
        load = load_time(data)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"recipes/esc50_events.toml: 49 clips, clip-grouped split by src_file (60/20/20), cores: {os.cpu_count()}")
    print(f"{'features':<14} {'seed':>4} {'val acc':>8} {'orig acc':>9} {'orig F1':>8} {'int8 acc':>9} "
          f"{'int8 F1':>8} {'orig B':>8} {'int8 B':>7} {'ratio':>6} {'build s':>8}")
    for label, runs in rows.items():
        for r in runs:
            print(f"{label:<14} {r['seed']:>4} {r['val_acc']:>8.3f} {r['orig_acc']:>9.3f} {r['orig_f1']:>8.3f} "
                  f"{r['int8_acc']:>9.3f} {r['int8_f1']:>8.3f} {r['orig_bytes']:>8,} {r['int8_bytes']:>7,} "
                  f"{r['ratio']:>6.2f} {r['build_s']:>8.1f}")
    print()
    print(f"{'features':<14} {'val acc':>14} {'orig acc':>14} {'orig macro-F1':>14} {'int8 acc':>14} "
          f"{'int8 macro-F1':>14} {'size ratio':>11}  (mean ± sd over seeds {', '.join(map(str, args.seeds))})")
    for label, runs in rows.items():
        col = {k: [r[k] for r in runs] for k in runs[0]}
        print(f"{label:<14} {spread(col['val_acc']):>14} {spread(col['orig_acc']):>14} {spread(col['orig_f1']):>14} "
              f"{spread(col['int8_acc']):>14} {spread(col['int8_f1']):>14} {statistics.fmean(col['ratio']):>10.2f}x")
    first = next(iter(rows.values()))[0]
    print(f"original size = Keras weight files (float32 .npy incl. headers), {first['params']:,} parameters; "
          f"int8 size = the .tflite file; test split: {first['test_windows']} windows (seed {first['seed']})")
    print()
    print(f"load + window 49 clips (audio step): first run {load[0]:.2f} s (imports included), "
          f"best of 3 {min(load):.2f} s   target: < 5 s")
    print(window_split_leak())
    print(f"no-op rebuild: {noop['wall']:.2f} s wall, heavy modules imported: {', '.join(noop['heavy']) or 'none'}   "
          "target: none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
