"""Every hook a tinybuild plugin can implement.

Plugins are modules registered under the ``tinybuild`` entry-point group::

    [project.entry-points.tinybuild]
    my-plugin = "my_package.tinybuild_plugin"

and implement any of the hooks below with ``@tinybuild.api.hookimpl``. Hook
names are all prefixed ``tinybuild_``; pluggy calls them with keyword
arguments, so an implementation may accept only the arguments it needs.

Two families:

* **registry hooks** return declarations (step types, graph passes); they are
  called once per invocation and must be cheap: no TensorFlow imports;
* **lifecycle hooks** observe a build (reporters, loggers, metrics exporters);
  their return values are ignored, and an exception in one fails the build
  with the plugin's name, so keep them robust.

The core never calls hooks directly: it goes through the typed facade in
:mod:`tinybuild.plugins` (``Hooks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only
    from .api import GraphPass, StepType

hookspec = pluggy.HookspecMarker("tinybuild")


# -- registry hooks ---------------------------------------------------------


@hookspec
def tinybuild_step_types() -> "Sequence[StepType]":
    """Declare the step types this plugin provides.

    :return: a sequence of :class:`tinybuild.api.StepType`. Step type names
        are global: two plugins declaring the same name is an error naming
        both plugins.
    """


@hookspec
def tinybuild_graph_passes() -> "Sequence[GraphPass]":
    """Declare graph-rewrite passes (GraphDef -> GraphDef).

    :return: a sequence of :class:`tinybuild.api.GraphPass`; names are global
        like step type names.
    """


# -- lifecycle hooks ---------------------------------------------------------


@hookspec
def tinybuild_build_started(recipe: str, steps: Sequence[str]) -> None:
    """A build is about to run.

    :param recipe: path of the recipe file.
    :param steps: names of the steps selected for this build, in run order.
    """


@hookspec
def tinybuild_build_finished(recipe: str, summary: Mapping[str, Any]) -> None:
    """A build ended (successfully or not).

    :param recipe: path of the recipe file.
    :param summary: ``{"built": [...], "cached": [...], "failed": [...],
        "skipped": [...], "exit_code": int, "seconds": float}``.
    """


@hookspec
def tinybuild_step_started(step: str, step_type: str, reasons: Sequence[str]) -> None:
    """A step starts running (it was not cached).

    :param step: the step's name in the recipe.
    :param step_type: the step type (plugin) it uses.
    :param reasons: why it runs, e.g. ``["params.epochs 10 → 12"]``.
    """


@hookspec
def tinybuild_step_progress(step: str, completed: float, total: float | None, description: str) -> None:
    """A running step reported progress through ``ctx.progress``.

    :param step: the step's name in the recipe.
    :param completed: units done so far (epochs, batches, ...).
    :param total: units in all, or None when unknown.
    :param description: short free text, e.g. ``"epoch 3/10 loss 0.21"``.
    """


@hookspec
def tinybuild_step_log(step: str, message: str) -> None:
    """A running step logged a line through ``ctx.log``.

    :param step: the step's name in the recipe.
    :param message: the line, without a trailing newline.
    """


@hookspec
def tinybuild_step_cached(step: str, step_type: str, digest: str, source: str, transfer: Mapping[str, Any] | None) -> None:
    """A step's result was found in the cache and was not run.

    :param step: the step's name in the recipe.
    :param step_type: the step type (plugin) it uses.
    :param digest: the digest of its (cached) output artifact.
    :param source: ``"local"`` (the local cache) or ``"remote"`` (pulled from the remote cache).
    :param transfer: for a pull, ``{"bytes": ..., "seconds": ...}`` it took; None otherwise.
        (An implementation may omit ``source`` and ``transfer`` from its signature.)
    """


@hookspec
def tinybuild_step_finished(step: str, step_type: str, digest: str, seconds: float, metrics: Mapping[str, Any]) -> None:
    """A step ran successfully and its output was stored in the cache.

    :param step: the step's name in the recipe.
    :param step_type: the step type (plugin) it uses.
    :param digest: the digest of its output artifact.
    :param seconds: wall time of the run.
    :param metrics: the metrics the step returned (possibly empty).
    """


@hookspec
def tinybuild_step_failed(step: str, step_type: str, error: str, skipped: Sequence[str]) -> None:
    """A step failed; nothing of it was cached.

    :param step: the step's name in the recipe.
    :param step_type: the step type (plugin) it uses.
    :param error: a one-paragraph description of the cause.
    :param skipped: the downstream steps that will not run because of it.
    """
