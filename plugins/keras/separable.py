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
pointwise), in a Sequential or functional model (rewritten through its
config, so branches and shared layers keep their wiring).
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


def _pair_configs(layer: Any, multiplier: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Serialized DepthwiseConv2D and 1x1 Conv2D layers replacing ``layer``."""
    from tinybuild_plugins.sdk import tf as _tf

    keras = _tf.keras()
    depthwise = keras.layers.DepthwiseConv2D(
        layer.kernel_size, strides=layer.strides, padding=layer.padding, depth_multiplier=multiplier,
        dilation_rate=layer.dilation_rate, use_bias=False, name=f"{layer.name}_depthwise",
    )
    pointwise = keras.layers.Conv2D(layer.filters, 1, activation=layer.activation, use_bias=layer.use_bias,
                                    name=f"{layer.name}_pointwise")
    return ({"class_name": "DepthwiseConv2D", "config": depthwise.get_config()},
            {"class_name": "Conv2D", "config": pointwise.get_config()})


def _rewire(config: dict[str, Any], pairs: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The model config with each replaced layer's entry split into its pair.

    Sequential configs are a plain list; functional ones also wire each layer
    by name (``inbound_nodes``, ``output_layers``): the depthwise layer takes
    the original's inbound nodes, the pointwise one reads the depthwise one,
    and every reference to the original now points at the pointwise layer.
    """
    functional = "input_layers" in config
    renamed = {name: pw["config"]["name"] for name, (_, pw) in pairs.items()}

    def retarget(node: Any) -> Any:
        if isinstance(node, list):
            if node and isinstance(node[0], str) and node[0] in renamed:
                return [renamed[node[0]], *node[1:]]
            return [retarget(item) for item in node]
        return node

    layers = []
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name not in pairs:
            layers.append({**entry, "inbound_nodes": retarget(entry["inbound_nodes"])} if functional else entry)
            continue
        dw, pw = pairs[name]
        if functional:
            nodes = entry["inbound_nodes"]
            dw = {**dw, "name": dw["config"]["name"], "inbound_nodes": retarget(nodes)}
            pw = {**pw, "name": pw["config"]["name"],
                  "inbound_nodes": [[[dw["name"], i, 0, {}]] for i in range(len(nodes))]}
        layers += [dw, pw]
    rewired = {**config, "layers": layers}
    if functional:
        rewired["output_layers"] = retarget(config["output_layers"])
    return rewired


def rewrite(model: Any, layers: Sequence[str] | None, multiplier: int, where: str) -> tuple[Any, dict[str, float]]:
    """A copy of ``model`` (Sequential or functional) with the chosen Conv2D
    layers replaced by initialized depthwise + pointwise pairs, every other
    layer's weights copied, and the factorization error per rewritten layer."""
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.keras.tfmot_layers import check_selection

    keras = _tf.keras()
    check_selection(model, layers, eligible, "the separable rewrite", where)
    chosen = [layer.name for layer in model.layers if eligible(layer) and (layers is None or layer.name in layers)]
    if not chosen:
        kinds = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in model.layers)
        raise StepError(f"{where}: the model has no Conv2D with a kernel larger than 1x1 to make separable; "
                        f"its layers are: {kinds}")
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise StepError(f"{where}: the separable rewrite needs a Sequential or functional model, "
                        f"not a subclassed {type(model).__name__}")
    taken = {layer.name for layer in model.layers}
    pairs = {name: _pair_configs(model.get_layer(name), multiplier) for name in chosen}
    for name, (dw, pw) in pairs.items():
        clash = [c["config"]["name"] for c in (dw, pw) if c["config"]["name"] in taken]
        if clash:
            raise StepError(f"{where}: cannot name the new layers of '{name}': {', '.join(clash)} already exists")
    from tinybuild_plugins.sdk import keras_builder
    from tinybuild_plugins.sdk.keras_model import model_from_config_safely

    # a builder's custom/Lambda layers stay placeholders, filled with the same live layers
    architecture = keras_builder.architecture_with_placeholders(model)
    rewritten = model_from_config_safely({**architecture, "config": _rewire(architecture["config"], pairs)}, where,
                                         builder_layers=keras_builder.builder_layers(model))
    assignments, errors = [], {}
    for layer in model.layers:
        if layer.name in pairs:
            dw, pw, errors[layer.name] = factorize(layer.kernel.numpy(), multiplier)
            assignments.append((rewritten.get_layer(f"{layer.name}_depthwise").depthwise_kernel, dw))
            pointwise = rewritten.get_layer(f"{layer.name}_pointwise")
            assignments.append((pointwise.kernel, pw))
            if layer.use_bias:
                assignments.append((pointwise.bias, layer.bias.numpy()))
        else:
            assignments += list(zip(rewritten.get_layer(layer.name).weights, layer.get_weights()))
    keras.backend.batch_set_value(assignments)
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
                         "tinybuild_plugins.report.macs", "tinybuild_plugins.sdk.keras_builder"),
    heavy=True,  # keeps its cores busy: -j runs no more of these than cores allow
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [SEPARABLE]
