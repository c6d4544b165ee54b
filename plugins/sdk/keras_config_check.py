"""Vet a Keras model config *before* anything in it is deserialized.

Why: tf_keras' "safe mode" only refuses marshalled Python lambdas. Its
deserializer imports any ``"module"`` a config names
(``importlib.import_module``) and fetches the named class or function from
it, so a config saying ``{"module": "os", "class_name": "function",
"config": "system"}`` runs the module's top-level code and hands
``os.system`` to the model. A model file from outside must never run code,
so every config (a ``.keras`` archive's ``config.json``, an ``.h5`` file's
``model_config``, a keras-model artifact's ``model.json``) passes this check
first. It reads plain JSON only: no TensorFlow, nothing imported.

What is allowed is what tf_keras itself writes (measured by saving the
built-in architectures, functional residual/BatchNorm/GAP models, recurrent
and normalization layers, compiled models, and tfmot-wrapped models):

* ``module``: one of :data:`KERAS_MODULES` (plus :data:`TFMOT_MODULES` in
  tinybuild's own artifacts, which hold pruning/QAT/clustering wrappers);
* ``class_name``: a plain identifier (no ``"Package>Name"``, which names a
  globally registered custom object) and never one of
  :data:`REFUSED_CLASSES` (``Lambda``, bare functions, lambdas, type specs);
* ``registered_name``: absent, null or the class name itself;
* no ``function`` / ``function_type`` entries (a Lambda's payload);
* no ``vocabulary`` naming a file (lookup layers would read any path).

Custom layers and functions are supported only through a builder
(``builder = "file.py:function"``), whose code is the user's own recipe.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

from tinybuild.api import StepError

#: Modules tf_keras writes into the configs of its own objects (layers,
#: initializers, regularizers, constraints; optimizers, losses and metrics
#: in a compiled model's ``compile_config``; the functional model class).
KERAS_MODULES = frozenset({
    "keras",
    "keras.layers",
    "keras.initializers",
    "keras.regularizers",
    "keras.constraints",
    "keras.optimizers",
    "keras.losses",
    "keras.metrics",
    "tf_keras.src.engine.functional",
    # what Keras 2.13-2.15 (TensorFlow's bundled keras) write for a functional
    # model; tf_keras maps a "keras..." module to "tf_keras...", the same class
    "keras.src.engine.functional",
})

#: Modules tfmot writes for its wrappers: allowed in tinybuild's own
#: keras-model artifacts (pruned, QAT, clustered models), not in model files.
TFMOT_MODULES = frozenset({
    "tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper",
    "tensorflow_model_optimization.python.core.quantization.keras.quantize_layer",
    "tensorflow_model_optimization.python.core.quantization.keras.quantize_aware_activation",
    "tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper",
    "tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper",
})

#: Class names whose deserialization resolves code or a type by name:
#: never written for the layers tinybuild supports.
REFUSED_CLASSES = frozenset({
    "Lambda",  # a Python function or marshalled bytecode
    "function",  # a bare function fetched from a module
    "__lambda__",  # marshalled bytecode
    "__typespec__",  # a class fetched from a module
    "TypeSpec",  # looked up in TensorFlow's type-spec registry while decoding
    "CompositeTensor",
})

#: Keys whose value names code to call (a Lambda layer's payload).
REFUSED_KEYS = ("function", "function_type")

#: The layers tf_keras writes for TensorFlow ops in a functional model
#: (``x * 2``, ``tf.math.sin(x)``, ``x[:, 0]``): their ``function`` names a
#: symbol of TensorFlow's public API, resolved by name when the model is
#: rebuilt, then run on every call. That API also holds ops with side effects
#: (``io.write_file``, ``py_function``, ``raw_ops.*``), so only pure tensor
#: math is allowed: the namespaces in :data:`OP_NAMESPACES` and the top-level
#: ops in :data:`OP_NAMES`.
OP_LAMBDA_CLASSES = frozenset({"TFOpLambda", "SlicingOpLambda"})
OP_LAMBDA_MODULES = frozenset({"tf_keras.src.layers.core.tf_op_layer", "keras.src.layers.core.tf_op_layer"})
OP_NAMESPACES = frozenset({"__operators__", "math", "nn", "linalg", "signal", "image", "bitwise"})
OP_NAMES = frozenset("""
    abs add add_n argmax argmin argsort boolean_mask broadcast_to cast clip_by_norm clip_by_value concat cos
    cumsum divide einsum equal exp expand_dims fill floor gather gather_nd greater greater_equal identity less
    less_equal linspace log matmul maximum minimum multiply negative norm not_equal one_hot ones ones_like pad
    pow range rank reduce_all reduce_any reduce_logsumexp reduce_max reduce_mean reduce_min reduce_prod
    reduce_sum repeat reshape reverse roll round rsqrt shape sigmoid sign sin size slice sort split sqrt square
    squeeze stack stop_gradient strided_slice subtract tanh tensordot tile transpose truediv unstack where zeros
    zeros_like
