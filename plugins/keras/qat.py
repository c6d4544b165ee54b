"""The ``qat`` step type: quantization-aware training with tfmot.

The whole model (``quantize_model``) or only the layers named in ``layers``
(``quantize_annotate_layer`` + ``quantize_apply``) get fake-quantization ops
that simulate int8 inference, then the model is fine-tuned so its weights
adapt to them. The output stays quantize-wrapped: the ``tflite`` step
converts it into a real int8 model using the learned ranges, and
``load_keras_model`` reloads it under tfmot's quantize scope.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field, field_validator

from tinybuild.api import Artifact, Kind, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.keras.fit import TrainingParams

VERSION = "1.0"


class QatParams(TrainingParams):
    epochs: int = Field(1, ge=1, le=10_000, description="Fine-tuning epochs with fake quantization.")
    learning_rate: float = Field(1e-4, gt=0, le=10, description="Fine-tuning learning rate (small: the model is already trained).")
    layers: list[str] | None = Field(
        None, description="Names of the layers to quantize; default: the whole model."
    )

    @field_validator("layers")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("layers must name at least one layer (or be left out to quantize the whole model)")
        return value


def _quantizable(layer: Any) -> bool:
    """Whether tfmot's default 8-bit scheme knows how to quantize ``layer``."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry,
    )

    return registry.Default8BitQuantizeRegistry().supports(layer)


def quantize(model: Any, layers: Sequence[str] | None, where: str) -> tuple[Any, list[str]]:
    """The quantize-wrapped model and the names of the layers it quantizes."""
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.keras.tfmot_layers import check_selection, clone_wrapping

    qkeras = _tf.tfmot().quantization.keras
    check_selection(model, layers, _quantizable, "quantization-aware training", where)
    try:
        if layers is None:
            quantized = qkeras.quantize_model(model)
        else:
            annotated = clone_wrapping(
                model, lambda layer: qkeras.quantize_annotate_layer(layer) if layer.name in layers else None
            )
            quantized = qkeras.quantize_apply(annotated)
    except (ValueError, RuntimeError) as exc:  # unsupported layer, subclassed model...
        raise StepError(f"{where}: tfmot cannot quantize this model: {exc}") from exc
    wrapper = qkeras.QuantizeWrapperV2
    names = [layer.layer.name for layer in quantized.layers if isinstance(layer, wrapper)]
    return quantized, names


def run(ctx: StepContext, inputs: Sequence[Artifact], params: QatParams) -> dict[str, Any]:
    from tinybuild_plugins.keras.fit import compile_model, fit, load_input_model, model_outputs_logits, save_output_model

    where = f"step '{ctx.step}'"
    model, data = load_input_model(ctx, inputs)
    quantized, names = quantize(model, params.layers, where)
    ctx.log(f"quantization-aware training of {', '.join(names) or 'no layer'}")
    compile_model(quantized, params, model_outputs_logits(inputs[0]))
    metrics = fit(ctx, quantized, data, params, verb="qat")
    metrics["quantized_layers"] = names
    save_output_model(ctx, quantized, inputs[0], "qat", fitted=metrics, quantized_layers=names)
    return metrics


QAT = StepType(
    name="qat",
    version=VERSION,
    produces=Kind.KERAS_MODEL,
    run=run,
    consumes=(Kind.KERAS_MODEL,),
    params=QatParams,
    arity=(1, 1),
    default_input=None,
    uses_dataset=True,
    toolchain=("tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy"),
    description="Quantization-aware training (tfmot) of the whole model or selected layers.",
    uses_names=False,  # output depends on content only: renames rerun nothing
    fingerprint_modules=("tinybuild_plugins.sdk.tf", "tinybuild_plugins.sdk.keras_model", "tinybuild_plugins.keras.fit",
                         "tinybuild_plugins.keras.tfmot_layers", "tinybuild_plugins.sdk.dataset"),
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [QAT]
