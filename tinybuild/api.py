"""The public plugin API: everything a plugin (built-in or third-party) imports.

A plugin is a module registered under the ``tinybuild`` entry-point group. It
implements hooks from :mod:`tinybuild.hookspecs` with :data:`hookimpl`, and the
registry hooks return the declarations defined here:

* :class:`StepType` -- a kind of build step (``train``, ``tflite``, ...);
* :class:`GraphPass` -- a GraphDef -> GraphDef rewrite used by graph optimizers.

How a recipe's inputs reach ``run(ctx, inputs, params)``: ``input = "a"``
gives ``inputs == [artifact_of_a]``; ``inputs = ["a", "b"]`` gives
``[artifact_of_a, artifact_of_b]`` in the order written (the same order is
part of the cache key); with neither key, the step type's ``default_input``
is used when the recipe has a step of that name, else ``inputs == []``. The
count is checked against ``StepType.arity`` and each input's kind against
``StepType.consumes`` at plan time, so ``run`` can index ``inputs`` without
checking. The recipe's dataset is *not* an input: a step type that sets
``uses_dataset`` reads it as ``ctx.dataset``.

Readers and writers of each artifact kind, seeding and graph editing live in
the plugin SDK, :mod:`tinybuild_plugins.sdk` (it imports NumPy/TensorFlow
lazily); the guide is ``docs/plugins.md``.

This module must stay cheap to import: it is loaded on every ``tinybuild``
invocation, including fully cached builds that must never import TensorFlow.
Plugins therefore import heavy libraries *inside* their ``run`` functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Mapping, Protocol, Sequence

import pluggy

if TYPE_CHECKING:  # pragma: no cover - imported lazily, see __getattr__ below
    from .paramsbase import InputFile, Params, scalar_kinds  # noqa: F401

PROJECT = "tinybuild"

#: Decorator for hook implementations: ``@hookimpl def tinybuild_step_types(): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)


class Kind:
    """Artifact kinds: the type system the planner checks before anything runs.

    Each kind is a directory of files with a fixed layout, so that a plugin
    can consume another plugin's output without importing it.
    """

    #: ``x_{train,val,test}.npy``, ``y_{train,val,test}.npy``, ``meta.json``
    DATASET = "dataset"
    #: ``model.json`` + weights, see ``tinybuild_plugins.sdk.keras_model``
    KERAS_MODEL = "keras-model"
    #: ``graph.pb`` (serialized frozen GraphDef) + ``signature.json``
    GRAPHDEF = "graphdef"
    #: ``model.tflite``
    TFLITE = "tflite"
    #: ``<identifier>.h`` + ``<identifier>.cc``
    C_SOURCE = "c-source"
    #: ``metrics.json``
    METRICS = "metrics"
    #: ``report.md``, ``report.json``, ``report.html``, ``build.log``
    REPORT = "report"


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------


#: pydantic error type of an ``InputFile`` that names no regular file
INPUT_FILE_ERROR = "input_file"


class _InputFileMarker:
    """Marks a params field as a file the step reads: hashed by content."""

    def __repr__(self) -> str:  # shown in JSON schema titles / debug output
        return "InputFile"


INPUT_FILE = _InputFileMarker()


#: moved to :mod:`tinybuild.paramsbase` (pydantic), imported on first use
_PYDANTIC_NAMES = ("Params", "InputFile", "scalar_kinds")


def __getattr__(name: str) -> Any:
    """``Params``, ``InputFile`` and ``scalar_kinds`` live in
    :mod:`tinybuild.paramsbase` and are imported (with pydantic) only when a
    plugin asks for them: a build answered from the configuration cache never does."""
    if name in _PYDANTIC_NAMES:
        from . import paramsbase

        value = getattr(paramsbase, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_input_file(path: Path, max_bytes: int | None = None) -> "BinaryIO":
    """Open a file the recipe names, for binary reading: only a regular file
    (a FIFO, a device or a folder raises :class:`OSError`, never hangs), and
    with ``max_bytes`` none bigger (:class:`OSError` too)."""
    from .safeio import open_regular

    return open_regular(path, max_bytes)


# --------------------------------------------------------------------------
# Artifacts and the step context
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A step's output as seen by the steps that consume it.

    ``path`` is a directory holding ``files``; treat it as read-only.
    ``digest`` covers kind and every file's content, so two artifacts with the
    same digest are interchangeable (this is what makes early cutoff work).
    """

    step: str
    kind: str
    path: Path
    files: Mapping[str, str]
    digest: str
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        """An artifact is usable wherever a path is (``Path(artifact)``,
        ``load_dataset(artifact)``): it names its directory."""
        return str(self.path)

    def file(self, name: str) -> Path:
        """Path of one of this artifact's files; a clear error if absent."""
        if name not in self.files:
            raise StepError(
                f"artifact of step '{self.step}' ({self.kind}) has no file '{name}'; "
                f"it has: {', '.join(sorted(self.files)) or 'no files'}"
            )
        return self.path / name


