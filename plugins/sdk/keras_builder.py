"""Models whose architecture is "call this builder": custom and Lambda layers.

A keras-model artifact normally stores its architecture as a Keras config
(``model.json``) and later steps rebuild it in safe mode. That cannot work
for a ``Lambda`` layer (its config is marshalled Python bytecode, which safe
mode rightly refuses) nor for a custom layer class (its class lives in the
user's code, which a config cannot name safely). But a model made by a
``builder = "file.py:func"`` comes from the user's own code, which is
already in the recipe and in the step's key: the layers that need code can
be recreated by *calling the builder again*, never by deserializing code.

So an artifact made from such a model stores, next to the usual files::

    builder.json  the call: source file name, its sha256, the function, and
                  its arguments (input shape, class count, options)
    builder.py    the builder's source, verbatim (a later step never depends
                  on the user's file still being there, unchanged)

and ``model.json`` holds the usual config in which every layer that needs
code is a placeholder ``{"class_name": "TinybuildBuilderLayer", "config":
{"name": ...}}``. Loading executes ``builder.py`` (compiled from the stored
bytes after checking their digest: no ``.pyc`` is written), calls the
function with the stored arguments under fresh Keras layer names, takes the
builder model's code layers by name to fill the placeholders, rebuilds the
rest of the config in safe mode and loads the weights. Built-in layers,
tfmot wrappers (pruning, QAT, clustering) and rewritten configs (separable)
keep working as before, around the builder's own layers.

Which layers need code: a ``Lambda`` and any layer whose class is not
defined by tf_keras or tfmot. Such a layer is "registered" with the
builder call that made it (a weak map, so nothing leaks); a model whose
code layers are all registered to one builder is saved in this layout,
any other model in the plain config layout, exactly as before.

Trust: loading such an artifact *executes its builder.py*. A local cache
only holds what this machine's builds wrote (the builder already ran, in a
child process, when the model step made it); a remote cache is covered by
its trust model (signed entries): the README says so.

Rebuilds run in the step's own process (the first call of a builder, in the
model step, runs in a child; see ``tinybuild_plugins.keras.builder_process``).
The model must be a live object in the step that uses it, and no model can
cross a process boundary without serializing the code we refuse to
deserialize. The builder already returned a model from these exact bytes
once, so a crash on rebuild means code that behaves differently from run
to run; ``sys.exit`` in it is still a failed step, ``os._exit`` or a native
crash ends the build (the console shows which step was running).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tinybuild.api import StepError

from tinybuild_plugins.sdk import tf as _tf

BUILDER_FILE = "builder.json"
BUILDER_SOURCE = "builder.py"
#: class name of a placeholder in model.json: "the builder's layer of this name"
PLACEHOLDER = "TinybuildBuilderLayer"
#: classes from these packages are rebuilt from their config (safe mode)
_SAFE_MODULES = ("tf_keras.", "keras.", "tensorflow_model_optimization.", "tensorflow.")
_MARK = "__tinybuild_builder_layer__"


@dataclass(frozen=True)
class BuilderCall:
    """One call of a user builder: the source that ran and its arguments."""

    file: str  # the builder file's name (no folder: a moved recipe keeps its bytes)
    function: str
    source: bytes
    input_shape: tuple[int, ...]
    num_classes: int
    options_json: str  # canonical JSON of the options (hashable, comparable)

    @classmethod
    def make(cls, file: str, function: str, source: bytes, input_shape: Sequence[int], num_classes: int,
             options: Mapping[str, Any]) -> "BuilderCall":
        return cls(file, function, bytes(source), tuple(int(d) for d in input_shape), int(num_classes),
                   json.dumps(dict(options), sort_keys=True, allow_nan=False))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source).hexdigest()

    @property
    def options(self) -> dict[str, Any]:
        return json.loads(self.options_json)

    def record(self) -> dict[str, Any]:
        """builder.json's content."""
        return {"file": self.file, "function": self.function, "sha256": self.sha256,
                "input_shape": list(self.input_shape), "num_classes": self.num_classes, "options": self.options}

    def label(self) -> str:
        return f"{self.file}:{self.function}"


#: code layer -> the builder call that made it (weak: models die normally)
_REGISTRY: "weakref.WeakKeyDictionary[Any, BuilderCall]" = weakref.WeakKeyDictionary()


