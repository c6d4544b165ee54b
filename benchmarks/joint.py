"""Distillation, separable rewrite and structure-preserving QAT, measured.

    .venv/bin/python benchmarks/joint.py

On the first 3,000 MNIST digits of data/mnist (split 70/10/20, stratified:
2,100 train / 300 val / 600 test) with the built-in step types, run in
process through ``tinybuild.testing.run_step``:

1. **Distillation.** Teacher: the basic CNN (12 filters) trained 15 epochs
   with random shifts and rotations (``augment``).
   Student: the same CNN with 6 filters. Temperature and alpha are chosen
   on the val split (seed 0, grid below); then for 3 seeds the student is
   trained alone on the hard labels and distilled, same epochs, same initial
   weights; test accuracy mean +- standard deviation (and min..max).
2. **Separable.** The trained CNN's Conv2D rewritten as depthwise +
   pointwise; depth multiplier chosen on val after fine-tuning; MACs and
   parameters before/after, test accuracy of the original, of the rewrite
   before fine-tuning and after.
3. **Pruning + QAT.** The trained CNN pruned to 80% zeros, then plain QAT
   vs sparsity-preserving QAT (same epochs): share of the pruned zeros kept
   in the Keras weights and in the int8 .tflite, int8 test accuracy.

One image is 0.17 points of test accuracy here: differences under about a
point are noise. A benchmark, not a test: prints tables and exits 0.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "mnist"
DATASET = {
    "images": str(DATA / "t10k-images-idx3-ubyte.gz"),
    "labels": str(DATA / "t10k-labels-idx1-ubyte.gz"),
    "limit": 3000,
    "split": {"train": 0.7, "val": 0.1, "test": 0.2},
    "stratify": True,
}
FIT = {"batch_size": 32}
TEACHER_EPOCHS = 15
#: the teacher (and base of the separable and pruning runs) gets the example
#: recipe's augmentation: 2,100 images overfit without it, and a teacher no
#: better than the student has nothing to teach
TEACHER_AUGMENT = {"shift": 0.05, "rotation": 10}
STUDENT_EPOCHS = 12
SEEDS = (0, 1, 2)
GRID = [(t, a) for t in (2.0, 4.0, 8.0) for a in (0.5, 0.9)]
MULTIPLIERS = (1, 2, 3)


class Runner:
    """run_step with a fresh folder per call and the shared dataset."""

    def __init__(self, root: Path) -> None:
        from tinybuild.testing import run_step
        from tinybuild_plugins.data.datasets import IDX

        self.root, self.count, self.run_step = root, 0, run_step
        self.dataset = self.step(IDX, [], DATASET, dataset=None, name="dataset")

    def step(self, step_type: Any, inputs: list, params: dict, *, seed: int = 0, name: str = "step", dataset: Any = ...) -> Any:
        self.count += 1
        return self.run_step(step_type, inputs, params, dataset=self.dataset if dataset is ... else dataset,
                             out_dir=self.root / f"{self.count:03d}-{name}", step=name, seed=seed)

    def test_accuracy(self, artifact: Any, split: str = "test") -> dict[str, Any]:
        from tinybuild_plugins.report.evaluate import tinybuild_step_types

        return self.step(tinybuild_step_types()[0], [artifact], {"split": split, "latency_runs": 0}, name="eval").metrics


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def distillation(run: Runner, teacher: Any) -> None:
    from tinybuild_plugins.keras.distill import DISTILL
    from tinybuild_plugins.keras.models import KERAS
    from tinybuild_plugins.keras.train import TRAIN

    student_params = {"architecture": "basic-cnn", "options": {"filters": 6}}
    student0 = run.step(KERAS, [], student_params, seed=0, name="student")
    scores = {}
    for temperature, alpha in GRID:
        art = run.step(DISTILL, [teacher, student0], {"epochs": STUDENT_EPOCHS, "temperature": temperature,
                                                      "alpha": alpha, **FIT}, name="distill")
        scores[(temperature, alpha)] = art.metrics["student_val_accuracy"]
    temperature, alpha = max(scores, key=lambda k: (scores[k], -k[0], -k[1]))
    print("\nDistillation: temperature x alpha, student val accuracy (seed 0)")
    for (t, a), acc in scores.items():
        print(f"  T={t:<4} alpha={a:<4} {pct(acc)}{'  <- chosen' if (t, a) == (temperature, alpha) else ''}")

    alone, distilled = [], []
    for seed in SEEDS:
        student = run.step(KERAS, [], student_params, seed=seed, name="student")
        hard = run.step(TRAIN, [student], {"epochs": STUDENT_EPOCHS, **FIT}, seed=seed, name="alone")
        soft = run.step(DISTILL, [teacher, student], {"epochs": STUDENT_EPOCHS, "temperature": temperature,
                                                      "alpha": alpha, **FIT}, seed=seed, name="distill")
        alone.append(run.test_accuracy(hard)["accuracy"])
        distilled.append(run.test_accuracy(soft)["accuracy"])
    teacher_eval = run.test_accuracy(teacher)

    def line(name: str, values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return (f"| {name} | {pct(statistics.mean(values))} ± {100 * spread:.2f} | "
                f"{pct(min(values))}..{pct(max(values))} | {' '.join(pct(v) for v in values)} |")

    print(f"\nTest accuracy, {len(SEEDS)} seeds, {STUDENT_EPOCHS} epochs each (teacher: {pct(teacher_eval['accuracy'])}, "
          f"{teacher_eval['param_count']} params, {teacher_eval['macs']} MACs; student: "
          f"{soft.metrics['student_params']} params)")
    print("| student | mean ± std | min..max | per seed |\n|---|---|---|---|")
    print(line("trained alone (hard labels)", alone))
    print(line(f"distilled (T={temperature}, alpha={alpha})", distilled))
    gain = statistics.mean(distilled) - statistics.mean(alone)
    print(f"distillation {'helps' if gain > 0 else 'does not help'}: {100 * gain:+.2f} points on the mean")


def separable(run: Runner, trained: Any) -> None:
    from tinybuild_plugins.keras.separable import SEPARABLE

    arts = {m: run.step(SEPARABLE, [trained], {"epochs": 3, "depth_multiplier": m, **FIT}, name="separable")
            for m in MULTIPLIERS}
    chosen = max(arts, key=lambda m: (arts[m].metrics["val_accuracy_finetuned"], -m))
    print("\nSeparable rewrite of the trained basic CNN (3 fine-tuning epochs)")
    print("| depth multiplier | params | MACs | factorization error | val acc. rewritten | val acc. fine-tuned |")
    print("|---|---|---|---|---|---|")
    base = arts[chosen].metrics
    print(f"| original Conv2D | {base['params_before']} | {base['macs_before']} | - | "
          f"{pct(base['val_accuracy_original'])} | - |")
    for m, art in arts.items():
        x = art.metrics
        print(f"| {m}{' (chosen)' if m == chosen else ''} | {x['params_after']} | {x['macs_after']} | "
              f"{x['factorization_error']['conv2d']:.3f} | {pct(x['val_accuracy_rewritten'])} | "
              f"{pct(x['val_accuracy_finetuned'])} |")
    original = run.test_accuracy(trained)["accuracy"]
    finetuned = run.test_accuracy(arts[chosen])["accuracy"]
    print(f"test accuracy: original {pct(original)}, separable (m={chosen}, fine-tuned) {pct(finetuned)} "
          f"({100 * (finetuned - original):+.2f} points); MACs {base['macs_before']} -> "
          f"{arts[chosen].metrics['macs_after']} ({base['macs_before'] / arts[chosen].metrics['macs_after']:.2f}x fewer), "
          f"conv layer alone {26 * 26 * 9 * 12} -> {arts[chosen].metrics['macs_after'] - 13 * 13 * 12 * 10}")


def pruning_qat(run: Runner, trained: Any) -> None:
    from tinybuild_plugins.keras.prune import PRUNE
    from tinybuild_plugins.keras.qat import QAT
    from tinybuild_plugins.tflite.convert import tinybuild_step_types as tflite_types
    from tinybuild_plugins.tflite.litert import describe

    pruned = run.step(PRUNE, [trained], {"final_sparsity": 0.8, "epochs": 3, "end_epoch": 2, **FIT}, name="pruned")
    print(f"\nPruning (80%) then QAT, 1 epoch each way; pruned kernels: {pct(pruned.metrics['sparsity'])} zeros")
    print("| QAT | zeros kept (Keras) | int8 kernel sparsity | int8 test accuracy |\n|---|---|---|---|")
    for label, params in (("plain", {}), ('preserve = "sparsity"', {"preserve": "sparsity"})):
        qat = run.step(QAT, [pruned], {"epochs": 1, **FIT, **params}, name="qat")
        int8 = run.step(tflite_types()[0], [qat], {"quantize": "int8"}, name="int8")
        sparsity = describe((int8.path / "model.tflite").read_bytes())["sparsity"]
        print(f"| {label} | {pct(qat.metrics['zeros_kept'])} | {pct(sparsity)} | "
              f"{pct(run.test_accuracy(int8)['accuracy'])} |")


def main() -> int:
    from tinybuild_plugins.keras.models import KERAS
    from tinybuild_plugins.keras.train import TRAIN

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tb-joint-") as tmp:
        run = Runner(Path(tmp))
        model = run.step(KERAS, [], {"architecture": "basic-cnn"}, name="model")
        trained = run.step(TRAIN, [model], {"epochs": TEACHER_EPOCHS, "augment": TEACHER_AUGMENT, **FIT},
                           name="train")
        separable(run, trained)
        pruning_qat(run, trained)
        distillation(run, trained)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