class StepContext(Protocol):
    """What the core hands to ``StepType.run`` besides inputs and params."""

    #: the step's name in the recipe (``[steps.<name>]``)
    step: str
    #: empty directory the step writes its output files into
    out_dir: Path
    #: the recipe seed; steps must derive all randomness from it
    seed: int
    #: the recipe's dataset artifact, for step types with ``uses_dataset``
    dataset: Artifact | None
    #: folder of the recipe file (relative paths are already resolved)
    recipe_dir: Path
    #: the recipe's ``[target]`` table (device budgets), possibly empty;
    #: only step types declaring ``uses_target`` may read it
    target: Mapping[str, Any]
    #: the recipe's ``[recipe] name``; part of the key of name-sensitive steps
    recipe_name: str

    def progress(self, completed: float, total: float | None = None, description: str = "") -> None:
        """Report progress (epochs, batches...) to the live display."""

    def log(self, message: str) -> None:
        """A line for the build log (shown in plain output, kept in verbose mode).
        A message with several lines (a table) is shown as a block indented by
        four spaces, so a block at most ``terminal width - 4`` wide does not wrap."""

    def graph_passes(self) -> Mapping[str, "GraphPass"]:
        """Every registered graph pass, by name."""


RunFunction = Callable[[StepContext, Sequence[Artifact], Any], "Mapping[str, Any] | None"]


