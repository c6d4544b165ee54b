"""Shared Keras training loop for train, prune, qat and cluster.

All four steps compile a tf_keras model with the same loss (sparse
categorical cross-entropy, ``from_logits`` taken from the model artifact's
meta.json), fit it on the dataset artifact's train split with the val split
for validation, and report the same metrics and progress lines. Keeping
that in one place keeps their behaviour (and their determinism) identical.

Optional data augmentation (``augment``: random shifts, rotations and zooms
of the training images) also lives here, because it is part of how the
train split is fed to ``fit``; it is off by default and never touches the
val split.

TensorFlow is imported inside the functions only (through ``_tf``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field, model_validator

from tinybuild.api import Artifact, Kind, Params, StepContext, StepError, StepType

from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.dataset import Dataset, load_dataset
from tinybuild_plugins.sdk.keras_model import read_model_meta

Optimizer = Literal["adam", "sgd", "rmsprop"]
FillMode = Literal["nearest", "constant", "reflect", "wrap"]


class Augment(Params):
    """Random geometric augmentation of the training images, drawn per image
    and per epoch. All ranges are symmetric around "unchanged"."""

    shift: float = Field(
        0.0, ge=0, le=0.5,
        description="Largest random translation, as a fraction of the image's height and width (0.1 = up to ±10%).",
    )
    rotation: float = Field(0.0, ge=0, le=180, description="Largest random rotation, in degrees (±).")
    zoom: float = Field(
        0.0, ge=0, lt=1, description="Largest random scaling of the content, as a fraction (0.1 = ×0.9 to ×1.1)."
    )
    fill_mode: FillMode = Field(
        "nearest", description="How pixels uncovered by the transform are filled (as in tf_keras's RandomRotation)."
    )
    fill_value: float = Field(0.0, description="The value uncovered pixels get with fill_mode = \"constant\".")

    @model_validator(mode="after")
    def _does_something(self) -> "Augment":
        if not (self.shift or self.rotation or self.zoom):
            raise ValueError("augment changes nothing: set shift, rotation or zoom above 0 (or leave augment out)")
        if self.fill_value and self.fill_mode != "constant":
            raise ValueError(f'fill_value only applies to fill_mode = "constant", not "{self.fill_mode}"')
        return self


class TrainingParams(Params):
    """Fit settings shared by every step that trains (subclasses change defaults)."""

    epochs: int = Field(5, ge=1, le=10_000, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, le=1 << 16, description="Samples per gradient step.")
    optimizer: Optimizer = Field("adam", description="Optimizer: adam, sgd or rmsprop.")
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Optimizer learning rate.")
    augment: Augment | None = Field(
        None, description="Random shifts, rotations and zooms of the train split's images (off when unset)."
    )


def require_dataset(ctx: StepContext) -> Dataset:
    """The recipe's dataset (every training step declares ``uses_dataset``)."""
    if ctx.dataset is None:
        raise StepError(f"step '{ctx.step}' trains a model and needs the recipe's [dataset]")
    return load_dataset(ctx.dataset.path)


def model_outputs_logits(model_artifact: Artifact) -> bool:
    """Whether the model's last layer emits logits (the default for built-ins)."""
    return read_model_meta(model_artifact.path).get("output", "logits") != "probabilities"


