"""The ``qat`` step type: quantization-aware training with tfmot.

The whole model (``quantize_model``) or only the layers named in ``layers``
(``quantize_annotate_layer`` + ``quantize_apply``) get fake-quantization ops
that simulate int8 inference, then the model is fine-tuned so its weights
adapt to them. The output stays quantize-wrapped: the ``tflite`` step
converts it into a real int8 model using the learned ranges, and
``load_keras_model`` reloads it under tfmot's quantize scope.

``preserve`` keeps what an earlier step gained (tfmot's collaborative
optimization): ``"sparsity"`` trains with
``Default8BitPrunePreserveQuantizeScheme`` (pruned zeros stay exactly zero),
``"clusters"`` with ``Default8BitClusterPreserveQuantizeScheme`` (each kernel
keeps its shared values), ``"both"`` with the cluster scheme and
``preserve_sparsity=True``. Plain QAT retrains the zeros and the shared
values away. The preserving quantizers act only while fine-tuning; the
saved model is a standard quantize-wrapped model holding the trained
weights and ranges (the cluster-preserving wrapper carries centroid
variables that tfmot cannot rebuild from a saved config), so it converts
and reloads like any QAT output.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import Field, field_validator

from tinybuild.api import Artifact, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.keras.fit import TrainingParams, tfmot_step_type

VERSION = "1.0"
Preserve = Literal["sparsity", "clusters", "both"]
#: a kernel counts as clustered when its non-zero weights share at most this
#: many values (and each value is shared by two weights on average)
CLUSTERED_MAX_VALUES = 256


class QatParams(TrainingParams):
    epochs: int = Field(1, ge=1, le=10_000, description="Fine-tuning epochs with fake quantization.")
    learning_rate: float = Field(1e-4, gt=0, le=10, description="Fine-tuning learning rate (small: the model is already trained).")
    layers: list[str] | None = Field(
        None, description="Names of the layers to quantize; default: the whole model."
    )
    preserve: Preserve | None = Field(
        None, description='Keep the input\'s structure through QAT: "sparsity" (pruned zeros), '
                          '"clusters" (shared values) or "both"; default: plain QAT.'
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


def preserve_scheme(preserve: str | None) -> Any:
    """tfmot's quantize scheme for ``preserve`` (None: the default 8-bit scheme)."""
    from tensorflow_model_optimization.python.core.api.experimental import combine
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_scheme

    if preserve is None:
        return default_8bit_quantize_scheme.Default8BitQuantizeScheme()
    if preserve == "sparsity":
        return combine.Default8BitPrunePreserveQuantizeScheme()
    return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=preserve == "both")


def quantize(model: Any, layers: Sequence[str] | None, where: str, scheme: Any = None) -> tuple[Any, list[str]]:
    """The quantize-wrapped model and the names of the layers it quantizes."""
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.keras.tfmot_layers import check_selection, clone_wrapping

    qkeras = _tf.tfmot().quantization.keras
    refuse_builder_layers(model, where)
    check_selection(model, layers, _quantizable, "quantization-aware training", where)
    try:
        if layers is None:
            annotated = qkeras.quantize_annotate_model(model)
        else:
            annotated = clone_wrapping(
                model, lambda layer: qkeras.quantize_annotate_layer(layer) if layer.name in layers else None
            )
        quantized = qkeras.quantize_apply(annotated, scheme or preserve_scheme(None))
    except (ValueError, RuntimeError) as exc:  # unsupported layer, subclassed model...
        raise StepError(f"{where}: tfmot cannot quantize this model: {exc}. Fix: quantize after training "
                        'instead (a tflite step with quantize = "int8" or "int8-only" on this step\'s input '
                        "converts these layers), or leave the layers tfmot cannot wrap out of `layers`") from exc
    wrapper = qkeras.QuantizeWrapperV2
    names = [layer.layer.name for layer in quantized.layers if isinstance(layer, wrapper)]
    return quantized, names


def refuse_builder_layers(model: Any, where: str) -> None:
    """QAT of a model with custom or Lambda layers is refused before tfmot
    sees it: ``quantize_apply`` copies *every* layer through
    ``get_config``/``from_config`` (even with ``layers`` set), which for a
    Lambda means unmarshalling its Python bytecode, and its 8-bit scheme
    has no quantization for a layer class it does not know."""
    from tinybuild_plugins.sdk import keras_builder

    found = keras_builder.code_layers(model)
    if found:
        names = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in found)
        raise StepError(
            f"{where}: quantization-aware training cannot handle the custom/Lambda layer(s) {names}: tfmot "
            "copies every layer of the model through its config, which a Lambda layer survives only by "
            "unmarshalling Python bytecode and a custom layer class only with get_config and a QuantizeConfig. "
            'Fix: quantize after training instead (a tflite step with quantize = "int8" on this step\'s input '
            "handles these layers), or build the model from built-in tf_keras layers"
        )


