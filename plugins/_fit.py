"""Shared Keras training loop for train, prune, qat and cluster.

All four steps compile a tf_keras model with the same loss (sparse
categorical cross-entropy, ``from_logits`` taken from the model artifact's
meta.json), fit it on the dataset artifact's train split with the val split
for validation, and report the same metrics and progress lines. Keeping
that in one place keeps their behaviour (and their determinism) identical.

TensorFlow is imported inside the functions only (through ``_tf``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from tinybuild.api import Artifact, Params, StepContext, StepError

from . import _tf
from ._dataset_io import Dataset, load_dataset
from ._keras_io import read_model_meta

Optimizer = Literal["adam", "sgd", "rmsprop"]


class TrainingParams(Params):
    """Fit settings shared by every step that trains (subclasses change defaults)."""

    epochs: int = Field(5, ge=1, le=10_000, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, le=1 << 16, description="Samples per gradient step.")
    optimizer: Optimizer = Field("adam", description="Optimizer: adam, sgd or rmsprop.")
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Optimizer learning rate.")


def require_dataset(ctx: StepContext) -> Dataset:
    """The recipe's dataset (every training step declares ``uses_dataset``)."""
    if ctx.dataset is None:
        raise StepError(f"step '{ctx.step}' trains a model and needs the recipe's [dataset]")
    return load_dataset(ctx.dataset.path)


def model_outputs_logits(model_artifact: Artifact) -> bool:
    """Whether the model's last layer emits logits (the default for built-ins)."""
    return read_model_meta(model_artifact.path).get("output", "logits") != "probabilities"


def check_compatible(model: Any, input_shape: Sequence[int], num_classes: int, where: str) -> None:
    """Fail early, with both shapes named, when model and dataset disagree."""
    model_in = tuple(model.input_shape[1:])
    if len(model_in) != len(input_shape) or any(
        m is not None and m != d for m, d in zip(model_in, input_shape)
    ):
        raise StepError(
            f"{where}: the model expects inputs of shape {list(model_in)} but the dataset "
            f"provides {list(input_shape)}"
        )
    units = model.output_shape[-1]
    if units is not None and units != num_classes:
        raise StepError(f"{where}: the model has {units} outputs but the dataset has {num_classes} classes")


def steps_per_epoch(data: Dataset, batch_size: int) -> int:
    return max(1, math.ceil(len(data.y["train"]) / batch_size))


def make_optimizer(name: str, learning_rate: float) -> Any:
    optimizers = _tf.keras().optimizers
    cls = {"adam": optimizers.Adam, "sgd": optimizers.SGD, "rmsprop": optimizers.RMSprop}[name]
    return cls(learning_rate=learning_rate)


def compile_model(model: Any, params: TrainingParams, from_logits: bool) -> None:
    keras = _tf.keras()
    model.compile(
        optimizer=make_optimizer(params.optimizer, params.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )


def _progress_callback(ctx: StepContext, epochs: int, verb: str) -> Any:
    """A Keras callback feeding ``ctx.progress`` once per epoch."""
    keras = _tf.keras()

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            logs = logs or {}
            parts = [f"{verb} epoch {epoch + 1}/{epochs}"]
            for key, label in (("loss", "loss"), ("accuracy", "acc"), ("val_loss", "val_loss"),
                               ("val_accuracy", "val_acc")):
                if key in logs:
                    parts.append(f"{label} {logs[key]:.4f}")
            ctx.progress(epoch + 1, epochs, " ".join(parts))

    return EpochProgress()


def _epoch_of_final_weights(callbacks: Sequence[Any], epochs_run: int) -> int:
    """Index of the epoch whose weights the model ends with: the best one when
    an EarlyStopping callback restores it, else the last. Metrics are
    reported for that epoch so they describe the weights actually saved."""
    for callback in callbacks:
        if getattr(callback, "restore_best_weights", False) and getattr(callback, "best_weights", None) is not None:
            return int(callback.best_epoch)
    return epochs_run - 1


def fit(
    ctx: StepContext,
    model: Any,
    data: Dataset,
    params: TrainingParams,
    *,
    callbacks: Sequence[Any] = (),
    verb: str = "train",
) -> dict[str, Any]:
    """Fit a compiled model; return the metrics of the kept epoch and epochs run.

    Shuffling goes through tf.data seeded by ``seed_everything``, so with op
    determinism on the same inputs give the same weights.
    """
    has_val = len(data.y["val"]) > 0
    ctx.progress(0, params.epochs, f"{verb} epoch 0/{params.epochs}")
    history = model.fit(
        data.x["train"],
        data.y["train"],
        batch_size=params.batch_size,
        epochs=params.epochs,
        validation_data=(data.x["val"], data.y["val"]) if has_val else None,
        shuffle=True,
        verbose=0,
        callbacks=[*callbacks, _progress_callback(ctx, params.epochs, verb)],
    )
    metrics: dict[str, Any] = {"epochs_run": len(history.epoch)}
    kept = _epoch_of_final_weights(callbacks, len(history.epoch))
    if kept != len(history.epoch) - 1:
        metrics["best_epoch"] = kept + 1
    for key, values in sorted(history.history.items()):
        if len(values) > kept:
            metrics[key] = round(float(values[kept]), 6)
    summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in metrics.items() if k != "epochs_run")
    ctx.log(f"{verb}: {metrics['epochs_run']} epoch(s), {summary}")
    return metrics


def load_input_model(ctx: StepContext, inputs: Sequence[Artifact]) -> tuple[Any, Dataset]:
    """Seed, load the input model and the dataset, and check they fit together.

    The Keras session is cleared first so auto-generated layer names (of
    wrappers tfmot adds) do not depend on what ran earlier in the process.
    """
    from ._keras_io import load_keras_model

    data = require_dataset(ctx)
    _tf.keras().backend.clear_session()
    _tf.seed_everything(ctx.seed)
    model = load_keras_model(inputs[0].path)
    check_compatible(model, data.input_shape, data.num_classes, f"step '{ctx.step}'")
    return model, data


def save_output_model(
    ctx: StepContext, model: Any, source: Artifact, optimization: str, **meta: Any
) -> None:
    """Save ``model`` with meta.json recording what this step did on top of
    what its input had been through (``history``), and the input's output
    type (a wrapper can hide the final activation from inspection)."""
    from ._keras_io import read_model_meta, save_keras_model

    before = read_model_meta(source.path)
    history = [*before.get("history", []), optimization]
    save_keras_model(model, ctx.out_dir, meta={
        "optimization": optimization,
        "history": history,
        "output": before.get("output", "logits"),
        **meta,
    })
