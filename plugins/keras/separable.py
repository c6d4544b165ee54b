"""The ``separable`` step type: operations optimization by depthwise-separable rewrite.

A k x k ``Conv2D`` from C_in to C_out channels costs k*k*C_in*C_out
multiply-accumulates per output pixel; a depthwise k x k convolution
followed by a pointwise 1 x 1 one costs k*k*C_in*m + C_in*m*C_out (m: the
depth multiplier). Every eligible ``Conv2D`` (or those named in ``layers``)
is replaced by that pair, initialized to approximate the original layer,
and the whole model is then fine-tuned.

Initialization (why it works, and how well): the separable pair computes
the kernel ``W'[i, j, c, o] = sum_k D[i, j, c, k] * P[c*m + k, o]``. For each
input channel c, the original kernel's slice ``W[:, :, c, :]`` is a
(k*k) x C_out matrix M_c, and the pair can represent exactly the matrices
of rank <= m. The truncated SVD of M_c (its m largest singular triplets,
``D = U_k * sqrt(s_k)``, ``P = sqrt(s_k) * V_k``) is the closest such matrix
in the Frobenius norm (Eckart-Young), so the rewrite is exact when every
M_c has rank <= m and otherwise loses exactly the discarded singular
values; the relative error per layer is reported as
``factorization_error``. The bias and the activation move to the
pointwise layer; stride, padding and dilation stay on the depthwise one.

Eligible: ``Conv2D`` itself (not a subclass), channels last, ``groups =
1``, a kernel larger than 1 x 1 (a 1 x 1 convolution is already
pointwise). Sequential models only: a functional graph would need rewiring
this step does not do.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field, field_validator

from tinybuild.api import Artifact, Kind, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.keras.fit import TrainingParams

VERSION = "1.0"


class SeparableParams(TrainingParams):
    epochs: int = Field(2, ge=1, le=10_000, description="Fine-tuning epochs after the rewrite.")
    depth_multiplier: int = Field(
        1, ge=1, le=64,
        description="Depthwise outputs per input channel (m): the rank kept per input channel; "
                    "higher = closer to the original, more MACs.",
    )
    layers: list[str] | None = Field(None, description="Names of the Conv2D layers to rewrite; default: every eligible one.")

    @field_validator("layers")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("layers must name at least one layer (or be left out to rewrite every eligible Conv2D)")
        return value


def eligible(layer: Any) -> bool:
    """A plain channels-last, ungrouped Conv2D with a kernel larger than 1x1."""
    return (
        type(layer).__name__ == "Conv2D"
        and getattr(layer, "groups", 1) == 1
        and layer.data_format == "channels_last"
        and tuple(layer.kernel_size) != (1, 1)
    )


def factorize(kernel: Any, multiplier: int) -> tuple[Any, Any, float]:
    """Depthwise kernel ``[kh, kw, C_in, m]``, pointwise kernel ``[1, 1, C_in*m, C_out]``
    and the relative Frobenius error of their product against ``kernel``."""
    import numpy as np

    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw, c_in, c_out = kernel.shape
    depthwise = np.zeros((kh, kw, c_in, multiplier))
    pointwise = np.zeros((1, 1, c_in * multiplier, c_out))
    lost = 0.0
    for c in range(c_in):
        u, s, vt = np.linalg.svd(kernel[:, :, c, :].reshape(kh * kw, c_out), full_matrices=False)
        rank = min(multiplier, s.size)
        root = np.sqrt(s[:rank])
        depthwise[:, :, c, :rank] = (u[:, :rank] * root).reshape(kh, kw, rank)
        pointwise[0, 0, c * multiplier:c * multiplier + rank, :] = root[:, None] * vt[:rank]
        lost += float(np.sum(s[rank:] ** 2))
    norm = float(np.sum(kernel ** 2))
    error = (lost / norm) ** 0.5 if norm else 0.0
    return depthwise.astype(np.float32), pointwise.astype(np.float32), error


def rewrite(model: Any, layers: Sequence[str] | None, multiplier: int, where: str) -> tuple[Any, dict[str, float]]:
    """A copy of ``model`` with the chosen Conv2D layers replaced by initialized
    depthwise + pointwise pairs (other layers are shared, weights included),
    and the factorization error per rewritten layer."""
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.keras.tfmot_layers import check_selection

    keras = _tf.keras()
    check_selection(model, layers, eligible, "the separable rewrite", where)
    chosen = [layer.name for layer in model.layers if eligible(layer) and (layers is None or layer.name in layers)]
    if not chosen:
        kinds = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in model.layers)
        raise StepError(f"{where}: the model has no Conv2D with a kernel larger than 1x1 to make separable; "
                        f"its layers are: {kinds}")
    if not isinstance(model, keras.Sequential):
        raise StepError(f"{where}: the separable rewrite supports Sequential models only; this one is "
                        f"{type(model).__name__}")
    taken = {layer.name for layer in model.layers}
    stack: list[Any] = [keras.layers.InputLayer(input_shape=tuple(model.input_shape[1:]))]
    pairs: dict[str, tuple[Any, Any]] = {}
    for layer in model.layers:
        if layer.name not in chosen:
            stack.append(layer)
            continue
        names = (f"{layer.name}_depthwise", f"{layer.name}_pointwise")
        clash = [n for n in names if n in taken]
        if clash:
            raise StepError(f"{where}: cannot name the new layers of '{layer.name}': {', '.join(clash)} already exists")
        depthwise = keras.layers.DepthwiseConv2D(
            layer.kernel_size, strides=layer.strides, padding=layer.padding, depth_multiplier=multiplier,
            dilation_rate=layer.dilation_rate, use_bias=False, name=names[0],
        )
        pointwise = keras.layers.Conv2D(layer.filters, 1, activation=layer.activation, use_bias=layer.use_bias,
                                        name=names[1])
        stack += [depthwise, pointwise]
        pairs[layer.name] = (depthwise, pointwise)
    rewritten = keras.Sequential(stack, name=model.name)
    errors = {}
    for name, (depthwise, pointwise) in pairs.items():
        original = model.get_layer(name)
        dw, pw, errors[name] = factorize(original.kernel.numpy(), multiplier)
        depthwise.set_weights([dw])
        pointwise.set_weights([pw, original.bias.numpy()] if original.use_bias else [pw])
    return rewritten, {k: round(v, 6) for k, v in errors.items()}


def accuracy(model: Any, x: Any, y: Any) -> float:
    import numpy as np

    return round(float((np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1) == y).mean()), 6)


def run(ctx: StepContext, inputs: Sequence[Artifact], params: SeparableParams) -> dict[str, Any]:
    from tinybuild_plugins.keras.fit import compile_model, fit, load_input_model, model_outputs_logits, save_output_model
    from tinybuild_plugins.report.macs import keras_macs

    where = f"step '{ctx.step}'"
    model, data = load_input_model(ctx, inputs)
    rewritten, errors = rewrite(model, params.layers, params.depth_multiplier, where)
    split = "val" if len(data.y["val"]) else "train"
    x, y = data.x[split], data.y[split]
    before = {"params_before": int(model.count_params()), "macs_before": keras_macs(model)["total"],
              f"{split}_accuracy_original": accuracy(model, x, y)}
    rewritten_accuracy = accuracy(rewritten, x, y)
    ctx.log(f"separable: {', '.join(errors)} rewritten (relative kernel error "
            f"{', '.join(f'{e:.3f}' for e in errors.values())}), {split} accuracy "
            f"{before[f'{split}_accuracy_original']:.4f} -> {rewritten_accuracy:.4f} before fine-tuning")
    compile_model(rewritten, params, model_outputs_logits(inputs[0]))
    metrics = fit(ctx, rewritten, data, params, verb="fine-tune")
    metrics.update(before)
    metrics.update({
        "params_after": int(rewritten.count_params()),
        "macs_after": keras_macs(rewritten)["total"],
        "rewritten_layers": list(errors),
        "factorization_error": errors,
        "depth_multiplier": params.depth_multiplier,
        f"{split}_accuracy_rewritten": rewritten_accuracy,
        f"{split}_accuracy_finetuned": accuracy(rewritten, x, y),
    })
    save_output_model(ctx, rewritten, inputs[0], "separable", rewritten_layers=list(errors))
    return metrics


SEPARABLE = StepType(
    name="separable",
    version=VERSION,
    produces=Kind.KERAS_MODEL,
    run=run,
    consumes=(Kind.KERAS_MODEL,),
    params=SeparableParams,
    arity=(1, 1),
    default_input=None,
    uses_dataset=True,
    toolchain=("tensorflow", "tf-keras", "numpy"),
    description="Rewrite Conv2D layers as depthwise + pointwise pairs (SVD-initialized), then fine-tune.",
    uses_names=False,  # output depends on content only: renames rerun nothing
    fingerprint_modules=("tinybuild_plugins.sdk.tf", "tinybuild_plugins.sdk.keras_model", "tinybuild_plugins.keras.fit",
                         "tinybuild_plugins.keras.tfmot_layers", "tinybuild_plugins.sdk.dataset",
                         "tinybuild_plugins.report.macs"),
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [SEPARABLE]