def needs_code(layer: Any) -> bool:
    """A Lambda, or a layer whose class comes from the user's code."""
    keras = _tf.keras()
    if isinstance(layer, keras.layers.Lambda):
        return True
    module = type(layer).__module__ or ""
    return not module.startswith(_SAFE_MODULES)


def all_layers(model: Any) -> list[Any]:
    """Every layer in ``model``, nested ones (wrapped by tfmot, inside
    sub-models) included, in a stable order."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def code_layers(model: Any) -> list[Any]:
    return [layer for layer in all_layers(model) if needs_code(layer)]


def register(model: Any, call: BuilderCall) -> None:
    """Record that ``model``'s code layers were made by ``call``."""
    for layer in code_layers(model):
        _REGISTRY[layer] = call


def builder_of(model: Any) -> BuilderCall | None:
    """The one builder call behind every code layer of ``model``; None when
    the model has no code layer or one of them is not registered."""
    layers = code_layers(model)
    calls = {_REGISTRY.get(layer) for layer in layers}
    if not layers or None in calls:
        return None
    if len(calls) > 1:
        labels = ", ".join(sorted(c.label() for c in calls))
        raise StepError(f"the model mixes custom layers from several builders ({labels}); a keras-model "
                        "artifact records one builder")
    return calls.pop()


def builder_layers(model: Any) -> dict[str, Any]:
    """``model``'s registered code layers by name: what fills placeholders."""
    return {layer.name: layer for layer in code_layers(model) if layer in _REGISTRY}


def architecture_with_placeholders(model: Any) -> Any:
    """``model``'s config (as ``model.to_json()``) with each registered code
    layer replaced by a placeholder naming it: no bytecode, no user class,
    and the code layers' own ``get_config`` is never called (custom layers
    often do not define one)."""
    marked = [layer for layer in code_layers(model) if layer in _REGISTRY]
    for layer in marked:
        # an instance attribute shadows the class's get_config during to_json only
        object.__setattr__(layer, "get_config", lambda name=layer.name: {"name": name, _MARK: True})
    try:
        config = json.loads(model.to_json())
    finally:
        for layer in marked:
            object.__delattr__(layer, "get_config")
    return _replace_marked(config)


def _replace_marked(node: Any) -> Any:
    if isinstance(node, list):
        return [_replace_marked(v) for v in node]
    if not isinstance(node, dict):
        return node
    inner = node.get("config")
    if isinstance(inner, dict) and inner.get(_MARK):
        kept = {k: v for k, v in node.items() if k not in ("class_name", "config", "module", "registered_name")}
        return {**kept, "class_name": PLACEHOLDER, "config": {"name": inner["name"]}}
    return {k: _replace_marked(v) for k, v in node.items()}