def check_compatible(model: Any, input_shape: Sequence[int], num_classes: int, where: str) -> None:
    """Fail early, with both shapes named, when model and dataset disagree.

    A dataset feeds one array of samples and one of labels, so the model must
    have one input and one output; checking that first keeps the shape
    message below from comparing a list of input shapes with one shape."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise StepError(
            f"{where}: the model has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); "
            "tinybuild trains, converts and evaluates single-input, single-output models only "
            "(the dataset provides one array of samples and one of labels)"
        )
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


# --------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------
#
# Why not tf_keras's RandomTranslation/RandomRotation/RandomZoom layers in
# the map? They run under op determinism too, but draw from stateful random
# ops: what an image gets depends on every draw made before it in the
# process (and, in a parallel map, on which thread draws first). Here each
# batch's random parameters come from a *stateless* draw keyed on (seed,
# global batch index): a pure function of the recipe seed and the batch's
# position, whatever tf.data's threads do, yet different every epoch. And
# one composed affine transform per image resamples it once, not three
# times, with the op those layers use (ImageProjectiveTransformV3).


def affine_transforms(params: Augment, draws: Any, height: int, width: int) -> Any:
    """Projective transforms (``[n, 8]``, output pixel -> input pixel) for
    ``draws``: ``[n, 4]`` uniform numbers in [-1, 1] (rotation, zoom, shift
    x, shift y).

    The content is scaled by ``z`` and rotated by ``theta`` about the image
    centre ``c``, then moved by ``t``: ``out = z R(theta) (in - c) + c + t``,
    so each output pixel samples ``in = R(-theta) (out - c - t) / z + c``.
    """
    tf = _tf.tensorflow()
    theta = draws[:, 0] * (params.rotation * math.pi / 180.0)
    zoom = 1.0 + draws[:, 1] * params.zoom
    tx = draws[:, 2] * (params.shift * width)
    ty = draws[:, 3] * (params.shift * height)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a0, a1 = tf.cos(theta) / zoom, tf.sin(theta) / zoom
    b0, b1 = -a1, a0
    a2 = cx - (a0 * (cx + tx) + a1 * (cy + ty))
    b2 = cy - (b0 * (cx + tx) + b1 * (cy + ty))
    zeros = tf.zeros_like(theta)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(images: Any, params: Augment, seed: Any) -> Any:
    """Randomly transform a batch ``[n, height, width, channels]`` of float32
    images; ``seed`` (shape ``[2]``, int64) fully determines the result."""
    tf = _tf.tensorflow()
    draws = tf.random.stateless_uniform([tf.shape(images)[0], 4], seed=seed, minval=-1.0, maxval=1.0)
    height, width = images.shape[1], images.shape[2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=affine_transforms(params, draws, height, width),
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(params.fill_value, tf.float32),
        interpolation="BILINEAR",
        fill_mode=params.fill_mode.upper(),
    )


def augmented_train_split(data: Dataset, augment: Augment, batch_size: int, seed: int, where: str) -> Any:
    """An endless ``tf.data`` pipeline of shuffled, augmented train batches.

    Batches are formed before ``repeat`` so every epoch is exactly
    :func:`steps_per_epoch` batches of one full shuffle, as with plain
    arrays; the global batch index keys each batch's random draw.
    """
    shape = data.input_shape
    if len(shape) != 3:
        raise StepError(
            f"{where}: augment shifts, rotates and zooms images of shape [height, width, channels], "
            f"but the dataset's samples have shape {list(shape)}; remove augment for this data"
        )
    tf = _tf.tensorflow()
    x, y = data.x["train"], data.y["train"]
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .repeat()
        .enumerate()
    )

    def transform(index: Any, batch: Any) -> Any:
        images, labels = batch
        key = tf.stack([tf.constant(seed, tf.int64), index])
        return augment_batch(images, augment, key), labels

    return dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)


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
    determinism on the same inputs give the same weights. With ``augment``
    the train split comes from :func:`augmented_train_split`; the val split
    is always passed as it is.
    """
    has_val = len(data.y["val"]) > 0
    ctx.progress(0, params.epochs, f"{verb} epoch 0/{params.epochs}")
    if params.augment is None:
        train: dict[str, Any] = {"x": data.x["train"], "y": data.y["train"], "batch_size": params.batch_size,
                                 "shuffle": True}
    else:
        train = {"x": augmented_train_split(data, params.augment, params.batch_size, ctx.seed, f"step '{ctx.step}'"),
                 "steps_per_epoch": steps_per_epoch(data, params.batch_size),
                 "validation_batch_size": params.batch_size}
    history = model.fit(
        **train,
        epochs=params.epochs,
        validation_data=(data.x["val"], data.y["val"]) if has_val else None,
        verbose=0,
        callbacks=[*callbacks, _progress_callback(ctx, params.epochs, verb)],
    )
    metrics: dict[str, Any] = {"epochs_run": len(history.epoch), "batch_size": params.batch_size}
    kept = _epoch_of_final_weights(callbacks, len(history.epoch))
    if kept != len(history.epoch) - 1:
        metrics["best_epoch"] = kept + 1
    for key, values in sorted(history.history.items()):
        if len(values) > kept:
            metrics[key] = round(float(values[kept]), 6)
    summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in metrics.items() if k not in ("epochs_run", "batch_size"))
    metrics["history"] = epoch_history(history.history)
    ctx.log(f"{verb}: {metrics['epochs_run']} epoch(s), {summary}")
    return metrics