@dataclass(frozen=True)
class StepType:
    """Declaration of a step type, returned by ``tinybuild_step_types``.

    ``run(ctx, inputs, params)`` writes its files into ``ctx.out_dir`` and may
    return a JSON-serializable dict of metrics; both are cached together.
    ``inputs`` is the list of upstream artifacts in the order the recipe
    names them (``input = "a"`` -> ``[a]``, ``inputs = ["a", "b"]`` -> ``[a, b]``,
    neither -> ``[default_input]`` or ``[]``); ``params`` is an instance of
    ``params`` with defaults filled in. Raise :class:`StepError` for failures
    the user can fix (the message is shown without a traceback) and
    :class:`GateFailed` for budget gates.
    """

    name: str
    version: str
    produces: str
    run: RunFunction
    #: artifact kinds accepted as inputs (checked at plan time)
    consumes: tuple[str, ...] = ()
    #: the params model (a :class:`Params` subclass); default: :class:`Params` itself (no params)
    params: type[Params] = None  # type: ignore[assignment]  # set in __post_init__: pydantic is imported lazily
    #: (minimum, maximum) number of inputs; maximum None = unbounded
    arity: tuple[int, int | None] = (1, 1)
    #: input used when the recipe names none (e.g. "model" for train)
    default_input: str | None = None
    #: what each input is, in order, for step types whose inputs play different
    #: roles (e.g. ``("teacher", "student")``): plan-time errors and the schema
    #: name them, so a recipe gets the order right
    input_names: tuple[str, ...] = ()
    #: whether the step reads the recipe's dataset (``ctx.dataset``); adds a
    #: dependency on the dataset step. Without a dataset in the recipe this is
    #: a plan-time error, unless ``dataset_optional`` (then ``ctx.dataset`` is None)
    uses_dataset: bool = False
    dataset_optional: bool = False
    #: distributions whose installed versions enter the cache key
    toolchain: tuple[str, ...] = ()
    #: one-line summary shown by ``tinybuild plugins`` and the README
    description: str = ""
    #: extra modules whose source enters the plugin fingerprint (helpers the
    #: ``run`` module imports); the module defining ``run`` is always included
    fingerprint_modules: tuple[str, ...] = ()
    #: extra files read by the step, beyond ``InputFile`` fields (e.g. the
    #: Python file of a ``builder = "file.py:func"`` reference); their content
    #: digests enter the cache key
    input_files: Callable[[Any], Mapping[str, Path]] | None = None
    #: folders whose *listing* ``input_files`` reads (a data folder it
    #: ``iterdir``s): the no-op fast path stamps them, so a file added to,
    #: removed from or renamed in one makes the next build take the normal
    #: path (which lists them again). Omit when no folder is listed.
    input_folders: Callable[[Any], Iterable[Path]] | None = None
    #: whether the output may depend on step names (``ctx.step``, or the
    #: ``Artifact.step`` of inputs: a C identifier, a report's variant labels).
    #: If so (the safe default) the names enter the cache key. Steps whose
    #: output depends on content only set False, so renaming them in the recipe
    #: (often an expensive training step) reruns nothing.
    uses_names: bool = True
    #: whether the step reads ``ctx.target`` (device budgets): if so the
    #: recipe's ``[target]`` table enters its key, so tightening a budget
    #: re-checks the gates instead of replaying a cached verdict. A tuple of
    #: key names (e.g. ``("arena_margin",)``) narrows it: only those keys
    #: enter the key and ``ctx.target`` holds only them, so changing a budget
    #: the step never reads reruns nothing
    uses_target: bool | tuple[str, ...] = False
    #: whether the output depends on the inputs' *metrics* (``Artifact.metrics``),
    #: not only on their files: if so, digests of those metrics enter the key
    uses_input_metrics: bool = False
    #: names of this step's returned metrics that vary from run to run with the
    #: same inputs (timings, load): they are kept with the artifact and visible
    #: downstream as ``Artifact.metrics``, but never enter the keys of
    #: ``uses_input_metrics`` steps, so a rerun that measured a new time but
    #: wrote identical files keeps early cutoff. A step that shows such a
    #: figure shows the one measured when it was built.
    volatile_metrics: tuple[str, ...] = ()
    #: extra JSON-able key material derived from params and the registered
    #: graph passes (e.g. the versions of the passes a step will apply)
    key_extras: Callable[[Any, Mapping[str, "GraphPass"]], Mapping[str, Any]] | None = None
    #: plan-time check of params against what is installed, beyond what the
    #: ``Params`` model can see: ``check(params, registry)`` returns
    #: :class:`ParamProblem` s (empty when fine). ``registry`` is the loaded
    #: :class:`tinybuild.plugins.Registry`: ``.passes``, ``.step_types`` and
    #: ``.missing_hint(label, name, available)`` (which names a disabled
    #: plugin that would provide ``name``). Problems fail ``tinybuild plan``
    #: and ``build`` with exit 2 before anything runs. It runs on every plan,
    #: cached builds included, so it must be cheap: no TensorFlow, no I/O.
    check: Callable[[Any, Any], Iterable["ParamProblem"]] | None = None
    #: whether the step keeps every core it is given busy (training, pruning,
    #: QAT...): under ``-j N`` the scheduler runs no more heavy steps at once
    #: than there are cores, and on Ray a heavy step reserves its thread count
    #: of CPUs (a light one reserves one)
    heavy: bool = False
    #: GPUs the step can use (Ray reserves them for its task; 0: CPU only)
    gpus: float = 0.0
    #: plan-time check of params against the recipe's DAG, which ``check``
    #: cannot see: ``check_inputs(params, inputs)`` gets one :class:`StepView`
    #: per input, in order, once every step is bound (sweep members under
    #: their expanded names), and returns :class:`ParamProblem` s. For params
    #: that name other steps (a report's ``baseline`` names the model an
    #: ``evaluate`` input evaluated): a wrong name fails ``plan`` and ``build``
    #: with exit 2 instead of failing the step after upstream steps ran for
    #: minutes. It only validates: it never enters a cache key. Cheap, like
    #: ``check``; return nothing when the views cannot tell (keep the run-time
    #: check as the second line of defence).
    check_inputs: Callable[[Any, Sequence["StepView"]], Iterable["ParamProblem"]] | None = None

    def __post_init__(self) -> None:
        if self.params is None:  # the default, resolved here so that importing this module needs no pydantic
            from .paramsbase import Params

            object.__setattr__(self, "params", Params)


