"""The ``train`` step type: fit a keras-model on the recipe's dataset.

Sparse categorical cross-entropy (``from_logits`` from the model's
meta.json unless set), validation on the val split, optional early stopping,
live progress per epoch. Seeded with op determinism: the same recipe gives
byte-identical weights.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import Field

from tinybuild.api import Artifact, Kind, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.keras.fit import TrainingParams

VERSION = "1.0"
Monitor = Literal["val_loss", "val_accuracy", "loss", "accuracy"]


class TrainParams(TrainingParams):
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without improvement of `monitor` (off when unset)."
    )
    monitor: Monitor = Field("val_loss", description="Metric watched by early stopping.")
    restore_best_weights: bool = Field(
        True, description="With early stopping, keep the weights of the best epoch rather than the last."
    )
    from_logits: bool | None = Field(
        None, description="Whether the model outputs logits; unset = read from the model artifact."
    )


def early_stopping_callbacks(params: TrainParams, has_val: bool, where: str) -> list[Any]:
    if params.patience is None:
        return []
    if params.monitor.startswith("val_") and not has_val:
        raise StepError(
            f"{where}: early stopping monitors {params.monitor} but the dataset has no val split; "
            'give the split a val fraction or set monitor = "loss"'
        )
    from tinybuild_plugins.sdk import tf as _tf

    mode = "max" if params.monitor.endswith("accuracy") else "min"
    return [_tf.keras().callbacks.EarlyStopping(
        monitor=params.monitor, patience=params.patience, mode=mode,
        restore_best_weights=params.restore_best_weights,
    )]


def run(ctx: StepContext, inputs: Sequence[Artifact], params: TrainParams) -> dict[str, Any]:
    from tinybuild_plugins.keras.fit import compile_model, fit, load_input_model, model_outputs_logits, save_output_model

    model, data = load_input_model(ctx, inputs)
    from_logits = params.from_logits if params.from_logits is not None else model_outputs_logits(inputs[0])
    compile_model(model, params, from_logits)
    callbacks = early_stopping_callbacks(params, len(data.y["val"]) > 0, f"step '{ctx.step}'")
    metrics = fit(ctx, model, data, params, callbacks=callbacks, verb="train")
    if callbacks and callbacks[0].stopped_epoch:
        metrics["stopped_early"] = True
    save_output_model(ctx, model, inputs[0], "trained", fitted=metrics, epochs_run=metrics["epochs_run"])
    return metrics


TRAIN = StepType(
    name="train",
    version=VERSION,
    produces=Kind.KERAS_MODEL,
    run=run,
    consumes=(Kind.KERAS_MODEL,),
    params=TrainParams,
    arity=(1, 1),
    default_input="model",
    uses_dataset=True,
    toolchain=("tensorflow", "tf-keras", "numpy"),
    description="Train a Keras model on the dataset's train split (seeded, deterministic).",
    uses_names=False,  # output depends on content only: renames rerun nothing
    fingerprint_modules=("tinybuild_plugins.sdk.tf", "tinybuild_plugins.sdk.keras_model", "tinybuild_plugins.sdk.keras_builder",
                         "tinybuild_plugins.keras.fit",
                         "tinybuild_plugins.sdk.dataset"),
    heavy=True,  # keeps its cores busy: -j runs no more of these than cores allow
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [TRAIN]
