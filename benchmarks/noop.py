"""Time a no-op build of a recipe beside its full build.

Usage: python benchmarks/noop.py [RECIPE] [--runs N]

Builds RECIPE from an empty temporary cache (the full build), then times N
no-op builds through the fast path, N through the normal path
(TINYBUILD_NO_FASTPATH=1: loads every plugin and recomputes every key) and N
``tinybuild plan`` runs, each as a fresh process, as a user would run them.
Prints a table and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "mnist_cnn.toml"))
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    tinybuild = [sys.executable, "-m", "tinybuild"]
    script = Path(sys.executable).with_name("tinybuild")
    if script.exists():
        tinybuild = [str(script)]  # what users run: the console script
    work = Path(tempfile.mkdtemp(prefix="tinybuild-noop-"))
    try:
        recipe = Path(args.recipe).resolve()
        common = ["--cache-dir", str(work / "cache"), "--out", str(work / "out")]
        env = {k: v for k, v in os.environ.items() if k != "TINYBUILD_NO_FASTPATH"}
        slow_env = {**env, "TINYBUILD_NO_FASTPATH": "1"}
        # the lock file lives beside the recipe; keep the user's one intact
        lock = recipe.with_name(recipe.stem + ".lock.json")
        saved = lock.read_bytes() if lock.exists() else None
        try:
            full = timed([*tinybuild, "build", str(recipe), "--plain", *common], env)
            timed([*tinybuild, "build", str(recipe), "--plain", *common], env)  # warm the OS caches
            fast = [timed([*tinybuild, "build", str(recipe), "--plain", *common], env) for _ in range(args.runs)]
            slow = [timed([*tinybuild, "build", str(recipe), "--plain", *common], slow_env) for _ in range(args.runs)]
            plan = [timed([*tinybuild, "plan", str(recipe), *common], env) for _ in range(args.runs)]
        finally:
            if saved is not None:
                lock.write_bytes(saved)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"recipe: {recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe}   runs: {args.runs}   cores: {os.cpu_count()}")
    print(f"{'what':<34} {'median s':>9} {'min s':>7}")
    print(f"{'full build (empty cache)':<34} {full:>9.2f} {full:>7.2f}")
    for label, values in (("no-op build (fast path)", fast), ("no-op build (normal path)", slow), ("plan (all cached)", plan)):
        print(f"{label:<34} {statistics.median(values):>9.3f} {min(values):>7.3f}")
    print("target: no-op build <= 0.25 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
