"""Time the edit-rebuild loop: no-op builds, ``plan`` and a one-leaf change.

Usage: python benchmarks/rebuild.py [--steps 10,1000,5000] [--runs 5] [--example]

For each size, writes a toy recipe (the core tests' toy plugin without
lifecycle hooks, built-in plugins disabled: a dataset, a model, a training
step and N-3 leaf conversions, each with its own key), builds it once, then
times, as fresh processes and interleaved round by round (so machine load
hits every column alike):

* ``python -c pass`` in the same interpreter (the floor);
* a no-op build through the fast path, and through the normal path
  (``TINYBUILD_NO_FASTPATH=1``: loads the plugins and recomputes every key);
* ``tinybuild plan``;
* a one-leaf change: the last leaf's ``note`` changes (a fresh value every
  round, so exactly one step reruns). The step's own run time, read from the
  build's ``built in`` line, is reported beside it.

With ``--example`` the example recipe (recipes/mnist_cnn.toml, all built-in
plugins) is built once (this trains the model: minutes) and its no-op and
``plan`` are timed too. ``--pythonpath DIR`` puts DIR first on every
command's import path: time another checkout (e.g. ``git archive`` of the
commit before a change) with the same interpreter, for a before/after table.
Python writes bytecode caches as users' installs do (PYTHONDONTWRITEBYTECODE
is dropped: without them every run recompiles the sources, ~0.3 s).
Prints medians and exits 0.
"""

from __future__ import annotations

import argparse
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
TOY = ROOT / "tests" / "core"


