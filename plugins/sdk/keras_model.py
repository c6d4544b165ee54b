"""The ``keras-model`` artifact layout: save and load tf_keras models.

Why not ``model.save("m.keras")`` or HDF5? Both embed wall-clock data (zip
entry timestamps and ``date_saved`` in ``.keras``; object timestamps in
HDF5), so saving the same model twice gives different bytes and the cache's
early cutoff would never fire. This layout is plain, inspectable and
byte-deterministic::

    model.json        architecture: model.to_json(), re-encoded with sorted keys
    weights.json      manifest: one entry per weight (name, shape, dtype, file)
    weights/00000.npy one .npy per weight, in model.get_weights() order
    meta.json         input/output shapes, parameter counts, output type
                      ("logits" or "probabilities"), which optimization made it
    builder.json      only for models with custom or Lambda layers made by a
    builder.py        builder: "call this builder" (see sdk.keras_builder)

Loading rebuilds the architecture from JSON (never pickle, never code: the
config is vetted first by :mod:`tinybuild_plugins.sdk.keras_config_check`,
which refuses ``Lambda`` layers and any module outside Keras and tfmot) under the tfmot
custom-object scopes it needs, so plain models, stripped pruned/clustered
models and quantization-aware (quantize-wrapped) models all round-trip. In
an artifact with ``builder.json`` the layers that need code come from
calling the stored builder again (:mod:`tinybuild_plugins.sdk.keras_builder`).

TensorFlow is imported inside the functions only (through ``_tf``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from tinybuild.api import StepError

from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

ARCHITECTURE_FILE = "model.json"
MANIFEST_FILE = "weights.json"
META_FILE = "meta.json"
WEIGHTS_DIR = "weights"

#: class names that need a tfmot custom-object scope to deserialize
_QUANTIZE_CLASSES = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer", "QuantizeAnnotate")
_PRUNE_CLASSES = ("PruneLowMagnitude",)
_CLUSTER_CLASSES = ("ClusterWeights", "ClusterWeightsMHA", "ClusterWeightsRNN")


def _dump_json(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, allow_nan=False) + "\n"


def _walk_configs(node: Any) -> Iterator[Mapping[str, Any]]:
    """Every dict in a serialized Keras config (layers, nested wrappers...)."""
    if isinstance(node, Mapping):
        yield node
        for value in node.values():
            yield from _walk_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_configs(value)


def _class_names(config: Any) -> set[str]:
    return {str(d["class_name"]) for d in _walk_configs(config) if "class_name" in d}


def output_kind(model: Any) -> str:
    """"probabilities" when the last layer ends in softmax/sigmoid, else "logits".

    Losses and evaluators need this (``from_logits``); the model step records it
    in meta.json so nobody has to guess again.
    """
    layer = model.layers[-1] if model.layers else None
    # Unwrap tfmot wrappers (QuantizeWrapper.layer, ...).
    while layer is not None and hasattr(layer, "layer") and not hasattr(layer, "activation"):
        layer = layer.layer
    config = layer.get_config() if layer is not None else {}
    activation = config.get("activation")
    if layer is not None and type(layer).__name__ in ("Softmax",):
        return "probabilities"
    if isinstance(activation, Mapping):  # serialized activation object
        activation = activation.get("config", {}).get("name") or activation.get("class_name")
    return "probabilities" if activation in ("softmax", "sigmoid") else "logits"


def _shape(value: Any) -> list[int | None]:
    if isinstance(value, list):  # multi-input/output: keep the first
        value = value[0]
    return [None if d is None else int(d) for d in tuple(value)]


def model_meta(model: Any) -> dict[str, Any]:
    """Facts downstream steps and reports want without loading TensorFlow."""
    trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    total = int(sum(int(np.prod(w.shape)) for w in model.weights))
    return {
        "input_shape": _shape(model.input_shape),
        "output_shape": _shape(model.output_shape),
        "params": {"total": total, "trainable": trainable, "non_trainable": total - trainable},
        "layers": len(model.layers),
        "output": output_kind(model),
    }


def save_keras_model(model: Any, out_dir: Path, *, meta: Mapping[str, Any] | None = None) -> None:
    """Write ``model`` into ``out_dir`` in the keras-model layout.

    ``meta`` adds (or overrides) keys of meta.json, e.g.
    ``{"optimization": "pruned", "from": "<input digest>"}``; keep it
    JSON-serializable and free of timestamps or absolute paths.
    """
    from tinybuild_plugins.sdk import keras_builder

    out_dir = Path(out_dir)
    (out_dir / WEIGHTS_DIR).mkdir(parents=True, exist_ok=True)

    call = keras_builder.builder_of(model)
    architecture = _architecture(model, builder=call is not None)
    if call is not None:  # custom/Lambda layers from a builder: "call this builder"
        keras_builder.write_builder(call, out_dir)
    (out_dir / ARCHITECTURE_FILE).write_text(_dump_json(architecture), encoding="utf-8")

    # Variables are read and written directly: some wrappers (tfmot's
    # PruneLowMagnitude) override get_weights() to hide their own variables.
    backend = _tf.keras().backend
    manifest = []
    for layer in model.layers:
        for variable, value in zip(layer.weights, backend.batch_get_value(layer.weights)):
            value = np.asarray(value)
            file = f"{WEIGHTS_DIR}/{len(manifest):05d}.npy"
            np.save(out_dir / file, value, allow_pickle=False)  # ascontiguousarray would turn 0-d into 1-d
            manifest.append({
                "layer": layer.name,
                "name": _weight_name(variable),
                "shape": list(value.shape),
                "dtype": str(value.dtype),
                "file": file,
            })
    (out_dir / MANIFEST_FILE).write_text(_dump_json(manifest), encoding="utf-8")

    full_meta = {"optimization": "none", **model_meta(model), **dict(meta or {})}
    (out_dir / META_FILE).write_text(_dump_json(full_meta), encoding="utf-8")


def _architecture(model: Any, *, builder: bool) -> Any:
    """The model's config, with builder layers as placeholders when ``builder``."""
    from tinybuild_plugins.sdk import keras_builder

    keras = _tf.keras()
    try:
        if builder:
            return keras_builder.architecture_with_placeholders(model)
        return json.loads(model.to_json())
    except NotImplementedError as exc:
        if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
            raise StepError(f"cannot save a subclassed {type(model).__name__} model's architecture: build a "
                            "functional or Sequential model (custom layer classes inside it are fine)") from None
        names = [f"{layer.name} ({type(layer).__name__})" for layer in keras_builder.code_layers(model)]
        raise StepError(
            f"cannot save the model's architecture: {exc}. Custom layers ({', '.join(names) or '?'}) are "
            "supported in models made by a builder (builder = \"file.py:function\" in [model])"
        ) from None