@dataclass(frozen=True)
class StepView:
    """One input of a step as :attr:`StepType.check_inputs` sees it: read-only
    facts from the recipe, known before anything runs (no artifact, no metrics).

    ``inputs`` are *its* input step names, resolved like the step's own
    (defaults applied, sweeps expanded), so a check can look one step further
    upstream: the variant an ``evaluate`` input scores is its ``inputs[0]``.
    """

    #: the step's name (a sweep member's expanded name, e.g. ``eval-clusters_8``)
    name: str
    #: its step type's name (``use = "..."``)
    use: str
    #: the artifact kind it produces (a :class:`Kind` value)
    produces: str
    #: the names of its own inputs, in order
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParamProblem:
    """A problem :attr:`StepType.check` (or ``check_inputs``) found in a step's params.

    ``key`` is relative to the step's table (``"passes[1]"``); the core
    prefixes the step's own path, so the error reads
    ``steps.opt.passes[1]: unknown graph pass 'x' -> did you mean ...``.
    """

    key: str
    message: str
    hint: str = ""


@dataclass(frozen=True)
class GraphPass:
    """A graph rewrite, returned by ``tinybuild_graph_passes``.

    ``apply`` is a pure function GraphDef -> GraphDef (TensorFlow protos; it
    imports TensorFlow lazily). ``exact`` passes must preserve outputs to
    within 1e-6; inexact ones are verified against a tolerance.
    """

    name: str
    version: str
    exact: bool
    apply: Callable[[Any], Any]
    description: str = ""
    fingerprint_modules: tuple[str, ...] = ()


def source_fingerprint(*modules: str) -> str:
    """Digest of the source files of ``modules``: for ``StepType.key_extras``
    that must track code outside the step's own fingerprint (e.g. the graph
    passes a step applies)."""
    from .keys import fingerprint  # the core's implementation, imported lazily

    return fingerprint(tuple(modules))


def graph_pass_fingerprint(graph_pass: "GraphPass") -> str:
    """Digest of a graph pass's code (the module of ``apply`` and its
    ``fingerprint_modules``), for steps whose key must follow the passes they run."""
    from .keys import pass_modules

    return source_fingerprint(*pass_modules(graph_pass))


# --------------------------------------------------------------------------
# Errors a plugin may raise
# --------------------------------------------------------------------------


class StepError(Exception):
    """A step failed for a reason the user can act on; shown without traceback."""


class GateFailed(Exception):
    """A budget gate failed (model too big, too inaccurate...): exit code 3."""


__all__ = [
    "Artifact",
    "GateFailed",
    "GraphPass",
    "INPUT_FILE",
    "InputFile",
    "Kind",
    "ParamProblem",
    "Params",
    "StepContext",
    "StepError",
    "StepType",
    "StepView",
    "graph_pass_fingerprint",
    "hookimpl",
    "open_input_file",
    "source_fingerprint",
]
