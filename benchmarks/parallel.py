"""Parallel builds: -j2 against -j1, on the example recipe and on 1,000 empty steps.

Usage: python benchmarks/parallel.py [--recipe R] [--runs N] [--toy-steps N] [--skip-example]
                                    [--ray [--ray-address HOST:PORT]]

1. The example recipe (recipes/mnist_cnn.toml), full builds from empty
   caches, ``-j1`` and ``-j2`` interleaved (j1, j2, then j2, j1, ...) so a
   change in machine load hits both alike: median wall times, the median of
   the per-pair ratios, and whether every output digest is the same.
2. Scheduler overhead: a recipe of ``--toy-steps`` steps of the test suite's
   toy plugin (tests/core/toy_plugin.py: each writes one small file) built
   from empty caches with ``-j1`` and ``-j2``: milliseconds per step.

With ``--ray`` the second mode is ``--executor ray`` instead of ``-j2``
(a Ray instance started per build unless ``--ray-address`` names a running
cluster), e.g. for a sweep recipe on a local cluster against a serial build.
Every build is a fresh ``tinybuild`` process, as a user runs it. Prints a
table and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tinybuild() -> list[str]:
    script = Path(sys.executable).with_name("tinybuild")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tinybuild"]


def build(recipe: Path, work: Path, mode: list[str], env: dict[str, str]) -> tuple[float, dict[str, str]]:
    """One full build from an empty cache: (seconds, step -> output digest)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lock = work / "lock.json"
    cmd = [*tinybuild(), "build", str(recipe), "--plain", *mode, "--cache-dir", str(work / "cache"),
           "--out", str(work / "out"), "--lock", str(lock)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"build failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    steps = json.loads(lock.read_text())["steps"]
    return seconds, {name: entry["output"]["digest"] for name, entry in steps.items()}


def interleaved(recipe: Path, work: Path, runs: int, env: dict[str, str], other: list[str]) -> dict[str, object]:
    """-j1 against ``other`` (``-j2`` or ``--executor ray ...``), in alternating order."""
    modes = {1: ["-j1"], 2: other}
    times: dict[int, list[float]] = {1: [], 2: []}
    ratios, digests = [], []
    for i in range(runs):
        pair = {}
        for mode in ((1, 2) if i % 2 == 0 else (2, 1)):
            seconds, out = build(recipe, work / f"m{mode}", modes[mode], env)
            times[mode].append(seconds)
            pair[mode] = seconds
            digests.append(out)
        ratios.append(pair[2] / pair[1])
    return {"j1": statistics.median(times[1]), "j2": statistics.median(times[2]), "ratio": statistics.median(ratios),
            "ratios": ratios, "identical": all(d == digests[0] for d in digests), "steps": len(digests[0])}


def toy_recipe(folder: Path, steps: int) -> Path:
    (folder / "numbers.txt").write_text("1 2 3\n")
    lines = ['[recipe]\nname = "toy-many"\nseed = 0\n', '[dataset]\nuse = "toy-data"\nfile = "numbers.txt"\n',
             '[model]\nuse = "toy-model"\n']
    for i in range(steps - 2):  # dataset and model are two of them
        lines.append(f'[steps.s{i:04d}]\nuse = "toy-train"\nepochs = 1\nlearning_rate = {i + 1}\n')
    recipe = folder / "recipe.toml"
    recipe.write_text("\n".join(lines))
    return recipe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="pairs of example builds (default 3)")
    parser.add_argument("--toy-steps", type=int, default=1000)
    parser.add_argument("--toy-runs", type=int, default=3)
    parser.add_argument("--skip-example", action="store_true")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "mnist_cnn.toml"), help="the real recipe to time")
    parser.add_argument("--ray", action="store_true", help="compare -j1 with --executor ray instead of -j2")
    parser.add_argument("--ray-address", help="a running Ray cluster for --ray (default: one started per build)")
    args = parser.parse_args()
    other = ["--executor", "ray", *(["--ray-address", args.ray_address] if args.ray_address else [])] if args.ray else ["-j2"]
    label = "ray" if args.ray else "-j2"

    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
    env["TINYBUILD_NO_FASTPATH"] = "1"
    work = Path(tempfile.mkdtemp(prefix="tinybuild-parallel-"))
    rows = []
    try:
        if not args.skip_example:
            ex = interleaved(Path(args.recipe).resolve(), work / "example", args.runs, env, other)
            rows.append((f"{Path(args.recipe).name}, full build (s)", f"{ex['j1']:.1f}", f"{ex['j2']:.1f}",
                         f"{ex['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in ex['ratios'])})",
                         f"{'identical' if ex['identical'] else 'DIFFERENT'} ({ex['steps']} steps)"))
        builtins = ",".join(ep.name for ep in metadata.entry_points(group="tinybuild") if ep.dist and ep.dist.name == "tinybuild")
        toy_env = {**env, "TINYBUILD_PLUGINS": "toy=toy_plugin", "TINYBUILD_DISABLE_PLUGINS": builtins,
                   "PYTHONPATH": str(ROOT / "tests" / "core")}
        (work / "toy").mkdir()
        toy = interleaved(toy_recipe(work / "toy", args.toy_steps), work / "toy-builds", args.toy_runs, toy_env, other)
        n = toy["steps"]
        rows.append((f"{n} toy steps, full build (ms/step)", f"{toy['j1'] / n * 1000:.2f}", f"{toy['j2'] / n * 1000:.2f}",
                     f"{toy['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in toy['ratios'])})",
                     f"{'identical' if toy['identical'] else 'DIFFERENT'}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"parallel builds on {cores} cores (median of interleaved runs; ratio = {label} / -j1, per pair in brackets)")
    header = ("build", "-j1", label, "ratio", "outputs")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