def placeholder_names(architecture: Any) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == PLACEHOLDER and isinstance(node.get("config"), dict):
                found.append(str(node["config"].get("name")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(architecture)
    return found


def placeholder_scope(layers: Mapping[str, Any], where: str) -> Any:
    """A custom-object scope in which each placeholder becomes the live layer
    of its name from ``layers``."""

    class TinybuildBuilderLayer:  # only ever used through from_config
        @classmethod
        def from_config(cls, config: Mapping[str, Any], custom_objects: Any = None) -> Any:
            name = config.get("name")
            if name not in layers:
                raise StepError(f"{where}: the builder made no custom or Lambda layer named {name!r} (it made: "
                                f"{', '.join(sorted(layers)) or 'none'}); the artifact does not match its builder")
            return layers[name]

    return _tf.keras().utils.custom_object_scope({PLACEHOLDER: TinybuildBuilderLayer})


# -- running a builder ------------------------------------------------------------


def load_module(source: bytes, filename: str, where: str) -> Any:
    """Execute a builder's source as a throwaway module. Compiled from the
    bytes given (the ones that are hashed and stored), never imported from a
    path: no ``__pycache__`` is written next to the file or into an artifact."""
    import sys
    import types

    name = f"tinybuild_builder_{hashlib.sha256(source).hexdigest()[:16]}"
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses & co. look their module up while executing
    try:
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the user's own builder
    except SystemExit as exc:
        raise StepError(f"{where}: importing {filename} called sys.exit({exc.code!r})") from None
    except Exception as exc:
        raise StepError(f"{where}: importing {filename} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(name, None)
    return module


def call_builder(module: Any, call: BuilderCall, where: str) -> Any:
    """``function(input_shape, num_classes, **options)``, checked to return a tf_keras Model."""
    fn = getattr(module, call.function, None)
    if not callable(fn):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise StepError(f"{where}: {call.file} defines no function '{call.function}'"
                        + (f"; it defines: {', '.join(defined)}" if defined else ""))
    options = call.options
    try:
        model = fn(tuple(call.input_shape), call.num_classes, **options)
    except StepError:
        raise
    except SystemExit as exc:
        raise StepError(f"{where}: builder {call.label()} called sys.exit({exc.code!r}) instead of returning "
                        "a model") from None
    except Exception as exc:
        raise StepError(f"{where}: {call.label()}(input_shape={tuple(call.input_shape)}, num_classes={call.num_classes}"
                        f"{''.join(f', {k}={v!r}' for k, v in options.items())}) raised "
                        f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, _tf.keras().Model):
        kind = f"{type(model).__module__}.{type(model).__name__}"
        hint = " (a Keras 3 model? build it with `import tf_keras as keras`)" if "keras" in kind else ""
        raise StepError(f"{where}: {call.label()} returned {kind}, not a tf_keras Model{hint}")
    return model


@contextlib.contextmanager
def fresh_layer_names() -> Iterator[None]:
    """Auto-generated layer names ("dense", "lambda"...) as in a fresh Keras
    session, then the caller's naming state back: a rebuild gives the layers
    the names the model step gave them, whatever ran before in the process."""
    tf = _tf.tensorflow()
    from tf_keras.src import backend  # the name counters are not public API

    graphs = {tf.compat.v1.get_default_graph(), backend.get_graph()}
    saved = {g: backend.PER_GRAPH_OBJECT_NAME_UIDS.get(g) for g in graphs}
    observed = set(backend.OBSERVED_NAMES)
    for graph in graphs:
        backend.PER_GRAPH_OBJECT_NAME_UIDS.pop(graph, None)
    backend.OBSERVED_NAMES.clear()
    try:
        yield
    finally:
        for graph, uids in saved.items():
            if uids is None:
                backend.PER_GRAPH_OBJECT_NAME_UIDS.pop(graph, None)
            else:
                backend.PER_GRAPH_OBJECT_NAME_UIDS[graph] = uids
        backend.OBSERVED_NAMES.clear()
        backend.OBSERVED_NAMES.update(observed)


def write_builder(call: BuilderCall, out_dir: Path) -> None:
    (Path(out_dir) / BUILDER_SOURCE).write_bytes(call.source)  # verbatim
    text = json.dumps(call.record(), indent=1, sort_keys=True, allow_nan=False) + "\n"
    (Path(out_dir) / BUILDER_FILE).write_text(text, encoding="utf-8")


def read_builder(artifact_dir: Path, where: str) -> BuilderCall | None:
    """The builder call stored in an artifact (None: a plain artifact),
    its source checked against the recorded digest."""
    from tinybuild.safeio import check_regular

    record_path, source_path = Path(artifact_dir) / BUILDER_FILE, Path(artifact_dir) / BUILDER_SOURCE
    if not record_path.exists():
        return None
    try:
        check_regular(record_path)
        check_regular(source_path)
        record = json.loads(record_path.read_text(encoding="utf-8"))
        source = source_path.read_bytes()
        call = BuilderCall.make(str(record["file"]), str(record["function"]), source, record["input_shape"],
                                record["num_classes"], record["options"])
        expected = str(record["sha256"])
    except FileNotFoundError as exc:
        raise StepError(f"{where} is incomplete: {exc.filename} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"{where}: {BUILDER_FILE} is unreadable or malformed: {exc}") from None
    if call.sha256 != expected:
        raise StepError(f"{where}: {BUILDER_SOURCE} does not match the sha256 in {BUILDER_FILE}; the artifact "
                        "is corrupt or was edited")
    return call


def rebuild_layers(call: BuilderCall, source_path: Path, where: str) -> dict[str, Any]:
    """Run the stored builder again; its code layers by name (registered)."""
    module = load_module(call.source, str(source_path), where)
    with fresh_layer_names():
        model = call_builder(module, call, where)
    register(model, call)
    return builder_layers(model)


__all__ = [
    "BuilderCall",
    "architecture_with_placeholders",
    "builder_layers",
    "builder_of",
    "code_layers",
    "needs_code",
    "read_builder",
    "rebuild_layers",
    "register",
]
