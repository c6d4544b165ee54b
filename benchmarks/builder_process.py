"""Benchmark: what running a ``builder`` model in a child process costs.

The keras step runs a user's ``builder = "file.py:func"`` in a child process
(so that ``os._exit`` or a crash is a failed step). This prints the wall time
of the model step for the same small builder (a 2-layer CNN on 28x28x1, 10
classes) built in this process (``models.prepare_session`` + ``from_builder``
+ ``finish``, what the step did before) and through the step (child process),
median of 3 runs each, and whether the artifacts are byte-identical.

Run: .venv/bin/python benchmarks/builder_process.py   (exits 0; prints a table)
"""

from __future__ import annotations

import os
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from tinybuild.testing import artifact_from_dir, run_step  # noqa: E402
from tinybuild_plugins.data.datasets import NPZ  # noqa: E402
from tinybuild_plugins.keras import models  # noqa: E402
from tinybuild_plugins.keras.models import KERAS  # noqa: E402

RUNS = 3
BUILDER = """
    import tf_keras as keras

    def build(input_shape, num_classes):
        return keras.Sequential([
            keras.layers.InputLayer(input_shape=input_shape),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes),
        ])
"""


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="tb-bench-builder-"))
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.random((50, 28, 28, 1), dtype=np.float32), y=np.arange(50) % 10)
    dataset = run_step(NPZ, params={"file": "d.npz"}, recipe_dir=root, out_dir=root / "ds")
    (root / "net.py").write_text(textwrap.dedent(BUILDER))
    where = "model 'model'"

    def in_process(out: Path):
        out.mkdir()
        models.prepare_session(0)
        model = models.from_builder(root / "net.py", "build", {}, [28, 28, 1], 10, where)
        metrics = models.finish(model, out, where, [28, 28, 1], 10, {"builder": "net.py:build", "options": {}})
        return artifact_from_dir("model", KERAS.produces, out, metrics)

    def child(out: Path):
        return run_step(KERAS, [], {"builder": "net.py:build"}, dataset=dataset, out_dir=out, recipe_dir=root)

    in_process(root / "warm")  # this process imports TensorFlow once, as a build does
    times: dict[str, list[float]] = {"in process": [], "child process": []}
    digests: dict[str, set[str]] = {"in process": set(), "child process": set()}
    for i in range(RUNS):
        for label, fn in (("in process", in_process), ("child process", child)):
            start = time.perf_counter()
            art = fn(root / f"{label.replace(' ', '-')}-{i}")
            times[label].append(time.perf_counter() - start)
            digests[label].add(art.digest)

    print(f"{'model step with a builder':<28} {'median s':>9} {'min s':>7} {'max s':>7}")
    for label, values in times.items():
        print(f"{label:<28} {statistics.median(values):>9.2f} {min(values):>7.2f} {max(values):>7.2f}")
    extra = statistics.median(times["child process"]) - statistics.median(times["in process"])
    print(f"{'cost of the child':<28} {extra:>9.2f}")
    same = digests["in process"] == digests["child process"] and len(digests["in process"]) == 1
    print(f"artifacts byte-identical across {RUNS} runs each: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