#: the per-epoch curves kept in a training step's metrics (what a report plots)
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def epoch_history(curves: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """``{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}``,
    one value per epoch run (rounded to 6 digits, like the other metrics;
    val curves only with a val split). Kept in the step's metrics so the
    report can plot learning curves without a file of its own."""
    return {key: [round(float(v), 6) for v in curves[key]] for key in HISTORY_KEYS if key in curves}


def load_input_model(ctx: StepContext, inputs: Sequence[Artifact]) -> tuple[Any, Dataset]:
    """Seed, load the input model and the dataset, and check they fit together.

    The Keras session is cleared first so auto-generated layer names (of
    wrappers tfmot adds) do not depend on what ran earlier in the process.
    """
    from tinybuild_plugins.sdk.keras_model import load_keras_model

    data = require_dataset(ctx)
    _tf.keras().backend.clear_session()
    _tf.seed_everything(ctx.seed)
    model = load_keras_model(inputs[0].path)
    check_compatible(model, data.input_shape, data.num_classes, f"step '{ctx.step}'")
    return model, data


def save_output_model(
    ctx: StepContext, model: Any, source: Artifact, optimization: str,
    *, fitted: dict[str, Any] | None = None, **meta: Any
) -> None:
    """Save ``model`` with meta.json recording what this step did on top of
    what its input had been through (``history``), and the input's output
    type (a wrapper can hide the final activation from inspection).

    ``fitted`` (the metrics :func:`fit` returned) adds this step's epochs and
    batch size to ``training``, the model's training lineage (train, then
    prune, then QAT...), and ``fitted["training"]`` gets the same list: a
    later step (a conversion, a report's ShrinkLog) can tell how many epochs
    of pruning went into a model without seeing the steps that made it."""
    from tinybuild_plugins.sdk.keras_model import read_model_meta, save_keras_model

    before = read_model_meta(source.path)
    history = [*before.get("history", []), optimization]
    training = list(before.get("training", []))
    if fitted is not None:
        training.append({"optimization": optimization, "epochs_run": fitted["epochs_run"],
                         "batch_size": fitted["batch_size"]})
        fitted["training"] = training
    save_keras_model(model, ctx.out_dir, meta={
        "optimization": optimization,
        "history": history,
        "output": before.get("output", "logits"),
        **({"training": training} if training else {}),
        **meta,
    })


def tfmot_step_type(name: str, version: str, run: Any, params: type, description: str) -> StepType:
    """The declaration the tfmot fine-tuning steps (prune, qat, cluster) share:
    one keras-model in, one out, fine-tuned on the dataset, a content-only key
    (renames rerun nothing), heavy for ``-j``; only what differs is a parameter."""
    return StepType(
        name=name,
        version=version,
        produces=Kind.KERAS_MODEL,
        run=run,
        consumes=(Kind.KERAS_MODEL,),
        params=params,
        arity=(1, 1),
        default_input=None,
        uses_dataset=True,
        toolchain=("tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy"),
        description=description,
        uses_names=False,
        fingerprint_modules=("tinybuild_plugins.sdk.tf", "tinybuild_plugins.sdk.keras_model",
                             "tinybuild_plugins.sdk.keras_builder", "tinybuild_plugins.keras.fit",
                             "tinybuild_plugins.keras.tfmot_layers", "tinybuild_plugins.sdk.dataset"),
        heavy=True,  # keeps its cores busy: -j runs no more of these than cores allow
    )