""".split())
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _pure_op(symbol: Any) -> bool:
    """Whether a TFOpLambda ``function`` names pure tensor math (see :data:`OP_NAMESPACES`)."""
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
        return False
    head, _, rest = symbol.partition(".")
    return head in OP_NAMESPACES if rest else symbol in OP_NAMES

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIX = ('Custom layers and functions are supported only in models made by a builder '
        '(builder = "file.py:function" in [model]), which records how to make them by calling your code again; '
        'a model file or config cannot name them')


def _layer_name(node: Mapping[str, Any]) -> str | None:
    inner = node.get("config")
    if "class_name" in node and isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
        return inner["name"]
    return None


def _walk(node: Any, layer: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """Every dict of the config with the name of the nearest enclosing layer."""
    stack = [(node, layer)]
    while stack:  # iterative: a deeply nested config cannot overflow the stack
        node, layer = stack.pop()
        if isinstance(node, Mapping):
            layer = _layer_name(node) or layer
            yield node, layer
            stack.extend((value, layer) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, layer) for value in node)


def check_config(config: Any, where: str, source: str, *, extra_modules: frozenset[str] = frozenset()) -> None:
    """Raise :class:`StepError` naming ``source``, the layer and the offending
    entry if deserializing ``config`` could import a module or fetch code that
    tf_keras does not write for its own objects.

    ``extra_modules`` widens the module allowlist for tinybuild's own
    artifacts (:data:`TFMOT_MODULES`)."""
    modules = KERAS_MODULES | extra_modules

    def refuse(layer: str, what: str) -> None:
        raise StepError(f"{where}: {source}: layer '{layer}' {what}; tinybuild refuses it before loading, "
                        f"because deserializing it would import or call code. {_FIX}")

    # modules first: the most precise message for a Lambda naming a function
    for node, layer in _walk(config, "?"):
        module = node.get("module")  # tf_keras imports it for a node with a class_name
        if node.get("class_name") in OP_LAMBDA_CLASSES and module in OP_LAMBDA_MODULES:
            continue  # tf_keras' own op layers; their function is checked below
        if "class_name" in node and module is not None and (not isinstance(module, str) or module not in modules):
            what = node.get("config") if node.get("class_name") == "function" else node.get("class_name")
            refuse(layer, f"names module {module!r} (for {what!r:.80}); model configs may only name the "
                          f"modules Keras writes for its own objects ({', '.join(sorted(KERAS_MODULES))})")
    vetted_ops: set[int] = set()  # op layers' config dicts whose "function" names pure tensor math
    for node, layer in _walk(config, "?"):
        op_config = node.get("config") if node.get("class_name") in OP_LAMBDA_CLASSES else None
        if isinstance(op_config, Mapping):
            if not _pure_op(op_config.get("function")) or "function_type" in op_config:
                refuse(layer, f"is a TensorFlow op layer calling {str(op_config.get('function'))[:80]!r}, which is "
                              f"not pure tensor math (allowed: tf.{{{', '.join(sorted(OP_NAMESPACES))}}}.* and common "
                              "ops such as reshape, concat, reduce_mean)")
            vetted_ops.add(id(op_config))
    for node, layer in _walk(config, "?"):
        for key in REFUSED_KEYS:
            if key in node and not (key == "function" and id(node) in vetted_ops):
                refuse(layer, f"has a '{key}' entry ({str(node[key])[:80]!r}), which names a Python function "
                              "to call")
        if isinstance(node.get("vocabulary"), str):  # StringLookup, IntegerLookup, TextVectorization
            refuse(layer, f"reads its vocabulary from the file {node['vocabulary'][:200]!r}, which a model file may "
                          "not name (give the vocabulary inline)")
        if "class_name" in node:
            name = node["class_name"]
            if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
                refuse(layer, f"names the class {name!r}, which is not a Keras class (a registered or custom "
                              "object)")
            if name in REFUSED_CLASSES:
                if name == "Lambda":
                    refuse(layer, "is a Lambda layer, which holds Python code (bytecode, or a function named by "
                                  "its module)")
                shown = f" ({node['config']!r:.80})" if isinstance(node.get("config"), str) else ""
                refuse(layer, f"holds a '{name}' object{shown}, which Keras resolves to code or a type by name")
            registered = node.get("registered_name")
            if registered is not None and registered != name:
                refuse(layer, f"names the registered object {registered!r} (class {name!r}), which is not a "
                              "Keras class")


__all__ = ["KERAS_MODULES", "REFUSED_CLASSES", "TFMOT_MODULES", "check_config"]
