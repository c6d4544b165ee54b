"""Interleaved A/B of the one-leaf edit rebuild between two checkouts of tinybuild.

Usage: python benchmarks/edit_ab.py --steps 1000 --runs 15 BEFORE AFTER

BEFORE and AFTER are folders holding a ``tinybuild`` package (a checkout, or
``git archive <commit> tinybuild | tar -x -C DIR``); each is put first on the
import path of its own commands. Each gets its own toy recipe (as in
``rebuild.py``), cache, build folder and lock file, is built twice, and then
every round edits the last leaf's ``note`` in both and rebuilds BEFORE, then
AFTER, as fresh processes: machine load that drifts within minutes hits both
alike. Prints the medians of wall and CPU seconds and the median of the
per-round ratios AFTER/BEFORE, the figure to quote on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rebuild import TOY, builtin_plugins, toy_recipe

CLI = "import sys; from tinybuild.cli import main; sys.exit(main(sys.argv[1:]))"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="folder holding the BEFORE tinybuild package")
    parser.add_argument("after", help="folder holding the AFTER tinybuild package")
    parser.add_argument("--steps", type=int, default=1000, help="toy recipe size")
    parser.add_argument("--runs", type=int, default=15, help="rounds (medians reported)")
    args = parser.parse_args()

    base = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_") and k != "PYTHONDONTWRITEBYTECODE"}
    base.update(TINYBUILD_PLUGINS="toy=toy_quiet", TINYBUILD_DISABLE_PLUGINS=",".join(builtin_plugins()))
    work = Path(tempfile.mkdtemp(prefix="tinybuild-edit-ab-"))
    sides = []
    try:
        for label, code in (("before", args.before), ("after", args.after)):
            folder = work / label
            folder.mkdir()
            (folder / "numbers.txt").write_text("1 2 3\n")
            (folder / "recipe.toml").write_text(toy_recipe(args.steps))
            env = {**base, "PYTHONPATH": os.pathsep.join([str(Path(code).resolve()), str(TOY)])}
            command = [sys.executable, "-c", CLI, "build", "recipe.toml", "--plain"]
            for _ in range(2):  # the full build, then the one that writes the stamp
                subprocess.run(command, env=env, cwd=folder, capture_output=True, check=True)
            sides.append((folder, env, command))
        wall: list[list[float]] = [[], []]
        cpu: list[list[float]] = [[], []]
        for r in range(args.runs):
            for i, (folder, env, command) in enumerate(sides):
                (folder / "recipe.toml").write_text(toy_recipe(args.steps, note=f"round {r}"))
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                proc = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
                wall[i].append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[i].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                if proc.returncode or proc.stderr.count("built in") != 1:
                    sys.exit(f"expected exactly one step to rerun ({folder.name}):\n{proc.stderr[-2000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for label, values in (("wall", wall), ("cpu", cpu)):
        ratio = statistics.median(b / a for a, b in zip(*values))
        print(f"{label}: before {statistics.median(values[0]):.3f} s  after {statistics.median(values[1]):.3f} s  "
              f"after/before {ratio:.2f}   ({args.steps} steps, {args.runs} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
