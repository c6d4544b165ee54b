"""Layer selection and wrapping shared by the prune, qat and cluster steps.

tfmot optimizes a model by wrapping some of its layers (PruneLowMagnitude,
ClusterWeights, QuantizeAnnotate). Wrapping through ``clone_model`` with a
``clone_function`` that returns the *original* layer object (or a wrapper
around it) keeps the trained weights, and lets each step choose per layer:
all supported layers by default, or those named in the recipe.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tinybuild.api import StepError

from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free


def layer_names(model: Any) -> list[str]:
    return [layer.name for layer in model.layers]


def check_selection(model: Any, selection: Sequence[str] | None, supported: Callable[[Any], bool],
                    what: str, where: str) -> None:
    """Unknown or unsupported layer names are user errors: list the valid ones."""
    if selection is None:
        return
    names = layer_names(model)
    unknown = [n for n in selection if n not in names]
    if unknown:
        raise StepError(
            f"{where}: no layer named {', '.join(repr(n) for n in unknown)}; the model's layers are: "
            f"{', '.join(names)}"
        )
    unsupported = [n for n in selection if not supported(model.get_layer(n))]
    if unsupported:
        valid = [layer.name for layer in model.layers if supported(layer)]
        raise StepError(
            f"{where}: {what} does not support layer(s) {', '.join(unsupported)}; layers it can "
            f"handle here: {', '.join(valid) or 'none'}"
        )


def clone_wrapping(model: Any, wrap: Callable[[Any], Any | None]) -> Any:
    """A copy of ``model`` where ``wrap(layer)`` replaces a layer when not None.

    Layers left alone are reused as they are (same weights), as tfmot's own
    whole-model helpers do.
    """
    keras = _tf.keras()
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise StepError("subclassed Keras models cannot be optimized by tfmot; build a Sequential or functional model")

    def clone_function(layer: Any) -> Any:
        wrapped = wrap(layer)
        return layer if wrapped is None else wrapped

    return keras.models.clone_model(model, clone_function=clone_function)


def weight_array(model: Any, layer_name: str, weight_name: str) -> np.ndarray:
    """A layer attribute weight (``kernel``, ``depthwise_kernel``...) as NumPy."""
    return np.asarray(getattr(model.get_layer(layer_name), weight_name).numpy())