def kernel_structure(model: Any, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per layer (plain or quantize-wrapped, looked up by its own name): the
    kernel's share of exact zeros, its distinct values, and where it is zero."""
    import numpy as np

    # A wrapper tracks the inner layer's variables as its own (the inner layer lists none).
    outer = {getattr(layer, "layer", layer).name: layer for layer in model.layers}
    found = {}
    for name in names:
        kernels = [w for w in (outer[name].weights if name in outer else [])
                   if w.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel")]
        if kernels:
            values = np.asarray(kernels[0].numpy())
            nonzero = values[values != 0]
            found[name] = {"sparsity": round(float((values == 0).mean()), 6),
                           "unique": int(np.unique(values).size), "zeros": values == 0,
                           "clustered": 0 < np.unique(nonzero).size <= min(CLUSTERED_MAX_VALUES, nonzero.size / 2)}
    return found


def _check_structure(before: dict[str, dict[str, Any]], preserve: str, where: str) -> None:
    """Preserving what the input does not have is a wiring mistake: say so."""
    if preserve in ("sparsity", "both") and not any(s["sparsity"] > 0 for s in before.values()):
        raise StepError(f'{where}: preserve = "{preserve}" but no quantized kernel has zero weights; '
                        "wire this step to a prune step's output (or leave preserve out)")
    if preserve in ("clusters", "both") and not any(s["clustered"] for s in before.values()):
        raise StepError(f'{where}: preserve = "{preserve}" but no quantized kernel is clustered (none shares '
                        f"at most {CLUSTERED_MAX_VALUES} values among its weights); wire this step to a cluster "
                        "step's output")


def copy_trained(trained: Any, plain: Any, where: str) -> Any:
    """Load ``trained``'s weights and learned ranges into ``plain``, a
    default-scheme quantize-wrapped copy of the same model (layer by layer, in
    order; the preserving wrappers' extra variables, centroids and indices,
    are left behind: their effect is already baked into the kernels)."""
    from tinybuild_plugins.sdk import tf as _tf

    backend = _tf.keras().backend

    def short(layer: Any, variable: Any) -> str:  # "kernel_min"; QuantizeLayer's "<layer name>_min" -> "_min"
        name = variable.name.split("/")[-1].split(":")[0]
        return name[len(layer.name):] if name.startswith(layer.name) else name

    assignments = []
    for source, target in zip(trained.layers, plain.layers, strict=True):
        values = {short(source, v): value for v, value in zip(source.weights, backend.batch_get_value(source.weights))}
        for variable in target.weights:
            if short(target, variable) not in values:
                raise StepError(f"{where}: tfmot's preserving scheme has no weight {source.name}/{short(target, variable)}")
            assignments.append((variable, values[short(target, variable)]))
    backend.batch_set_value(assignments)
    return plain


def run(ctx: StepContext, inputs: Sequence[Artifact], params: QatParams) -> dict[str, Any]:
    from tinybuild_plugins.keras.fit import compile_model, fit, load_input_model, model_outputs_logits, save_output_model

    where = f"step '{ctx.step}'"
    model, data = load_input_model(ctx, inputs)
    candidates = params.layers or [layer.name for layer in model.layers]
    before = kernel_structure(model, candidates)
    if params.preserve is not None:
        _check_structure(before, params.preserve, where)
    # The default-scheme copy is built first, so its layers get the names plain QAT gives them.
    plain = quantize(model, params.layers, where)[0] if params.preserve is not None else None
    quantized, names = quantize(model, params.layers, where, preserve_scheme(params.preserve))
    ctx.log(f"quantization-aware training of {', '.join(names) or 'no layer'}"
            + (f", preserving {params.preserve}" if params.preserve else ""))
    compile_model(quantized, params, model_outputs_logits(inputs[0]))
    metrics = fit(ctx, quantized, data, params, verb="qat")
    if params.preserve is not None:
        quantized = copy_trained(quantized, plain, where)
    after = kernel_structure(quantized, names)
    metrics.update(structure_metrics(before, after))
    metrics["quantized_layers"] = names
    metrics["preserve"] = params.preserve
    save_output_model(ctx, quantized, inputs[0], "qat", fitted=metrics, quantized_layers=names)
    return metrics


def structure_metrics(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sparsity and distinct values per kernel before and after QAT, and the
    share of the input's zeros that are still exactly zero."""
    layers = sorted(set(before) & set(after))
    zeros_before = sum(int(before[n]["zeros"].sum()) for n in layers)
    kept = sum(int((before[n]["zeros"] & after[n]["zeros"]).sum()) for n in layers)
    return {
        "kernels": {n: {"sparsity_before": before[n]["sparsity"], "sparsity_after": after[n]["sparsity"],
                        "unique_before": before[n]["unique"], "unique_after": after[n]["unique"]} for n in layers},
        "zeros_kept": round(kept / zeros_before, 6) if zeros_before else None,
    }


QAT = tfmot_step_type("qat", VERSION, run, QatParams,
                      "Quantization-aware training (tfmot) of the whole model or selected layers.")


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [QAT]
