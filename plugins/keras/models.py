"""The ``keras`` model step type: where a recipe's model comes from.

Exactly one source per recipe:

* ``architecture = "basic-cnn"`` -- a built-in (see ``_architectures``);
* ``builder = "models/cnn.py:build"`` -- a user function, called as
  ``build(input_shape, num_classes, **options)``; the file's bytes enter the
  cache key (``StepType.input_files``), so editing it rebuilds the model;
* ``file = "model.keras"`` / ``"model.h5"`` -- an existing model, vetted
  before loading (:mod:`tinybuild_plugins.keras.model_file`: its config may
  name only Keras' own modules and classes, its weights must fit in
  ``MAX_MODEL_BYTES``), then loaded in safe mode.

A builder's model may use custom layer classes and ``Lambda`` layers: its
artifact then records "call this builder" (the source, verbatim, and the
arguments) and later steps rebuild those layers by calling it again, never
by deserializing code (:mod:`tinybuild_plugins.sdk.keras_builder`).

Input shape and class count come from the dataset artifact; weights are
initialized from the recipe seed, so the same recipe gives the same bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_args

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from tinybuild.api import InputFile, Kind, ParamProblem, Params, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.dataset import load_meta

VERSION = "1.1"  # 1.1: builder models may hold custom and Lambda layers
Architecture = Literal["basic-cnn", "mlp", "ds-cnn", "squeezenet"]
BUILT_INS: tuple[str, ...] = get_args(Architecture)
#: used with ``fullmatch``: ``$`` would accept a trailing newline
_BUILDER_RE = re.compile(r"(?P<file>.+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)")


class KerasModelParams(Params):
    architecture: Architecture | None = Field(
        None, description=f"A built-in architecture: {', '.join(BUILT_INS)}."
    )
    builder: str | None = Field(
        None,
        description='"path/to/file.py:function" (relative to the recipe), called as '
        "function(input_shape, num_classes, **options) and returning a tf_keras Model.",
    )
    file: InputFile | None = Field(None, description="A saved .keras or .h5 model, loaded in safe mode.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword options for the builder or the built-in architecture."
    )

    _builder_path: Path | None = PrivateAttr(default=None)

    @field_validator("builder")
    @classmethod
    def _builder_reference(cls, value: str | None) -> str | None:
        if value is not None and not _BUILDER_RE.fullmatch(value):
            raise ValueError(f'builder must look like "models/cnn.py:build" (a .py file, a colon, a function name), got {value!r}')
        return value

    @field_validator("file")
    @classmethod
    def _model_file_suffix(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix.lower() not in (".keras", ".h5", ".hdf5"):
            raise ValueError(f"file must be a .keras or .h5 model, got {value.name!r}")
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self, info: ValidationInfo) -> "KerasModelParams":
        given = [k for k in ("architecture", "builder", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of architecture, builder or file"
                + (f" (got {', '.join(given)})" if given else f' (e.g. architecture = "{BUILT_INS[0]}")')
            )
        if self.file is not None and self.options:
            raise ValueError("options apply to architecture or builder, not to a loaded file")
        if self.builder is not None:
            # The path is resolved against the recipe folder like an InputFile,
            # but kept private: the key holds the file's digest, not its path.
            path = Path(_BUILDER_RE.fullmatch(self.builder)["file"]).expanduser()
            base = (info.context or {}).get("base_dir")
            self._builder_path = path if path.is_absolute() or base is None else Path(base) / path
            _refuse_special_file(self._builder_path)
        return self

    @property
    def builder_path(self) -> Path | None:
        return self._builder_path

    @property
    def builder_function(self) -> str | None:
        return _BUILDER_RE.fullmatch(self.builder)["function"] if self.builder else None


def _refuse_special_file(path: Path) -> None:
    """A builder path naming a FIFO, a device or a folder (or that cannot name
    a file) is a recipe error now, not a hang at import; missing files are
    reported when the plan hashes them."""
    from tinybuild.safeio import check_regular

    try:
        check_regular(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ValueError(f"builder file {exc.strerror}: {exc.filename or path}") from None


#: most Python files, and folders, below a builder's folder (the files all enter the key)
MAX_BUILDER_SOURCES = 500
MAX_BUILDER_FOLDERS = 200
#: folders never searched for a builder's modules: caches, virtual environments, VCS data
_SKIPPED_FOLDERS = frozenset({"__pycache__", "site-packages", "node_modules"})


def _builder_tree(folder: Path) -> tuple[list[Path], list[Path]]:
    """(``*.py`` files, folders) below a builder's folder: the code it can
    import from beside it, however it does (a package, or a subfolder it
    puts on ``sys.path``). Hidden folders, ``__pycache__``, virtual
    environments (a ``pyvenv.cfg``) and links are skipped, and so is
    anything that is not a regular file. Stops one past either limit
    (:func:`check_builder_folder` refuses that at plan time)."""
    files: list[Path] = []
    folders: list[Path] = []
    pending = [folder]
    while pending and len(files) <= MAX_BUILDER_SOURCES and len(folders) <= MAX_BUILDER_FOLDERS:
        current = pending.pop()
        folders.append(current)
        try:
            entries = sorted(current.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in _SKIPPED_FOLDERS and not (entry / "pyvenv.cfg").exists():
                    pending.append(entry)
            elif entry.suffix == ".py" and entry.is_file():
                files.append(entry)
    return sorted(files), sorted(folders)


def check_builder_folder(params: KerasModelParams, registry: Any) -> list[ParamProblem]:
    """Plan time: every Python file below the builder's folder enters the key,
    so a builder in a folder of thousands (a checkout's root) is refused."""
    path = params.builder_path
    if path is None:
        return []
    files, folders = _builder_tree(path.parent)
    if len(files) <= MAX_BUILDER_SOURCES and len(folders) <= MAX_BUILDER_FOLDERS:
        return []
    return [ParamProblem("builder", f"the builder's folder {path.parent} holds more than {MAX_BUILDER_SOURCES} "
                                    f"Python files or {MAX_BUILDER_FOLDERS} folders (every .py file below it enters "
                                    "the model's cache key, since the builder may import any of them)",
                         "put the builder and the modules it imports in a folder of their own")]


def builder_input_files(params: KerasModelParams) -> Mapping[str, Path]:
    """The builder's source file and the Python beside it that it may import
    (see :func:`_builder_tree`): their content digests enter the cache
    key, so editing a helper module rebuilds the model, as editing the
    builder does."""
    path = params.builder_path
    if path is None:
        return {}
    files = {"builder": path}
    for source in _builder_tree(path.parent)[0]:
        if source != path:
            files[f"builder folder: {source.relative_to(path.parent).as_posix()}"] = source
    return files


def builder_input_folders(params: KerasModelParams) -> list[Path]:
    """Folders whose listing :func:`builder_input_files` reads: a module
    added anywhere below the builder's folder makes the next build look again."""
    path = params.builder_path
    return [] if path is None else _builder_tree(path.parent)[1]


# -- the three sources ---------------------------------------------------------


def read_builder_source(path: Path, where: str) -> bytes:
    """The builder file's bytes, read once: what runs is what is stored."""
    from tinybuild.safeio import check_regular

    try:
        check_regular(path)  # a FIFO or a device must fail, not hang the import
    except FileNotFoundError:
        raise StepError(f"{where}: builder file not found: {path}") from None
    except OSError as exc:
        raise StepError(f"{where}: builder file {path} {exc.strerror}") from None
    return path.read_bytes()


def from_builder(path: Path, function: str, options: Mapping[str, Any], input_shape: Sequence[int],
                 num_classes: int, where: str) -> Any:
    """Call the user's builder (in the child process of
    :mod:`tinybuild_plugins.keras.builder_process`). The model's custom and
    Lambda layers are registered with this call, so the artifact records
    "call this builder" for them (see :mod:`tinybuild_plugins.sdk.keras_builder`)."""
    from tinybuild_plugins.sdk import keras_builder

    source = read_builder_source(path, where)
    call = keras_builder.BuilderCall.make(path.name, function, source, input_shape, num_classes, options)
    module = keras_builder.load_module(source, str(path), where)
    model = keras_builder.call_builder(module, call, where)
    keras_builder.register(model, call)
    return model


def from_file(path: Path, where: str) -> Any:
    """Load a model file from outside, after vetting a private copy of it
    (:mod:`tinybuild_plugins.keras.model_file`): no config that could import
    or call code, no unpacking past the memory limit; then safe mode."""
    import tempfile

    from tinybuild.safeio import check_regular

    from tinybuild_plugins.keras.model_file import vetted_copy

    try:
        check_regular(path)
    except FileNotFoundError:
        raise StepError(f"{where}: model file not found: {path}") from None
    except OSError as exc:
        raise StepError(f"{where}: model file {path} {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="tinybuild-model-") as folder:
        copy = vetted_copy(path, Path(folder), where)
        keras = _tf.keras()
        from tf_keras.src.saving import serialization_lib  # SafeModeScope: not public API

        try:
            with serialization_lib.SafeModeScope(True):
                return keras.models.load_model(copy, compile=False, safe_mode=True)
        except Exception as exc:
            raise StepError(f"{where}: cannot load {path} in safe mode: {type(exc).__name__}: {exc}") from exc


def _file_format(path: Path) -> str:
    """"h5" or "keras", from the file's content (which the key covers), not its name."""
    with open(path, "rb") as f:
        return "h5" if f.read(8) == b"\x89HDF\r\n\x1a\n" else "keras"


def from_architecture(name: str, options: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, where: str) -> Any:
    from tinybuild_plugins.keras.architectures import ARCHITECTURES

    try:
        return ARCHITECTURES[name](input_shape, num_classes, options)
    except StepError as exc:
        raise StepError(f"{where}: {exc}") from None
    except ValueError as exc:  # Keras shape errors, e.g. a 2-D CNN on 1-D features
        hint = ("; grayscale images without a channel axis? set add_channel_axis = true in the npz [dataset]"
                if len(input_shape) == 2 else "")
        raise StepError(
            f"{where}: architecture '{name}' cannot be built for inputs of shape {list(input_shape)}{hint}: {exc}"
        ) from exc


# -- run -------------------------------------------------------------------------


def prepare_session(seed: int) -> None:
    """A fresh Keras session seeded from the recipe: the same recipe gives the same weights."""
    keras = _tf.keras()
    keras.backend.clear_session()  # layer auto-names restart at "conv2d", not "conv2d_7"
    _tf.seed_everything(seed)


def finish(model: Any, out_dir: Path, where: str, input_shape: Sequence[int], num_classes: int,
           source: Mapping[str, Any]) -> dict[str, Any]:
    """Check, save and re-load ``model``; return the step's metrics. Shared by
    the in-process sources and the builder's child process, so both give the
    same bytes."""
    from tinybuild_plugins.keras.fit import check_compatible
    from tinybuild_plugins.sdk.keras_model import load_keras_model, model_meta, save_keras_model

    check_compatible(model, list(input_shape), num_classes, where)
    save_keras_model(model, out_dir, meta={"optimization": "none", "source": dict(source)})
    try:  # fail now, not three steps later, if the saved form cannot be rebuilt
        load_keras_model(out_dir)
    except StepError as exc:
        raise StepError(
            f"{where}: the model cannot be rebuilt from its saved architecture ({exc}); custom and Lambda "
            "layers are supported in models made by a builder (builder = \"file.py:function\"), not in "
            "model files"
        ) from None
    facts = model_meta(model)
    return {"params": facts["params"]["total"], "trainable_params": facts["params"]["trainable"],
            "layers": facts["layers"], "output": facts["output"]}


def run(ctx: StepContext, inputs: Sequence[Any], params: KerasModelParams) -> dict[str, Any]:
    where = f"model '{ctx.step}'"
    if ctx.dataset is None:
        raise StepError(f"{where}: a model step needs the recipe's [dataset] to know the input shape")
    meta = load_meta(ctx.dataset.path)
    input_shape, num_classes = [int(d) for d in meta["input_shape"]], int(meta["num_classes"])

    if params.builder is not None:
        # user code: in a child process, so that os._exit or a crash is a failed step
        from tinybuild_plugins.keras.builder_process import build_in_child

        return build_in_child(builder=params.builder_path, function=params.builder_function, options=params.options,
                              input_shape=input_shape, num_classes=num_classes, seed=ctx.seed,
                              out_dir=ctx.out_dir, where=where)

    prepare_session(ctx.seed)
    if params.architecture is not None:
        model = from_architecture(params.architecture, params.options, input_shape, num_classes, where)
        return finish(model, ctx.out_dir, where, input_shape, num_classes,
                      {"architecture": params.architecture, "options": params.options})
    model = from_file(Path(params.file), where)
    # the key holds the file's content, not its name: keep the name out of the
    # artifact (a renamed file must give the same bytes) and report it as a metric
    metrics = finish(model, ctx.out_dir, where, input_shape, num_classes, {"file_format": _file_format(Path(params.file))})
    return {**metrics, "source": {"file": Path(params.file).name}}


KERAS = StepType(
    name="keras",
    version=VERSION,
    produces=Kind.KERAS_MODEL,
    run=run,
    params=KerasModelParams,
    arity=(0, 0),
    uses_dataset=True,
    toolchain=("tensorflow", "tf-keras", "numpy"),
    description="A tf_keras model from a built-in architecture, a builder function or a saved file.",
    uses_names=False,  # output depends on content only: renames rerun nothing
    fingerprint_modules=(
        "tinybuild_plugins.keras.model_file",
        "tinybuild_plugins.sdk.keras_config_check",
        "tinybuild_plugins.sdk.tf",
        "tinybuild_plugins.sdk.keras_model",
        "tinybuild_plugins.sdk.keras_builder",
        "tinybuild_plugins.keras.architectures",
        "tinybuild_plugins.sdk.dataset",
        "tinybuild_plugins.keras.fit",
        "tinybuild_plugins.keras.builder_process",
    ),
    input_files=builder_input_files,
    input_folders=builder_input_folders,
    check=check_builder_folder,
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [KERAS]
