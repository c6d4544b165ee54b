"""Training history, training lineage, per-class one-vs-rest accuracy and the ShrinkLog.

History and lineage come from real (tiny) training steps: the session
fixtures of conftest.py (300 MNIST digits, a few epochs).
"""

from __future__ import annotations

import json

import numpy as np

from tinybuild.testing import run_step

from tinybuild_plugins.report import classification, lineage, shrinklog

CURVES = {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_training_steps_store_per_epoch_history(trained_cnn, pruned_cnn):
    history = trained_cnn.metrics["history"]
    assert set(history) == CURVES and all(len(v) == 3 for v in history.values())
    assert history["val_accuracy"][-1] == trained_cnn.metrics["val_accuracy"]  # no early stopping: the last epoch
    assert set(pruned_cnn.metrics["history"]) == CURVES and len(pruned_cnn.metrics["history"]["loss"]) == 1
    assert pruned_cnn.metrics["training"] == [
        {"optimization": "trained", "epochs_run": 3, "batch_size": 32},
        {"optimization": "pruned", "epochs_run": 1, "batch_size": 32},
    ]


def test_evaluate_carries_history_lineage_and_class_names(trained_cnn, qat_cnn, mnist_dataset, tmp_path):
    from tinybuild_plugins.report import evaluate
    from tinybuild_plugins.tflite import convert

    [step] = evaluate.tinybuild_step_types()
    art = run_step(step, [trained_cnn], {"latency_runs": 0}, dataset=mnist_dataset, out_dir=tmp_path / "e1")
    metrics = json.loads((art.path / "metrics.json").read_text())
    assert metrics["class_names"] == [str(i) for i in range(10)]
    assert metrics["upstream"]["history"] == trained_cnn.metrics["history"]
    matrix = np.asarray(metrics["confusion_matrix"])
    expected = classification.one_vs_rest_accuracy(matrix)
    assert [c["accuracy"] for c in metrics["per_class"]] == expected
    assert metrics["dataset"]["input_shape"] == [28, 28, 1]

    [tflite] = convert.tinybuild_step_types()
    int8 = run_step(tflite, [qat_cnn], {"quantize": "int8"}, dataset=mnist_dataset, out_dir=tmp_path / "t")
    art = run_step(step, [int8], {"latency_runs": 0}, dataset=mnist_dataset, out_dir=tmp_path / "e2")
    metrics = json.loads((art.path / "metrics.json").read_text())
    assert [e["optimization"] for e in metrics["upstream"]["training"]] == ["trained", "qat"]


def test_one_vs_rest_accuracy_by_hand():
    matrix = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 4]])  # 15 samples
    # class 0: FP 2, FN 1 -> 12/15; class 1: FP 1, FN 2 -> 12/15; class 2: none wrong -> 15/15
    assert classification.one_vs_rest_accuracy(matrix) == [12 / 15, 12 / 15, 1.0]
    assert classification.one_vs_rest_accuracy(np.zeros((2, 2))) == [0.0, 0.0]


def test_carried_facts_refuse_malformed_values():
    good = {"history": {"loss": [1.0, 0.5]}, "training": [{"optimization": "trained", "epochs_run": 2, "batch_size": 8}]}
    assert lineage.carried_facts(good) == good
    assert lineage.carried_facts({"history": [0.5, 0.3], "training": "trained"}) == {}
    assert lineage.carried_facts({"history": {"loss": ["x"]}, "training": [{"epochs_run": 2}]}) == {}


def _metrics(variant, kind, accuracy, size, **extra):
    return {"variant": variant, "model_kind": kind, "accuracy": accuracy, "size_bytes": size, "split": "test", **extra}


def test_shrinklog_text():
    audio = {"sample_rate": 8000, "window_s": 1.0, "hop_s": 0.5, "window_samples": 8000, "side": 90,
             "clips": 49, "clip_seconds": {"min": 5.0, "max": 5.0, "mean": 5.0}}
    training = [{"optimization": "trained", "epochs_run": 25, "batch_size": 32},
                {"optimization": "pruned", "epochs_run": 4, "batch_size": 32},
                {"optimization": "qat", "epochs_run": 2, "batch_size": 32}]
    original = _metrics("train", "keras-model", 0.75, 65624, upstream={"training": training[:1]})
    final = _metrics("int8", "tflite", 0.7, 28912, upstream={"quantize": "int8", "training": training},
                     dataset={"input_shape": [90, 90, 1], "audio": audio})
    text = shrinklog.text("esc50", original, final)
    for line in ["Audio length:       5.000 s, 49 clips", "Sample rate:        8000 Hz",
                 "2-D side length:    90 (90 x 90, 100 zero-padded samples)", "Epochs:             25",
                 "Pruning epochs:     4", "QAT epochs:         2", "Batch size:         32",
                 "Original model:     train (Keras): accuracy 0.7500 on the test split, 65,624 B",
                 "Final model:        int8 (TFLite int8): accuracy 0.7000 on the test split, 28,912 B",
                 "Size ratio:         2.27x smaller"]:
        assert line + "\n" in text, line
    assert not any(ch.isdigit() for ch in text.splitlines()[1])  # no date, no time
    # a recipe without audio or pruning: the same lines, with "-"
    plain = shrinklog.text("mnist", _metrics("fp32", "tflite", 0.98, 1000), _metrics("int8", "tflite", 0.97, 250))
    assert "Sample rate:        -\n" in plain and "Pruning epochs:     -\n" in plain
    assert "Size ratio:         4.00x smaller\n" in plain