def timed(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stderr


def toy_recipe(steps: int, note: str = "") -> str:
    lines = ['[recipe]\nname = "bench"\nseed = 1\n', '[dataset]\nuse = "toy-data"\nfile = "numbers.txt"\n',
             '[model]\nuse = "toy-model"\n', '[steps.train]\nuse = "toy-train"\nepochs = 1\n']
    leaves = max(steps - 3, 1)
    for i in range(leaves):
        # toy-train's free-text "note" gives each leaf its own key; only the last one changes per round
        text = note if i == leaves - 1 else ""
        lines.append(f'[steps.leaf{i}]\nuse = "toy-train"\ninput = "train"\nnote = "leaf {i} {text}"\n')
    return "\n".join(lines)


def built_seconds(stderr: str) -> float:
    found = re.findall(r"built in ([0-9.]+)s", stderr)
    return sum(float(s) for s in found)


def bench_toy(steps: int, runs: int, tinybuild: list[str], base_env: dict[str, str], work: Path,
              pythonpath: str = "") -> dict[str, list[float]]:
    folder = work / f"toy{steps}"
    folder.mkdir()
    (folder / "numbers.txt").write_text("1 2 3\n")
    recipe = folder / "recipe.toml"
    recipe.write_text(toy_recipe(steps))
    env = {**base_env, "TINYBUILD_PLUGINS": "toy=toy_quiet", "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, str(TOY)])),
           "TINYBUILD_DISABLE_PLUGINS": ",".join(builtin_plugins())}
    slow_env = {**env, "TINYBUILD_NO_FASTPATH": "1"}
    build = [*tinybuild, "build", str(recipe), "--plain"]
    timed(build, env, folder)  # the full build
    timed(build, env, folder)  # writes the stamp, warms the OS caches
    out: dict[str, list[float]] = {k: [] for k in ("python -c pass", "no-op fast", "no-op normal", "plan",
                                                     "one leaf changed", "  of which the step", "one leaf, --watch",
                                                     "  of which the step ")}
    watcher = Watcher(work / f"watch{steps}", steps, tinybuild, env)
    try:
        for r in range(runs):
            _round(r, steps, out, build, slow_env, env, recipe, folder, tinybuild, watcher)
    finally:
        watcher.stop()
    return out


def _round(r: int, steps: int, out: dict[str, list[float]], build: list[str], slow_env: dict[str, str],
           env: dict[str, str], recipe: Path, folder: Path, tinybuild: list[str], watcher: Watcher) -> None:
    """One interleaved round: every column once."""
    out["python -c pass"].append(timed([sys.executable, "-c", "pass"], env, folder)[0])
    out["no-op fast"].append(timed(build, env, folder)[0])
    out["no-op normal"].append(timed(build, slow_env, folder)[0])
    out["plan"].append(timed([*tinybuild, "plan", str(recipe)], env, folder)[0])
    recipe.write_text(toy_recipe(steps, note=f"round {r}"))
    seconds, err = timed(build, env, folder)
    if len(re.findall(r"built in", err)) != 1:
        sys.exit(f"expected exactly one step to rerun, got:\n{err[-2000:]}")
    out["one leaf changed"].append(seconds)
    out["  of which the step"].append(built_seconds(err))
    seconds, step = watcher.edit(f"round {r}")
    out["one leaf, --watch"].append(seconds)
    out["  of which the step "].append(step)


class Watcher:
    """A ``tinybuild build --watch`` kept running on its own copy of the
    recipe (its own cache and build folder: the fresh-process rounds must
    not wake it); each round edits its recipe and times until the watch is
    back to waiting, stamp and configuration entry written."""

    def __init__(self, folder: Path, steps: int, tinybuild: list[str], env: dict[str, str]):
        import queue
        import threading

        folder.mkdir()
        (folder / "numbers.txt").write_text("1 2 3\n")
        self.steps, self.recipe = steps, folder / "recipe.toml"
        self.recipe.write_text(toy_recipe(steps))
        timed([*tinybuild, "build", str(self.recipe), "--plain"], env, folder)  # the full build, not timed
        self.lines: "queue.Queue[tuple[float, str]]" = queue.Queue()
        self.proc = subprocess.Popen([*tinybuild, "build", str(self.recipe), "--plain", "--watch"], env=env, cwd=folder,
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_until_watching()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put((time.perf_counter(), line))

    def wait_until_watching(self) -> tuple[float, str]:
        seen = []
        while True:
            at, line = self.lines.get(timeout=120)
            seen.append(line)
            if line.startswith("watching "):
                return at, "".join(seen)

    def edit(self, note: str) -> tuple[float, float]:
        """(seconds from the edit to waiting again, of which the step)."""
        start = time.perf_counter()
        self.recipe.write_text(toy_recipe(self.steps, note=note))
        at, output = self.wait_until_watching()
        if len(re.findall(r"built in", output)) != 1 or "restarting" in output:
            sys.exit(f"--watch: expected exactly one step to rerun in the same process, got:\n{output[-2000:]}")
        return at - start, built_seconds(output)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def bench_example(runs: int, tinybuild: list[str], base_env: dict[str, str], work: Path) -> dict[str, list[float]]:
    recipe = ROOT / "recipes" / "mnist_cnn.toml"
    common = ["--cache-dir", str(work / "ex-cache"), "--out", str(work / "ex-out")]
    lock = recipe.with_name(recipe.stem + ".lock.json")
    saved = lock.read_bytes() if lock.exists() else None
    slow_env = {**base_env, "TINYBUILD_NO_FASTPATH": "1"}
    out: dict[str, list[float]] = {k: [] for k in ("python -c pass", "no-op fast", "no-op normal", "plan")}
    try:
        build = [*tinybuild, "build", str(recipe), "--plain", *common]
        timed(build, base_env)
        timed(build, base_env)
        for _ in range(runs):
            out["python -c pass"].append(timed([sys.executable, "-c", "pass"], base_env)[0])
            out["no-op fast"].append(timed(build, base_env)[0])
            out["no-op normal"].append(timed(build, slow_env)[0])
            out["plan"].append(timed([*tinybuild, "plan", str(recipe), *common], base_env)[0])
    finally:
        if saved is not None:
            lock.write_bytes(saved)
    return out


def builtin_plugins() -> list[str]:
    from importlib import metadata

    return sorted(ep.name for ep in metadata.entry_points(group="tinybuild") if ep.dist and ep.dist.name == "tinybuild")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,1000,5000", help="comma-separated toy recipe sizes")
    parser.add_argument("--runs", type=int, default=5, help="rounds per size (medians reported)")
    parser.add_argument("--example", action="store_true", help="also time the example recipe (builds it: minutes)")
    parser.add_argument("--pythonpath", default="", metavar="DIR", help="import tinybuild from DIR (another checkout)")
    args = parser.parse_args()

    script = Path(sys.executable).with_name("tinybuild")
    tinybuild = [str(script)] if script.exists() else [sys.executable, "-m", "tinybuild"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_") and k != "PYTHONDONTWRITEBYTECODE"}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    work = Path(tempfile.mkdtemp(prefix="tinybuild-rebuild-"))
    rows: list[tuple[str, dict[str, list[float]]]] = []
    try:
        for n in (int(s) for s in args.steps.split(",") if s):
            rows.append((f"toy {n} steps", bench_toy(n, args.runs, tinybuild, env, work, args.pythonpath)))
        if args.example:
            rows.append(("mnist_cnn.toml", bench_example(args.runs, tinybuild, env, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"runs: {args.runs} (interleaved; medians in seconds)   cores: {os.cpu_count()}   command: {' '.join(tinybuild)}"
          + (f"   tinybuild from: {args.pythonpath}" if args.pythonpath else ""))
    columns = ["python -c pass", "no-op fast", "no-op normal", "plan", "one leaf changed", "  of which the step",
               "one leaf, --watch", "  of which the step "]
    print(f"{'recipe':<16}" + "".join(f"{c.strip():>20}" for c in columns) + f"{'fast / python':>15}")
    for label, values in rows:
        cells = "".join(f"{statistics.median(values[c]):>20.3f}" if values.get(c) else f"{'-':>20}" for c in columns)
        ratio = statistics.median(f / p for f, p in zip(values["no-op fast"], values["python -c pass"]))
        print(f"{label:<16}{cells}{ratio:>15.2f}")
    print("goals: example plan and normal no-op <= 0.2 s; one leaf changed <= 0.3 s (1,000 steps) and <= 1 s "
          "(5,000 steps) plus the step's own time; fast no-op <= 2x python -c pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