def _weight_name(variable: Any) -> str:
    """"kernel", "bias", "kernel_min"...: the variable's own name, without the
    scope prefix (which differs between a built and a deserialized model)."""
    return variable.name.split("/")[-1].split(":")[0]


def _without_build_configs(architecture: Any) -> Any:
    """Drop every nested layer's ``build_config``.

    Keras rebuilds a layer from ``build_config`` before wiring the model, and
    wiring builds it again when ``build()`` did not set ``built``; tfmot's
    ``QuantizeLayer`` is such a layer, so it would get a second set of min/max
    variables. Without build configs each layer is built once, when wired.
    """
    def strip(node: Any, top: bool) -> Any:
        if isinstance(node, dict):
            return {k: strip(v, False) for k, v in node.items() if top or k != "build_config"}
        if isinstance(node, list):
            return [strip(v, False) for v in node]
        return node

    return strip(architecture, True)


def read_model_meta(artifact_dir: Path) -> dict[str, Any]:
    """meta.json of a keras-model artifact (no TensorFlow needed)."""
    path = Path(artifact_dir) / META_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def custom_object_scopes(class_names: set[str]) -> list[Any]:
    """The tfmot scopes needed to deserialize these class names (tfmot is only
    imported when a wrapper class actually appears)."""
    scopes = []
    needs = lambda names: bool(class_names.intersection(names))  # noqa: E731
    if needs(_QUANTIZE_CLASSES) or needs(_PRUNE_CLASSES) or needs(_CLUSTER_CLASSES):
        mot = _tf.tfmot()
        if needs(_QUANTIZE_CLASSES):
            scopes.append(mot.quantization.keras.quantize_scope())
        if needs(_PRUNE_CLASSES):
            scopes.append(mot.sparsity.keras.prune_scope())
        if needs(_CLUSTER_CLASSES):
            scopes.append(mot.clustering.keras.cluster_scope())
    return scopes


