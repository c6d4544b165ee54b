"""The train step type: learning, determinism, progress, early stopping, errors."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins._dataset_io import load_dataset
from tinybuild_plugins._fit import model_outputs_logits
from tinybuild_plugins._keras_io import load_keras_model, read_model_meta
from tinybuild_plugins.datasets import NPZ
from tinybuild_plugins.models import KERAS
from tinybuild_plugins.train import TRAIN

FAST = {"epochs": 1, "batch_size": 32}


def train(model, dataset, tmp_path, name="train", params=None, progress=None, seed=0):
    return run_step(TRAIN, [model], {**FAST, **(params or {})}, dataset=dataset, out_dir=tmp_path / name,
                    progress=progress, seed=seed)


def accuracy(artifact, dataset, split="val") -> float:
    data = load_dataset(dataset.path)
    logits = load_keras_model(artifact.path).predict(data.x[split], verbose=0)
    return float((logits.argmax(axis=1) == data.y[split]).mean())


def test_training_learns_and_reports_metrics(trained_cnn, basic_cnn, mnist_dataset):
    metrics = trained_cnn.metrics
    assert metrics["epochs_run"] == 3
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(metrics)
    before, after = accuracy(basic_cnn, mnist_dataset), accuracy(trained_cnn, mnist_dataset)
    assert after > 0.5 > before + 0.2  # chance is 0.1 on 10 digits
    assert metrics["val_accuracy"] == pytest.approx(after, abs=1e-6)  # reported = measured
    meta = read_model_meta(trained_cnn.path)
    assert meta["optimization"] == "trained" and meta["history"] == ["trained"]


def test_same_recipe_gives_the_same_weights(basic_cnn, mnist_dataset, tmp_path):
    first = train(basic_cnn, mnist_dataset, tmp_path, "a")
    second = train(basic_cnn, mnist_dataset, tmp_path, "b")
    other_seed = train(basic_cnn, mnist_dataset, tmp_path, "c", seed=1)
    assert first.digest == second.digest
    assert first.digest != other_seed.digest  # the seed also drives shuffling


def test_progress_is_reported_per_epoch(basic_cnn, mnist_dataset, tmp_path):
    events = []
    train(basic_cnn, mnist_dataset, tmp_path, params={"epochs": 2}, progress=events)
    assert [(done, total) for done, total, _ in events] == [(0, 2), (1, 2), (2, 2)]
    assert events[-1][2].startswith("train epoch 2/2 loss ")
    assert "val_acc " in events[-1][2]


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_other_optimizers_train(basic_cnn, mnist_dataset, tmp_path, optimizer):
    art = train(basic_cnn, mnist_dataset, tmp_path, params={"optimizer": optimizer, "learning_rate": 0.05
                                                            if optimizer == "sgd" else 0.001})
    assert art.metrics["loss"] < 2.3  # below the loss of a uniform guess, ln(10)


def test_early_stopping_stops_and_restores_the_best_epoch(basic_cnn, mnist_dataset, tmp_path):
    # A learning rate this large makes val loss erratic: it stops improving quickly.
    art = train(basic_cnn, mnist_dataset, tmp_path, params={"epochs": 8, "patience": 1, "learning_rate": 0.5})
    metrics = art.metrics
    assert metrics["epochs_run"] < 8 and metrics["stopped_early"] is True
    assert metrics["best_epoch"] < metrics["epochs_run"]
    # the reported metrics describe the restored weights, not the last epoch's
    assert metrics["val_accuracy"] == pytest.approx(accuracy(art, mnist_dataset), abs=1e-6)


def test_early_stopping_on_val_metric_without_val_split_is_a_step_error(basic_cnn, tmp_path):
    x = np.random.default_rng(0).random((20, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 10)
    no_val = run_step(NPZ, params={"file": "d.npz", "split": {"train": 0.8, "val": 0.0, "test": 0.2}},
                      recipe_dir=tmp_path, out_dir=tmp_path / "ds")
    with pytest.raises(StepError, match="monitors val_loss but the dataset has no val split"):
        train(basic_cnn, no_val, tmp_path, params={"patience": 2})
    art = train(basic_cnn, no_val, tmp_path, name="ok", params={"patience": 2, "monitor": "loss"})
    assert "val_accuracy" not in art.metrics


def test_model_that_does_not_fit_the_dataset_is_a_step_error(tmp_path, basic_cnn):
    np.savez(tmp_path / "d.npz", x=np.zeros((30, 8, 8), np.uint8), y=np.arange(30) % 3)
    small = run_step(NPZ, params={"file": "d.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "ds")
    with pytest.raises(StepError, match=r"expects inputs of shape \[28, 28, 1\] but the dataset provides \[8, 8, 1\]"):
        train(basic_cnn, small, tmp_path)


def test_softmax_models_are_trained_with_a_probability_loss(mnist_dataset, tmp_path):
    (tmp_path / "m.py").write_text(
        "import tf_keras as k\n"
        "def build(input_shape, num_classes):\n"
        "    return k.Sequential([k.layers.InputLayer(input_shape=input_shape), k.layers.Flatten(),\n"
        "                         k.layers.Dense(num_classes, activation='softmax')])\n"
    )
    model = run_step(KERAS, [], {"builder": "m.py:build"}, dataset=mnist_dataset, recipe_dir=tmp_path,
                     out_dir=tmp_path / "m")
    assert model_outputs_logits(model) is False
    art = train(model, mnist_dataset, tmp_path, params={"epochs": 3, "learning_rate": 0.01})
    assert art.metrics["loss"] < 1.0
    assert read_model_meta(art.path)["output"] == "probabilities"  # carried over for evaluators


@pytest.mark.parametrize(
    "params, message",
    [
        ({"epochs": 0}, "greater than or equal to 1"),
        ({"optimizer": "adagrad"}, "adam"),
        ({"learning_rate": 0}, "greater than 0"),
        ({"monitor": "val_f1"}, "val_loss"),
        ({"epoch": 3}, "epoch"),
    ],
)
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        TRAIN.params.model_validate(params)


def test_step_type_declaration():
    assert TRAIN.default_input == "model" and TRAIN.uses_dataset
    assert TRAIN.consumes == ("keras-model",) and TRAIN.produces == "keras-model"
    assert "tinybuild_plugins._fit" in TRAIN.fingerprint_modules
