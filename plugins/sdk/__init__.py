"""tinybuild plugin SDK: what a plugin needs to read and write artifacts.

The built-in plugins share their artifact code through it, and a
third-party plugin needs nothing else from them: no name it needs starts with
an underscore. Importing this package is free (no NumPy, no
TensorFlow): every name below is loaded from its module on first use, and
the functions import heavy libraries only when called. The step API itself
(``StepType``, ``Params``, ``Artifact``, ``hookimpl``...) is in
:mod:`tinybuild.api`; the guide is ``docs/plugins.md``.

``SDK_VERSION`` follows semantic versioning: a name listed here keeps its
meaning within a major version; additions bump the minor version.

Every reader accepts an ``Artifact`` (what ``run`` receives in ``inputs``)
or its directory; every writer takes ``ctx.out_dir``.

=================  ==========================================================
module             names
=================  ==========================================================
``sdk.dataset``    ``load_dataset(a) -> Dataset`` (``.x``/``.y`` by split,
                   ``.meta``, ``.input_shape``, ``.num_classes``),
                   ``save_dataset(out, x, y, meta)``, ``load_meta(a)``,
                   ``SPLITS``
``sdk.keras_model`` ``load_keras_model(a)`` (safe mode, uncompiled),
                   ``save_keras_model(model, out, meta=...)``
                   (byte-deterministic), ``read_model_meta(a)`` (no TF),
                   ``model_meta(model)``
``sdk.keras_builder`` models made by a user builder (custom and Lambda
                   layers): ``BuilderCall``, ``register(model, call)``,
                   ``builder_of(model)``, ``builder_layers(model)``,
                   ``architecture_with_placeholders(model)`` -- for a
                   plugin that rewrites a model's config (see separable)
``sdk.graphdef``   ``load_graphdef(a) -> (GraphDef, signature)``,
                   ``load_graph(a) -> Graph``, ``save_graphdef(out, gd, sig)``,
                   ``load_signature(a)``; file names ``GRAPH_FILE``,
                   ``SIGNATURE_FILE``
``sdk.graph_edit`` for graph passes: ``Graph`` (GraphDef + protected
                   inputs/outputs), ``GraphEditor`` (reroute, remove, add
                   constants on a private copy), ``graph_pass`` (turns
                   ``rewrite(editor)`` into a pure ``apply``),
                   ``repeat_until_stable``, ``parse_ref``, ``tensor_ref``,
                   ``op_counts``
``sdk.tflite``     ``read_model_bytes(a)``, ``save_model_bytes(out, b)``,
                   ``interpreter(b)``, ``predict(b, x)``, ``describe(b)``,
                   ``quantize``, ``dequantize`` (LiteRT, batch 1);
                   ``MODEL_FILE``
``sdk.metrics``    ``read_metrics(a)``, ``write_metrics(out, dict)``;
                   ``METRICS_FILE``
``sdk.tf``         ``seed_everything(seed)`` (Python, NumPy, TF, op
                   determinism), ``tensorflow()``, ``keras()`` (tf_keras),
                   ``tfmot()`` -- import TensorFlow only through these, so
                   ``TF_USE_LEGACY_KERAS=1`` is set first
``sdk.tfgraph``    running GraphDefs in a TF1 session: ``run_graph``,
                   ``const_array``, ``const_attrs``, ``static_shapes``
=================  ==========================================================

Every name is also importable from the package itself:
``from tinybuild_plugins.sdk import load_dataset, save_keras_model``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: version of the SDK's public names (semantic versioning)
SDK_VERSION = "1.2.0"  # 1.1: sdk.keras_builder; 1.2: StepType.check_inputs (plan-time checks against the DAG)

_EXPORTS = {
    "dataset": ("Dataset", "SPLITS", "load_dataset", "load_meta", "save_dataset"),
    "keras_model": ("load_keras_model", "model_meta", "read_model_meta", "save_keras_model"),
    "keras_builder": ("BuilderCall", "architecture_with_placeholders", "builder_layers", "builder_of", "register"),
    "graphdef": ("GRAPH_FILE", "SIGNATURE_FILE", "load_graph", "load_graphdef", "load_signature", "save_graphdef"),
    "graph_edit": ("Graph", "GraphEditor", "graph_pass", "op_counts", "parse_ref", "repeat_until_stable", "tensor_ref"),
    "tflite": ("MODEL_FILE", "describe", "dequantize", "interpreter", "predict", "quantize", "read_model_bytes",
               "save_model_bytes"),
    "metrics": ("METRICS_FILE", "read_metrics", "write_metrics"),
    "tf": ("keras", "seed_everything", "tensorflow", "tfmot"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["SDK_VERSION", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    """Load an exported name from its module on first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tinybuild_plugins.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