def model_from_config_safely(architecture: Any, where: str, builder_layers: Mapping[str, Any] | None = None) -> Any:
    """Rebuild a model from its JSON config in safe mode, with tfmot scopes.

    ``builder_layers`` (name -> live layer) fills the config's builder-layer
    placeholders (see :mod:`tinybuild_plugins.sdk.keras_builder`)."""
    import contextlib

    from tinybuild_plugins.sdk import keras_builder, keras_config_check

    keras = _tf.keras()
    from tf_keras.src.saving import serialization_lib  # SafeModeScope is not public API

    # tf_keras imports any module a config names, safe mode or not: an artifact
    # from a remote cache (or an edited local one) must not be able to run code
    keras_config_check.check_config(architecture, where, ARCHITECTURE_FILE,
                                    extra_modules=keras_config_check.TFMOT_MODULES)
    if builder_layers is None and keras_builder.placeholder_names(architecture):
        raise StepError(f"{where}: the architecture names builder layers "
                        f"({', '.join(keras_builder.placeholder_names(architecture))}) but no builder was given")
    with contextlib.ExitStack() as stack:
        for scope in custom_object_scopes(_class_names(architecture)):
            stack.enter_context(scope)
        if builder_layers is not None:
            stack.enter_context(keras_builder.placeholder_scope(builder_layers, where))
        stack.enter_context(serialization_lib.SafeModeScope(True))
        try:
            return keras.models.model_from_json(json.dumps(_without_build_configs(architecture)))
        except StepError:
            raise
        except Exception as exc:  # Keras raises ValueError/TypeError/KeyError...
            unknown = _unknown_layers(architecture)
            if unknown:
                raise StepError(
                    f"{where}: cannot rebuild the model: layer(s) {', '.join(unknown)} are not tf_keras or tfmot "
                    "layers; custom layer classes load only from artifacts made by a builder "
                    "(builder = \"file.py:function\" in [model]), which records how to make them"
                ) from exc
            raise StepError(f"{where}: cannot rebuild the model from its architecture: {exc}") from exc


def _unknown_layers(architecture: Any) -> list[str]:
    """"'scale' (Scale)" for each layer config whose class tf_keras and tfmot
    do not define (for the error message only)."""
    from tinybuild_plugins.sdk.keras_builder import PLACEHOLDER

    keras = _tf.keras()
    known = {*dir(keras.layers), "Functional", "Sequential", "Model", PLACEHOLDER,
             *_QUANTIZE_CLASSES, *_PRUNE_CLASSES, *_CLUSTER_CLASSES}
    found = []
    for node in _walk_configs(architecture):
        inner = node.get("config")
        if "class_name" in node and isinstance(inner, Mapping) and "name" in inner and "trainable" in inner:
            if str(node["class_name"]) not in known:
                found.append(f"'{inner['name']}' ({node['class_name']})")
    return found


def load_keras_model(artifact_dir: Path) -> Any:
    """Rebuild the model saved by :func:`save_keras_model` (uncompiled)."""
    artifact_dir = Path(artifact_dir)
    where = f"keras-model artifact {artifact_dir}"
    try:
        architecture = json.loads((artifact_dir / ARCHITECTURE_FILE).read_text(encoding="utf-8"))
        manifest = json.loads((artifact_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StepError(f"{where} is incomplete: {exc.filename} is missing") from None
    from tinybuild_plugins.sdk import keras_builder

    call = keras_builder.read_builder(artifact_dir, where)
    live = (keras_builder.rebuild_layers(call, artifact_dir / keras_builder.BUILDER_SOURCE, where)
            if call is not None else None)
    model = model_from_config_safely(architecture, where, builder_layers=live)

    by_layer: dict[str, list[Mapping[str, Any]]] = {}
    for entry in manifest:
        by_layer.setdefault(entry["layer"], []).append(entry)
    assignments = []
    for layer in model.layers:
        entries = by_layer.pop(layer.name, [])
        if len(entries) != len(layer.weights):
            raise StepError(
                f"{where}: layer '{layer.name}' has {len(layer.weights)} weights but the manifest "
                f"lists {len(entries)}; the artifact is corrupt or was written by another version"
            )
        for entry, variable in zip(entries, layer.weights):
            value = np.load(artifact_dir / entry["file"], allow_pickle=False)
            if tuple(value.shape) != tuple(variable.shape):
                raise StepError(
                    f"{where}: weight {entry['layer']}/{entry['name']} has shape {list(value.shape)} "
                    f"but the architecture expects {list(variable.shape)}"
                )
            assignments.append((variable, value))
    if by_layer:
        raise StepError(f"{where}: the manifest has weights for unknown layers: {', '.join(sorted(by_layer))}")
    _tf.keras().backend.batch_set_value(assignments)
    return model


__all__ = [
    "load_keras_model",
    "model_from_config_safely",
    "model_meta",
    "output_kind",
    "read_model_meta",
    "save_keras_model",
]
