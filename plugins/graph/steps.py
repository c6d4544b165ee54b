"""Step types ``graph-freeze`` and ``graph-optimize`` (entry point ``graph-steps``).

``graph-freeze`` turns a keras-model artifact into a graphdef artifact
(layout in :mod:`tinybuild_plugins.sdk.graphdef`, freezing in
:mod:`tinybuild_plugins.graph.freeze`).

``graph-optimize`` runs registered graph passes (see
:mod:`tinybuild_plugins.graph.passes` for what a pass receives) to a fixed
point, then verifies the result against the original on sample inputs and
fails, naming the culprit pass, if the outputs moved more than allowed. Its
metrics record node counts by op type before and after every pass
application and the verdict, so they are cached with the graph.

The params model cannot see the pass registry, so pass names are checked at
plan time by ``StepType.check`` (an unknown pass, or one whose plugin is
disabled, fails ``tinybuild plan`` with exit 2). Without ``passes`` the step
runs the built-in exact passes only: a third-party pass is opt-in by naming
it, so installing a plugin never changes (and invalidates) existing steps.
The selected passes' names, versions and code fingerprints enter the cache
key through ``key_extras``, so upgrading a pass reruns the step and the
reason names it (``pass fold-constants 1.0 → 1.1``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pydantic import Field, field_validator

from tinybuild.api import (Artifact, GraphPass, Kind, ParamProblem, Params, StepContext, StepError, StepType,
                           graph_pass_fingerprint, hookimpl)

from tinybuild_plugins.sdk.graph_edit import Graph, op_counts
from tinybuild_plugins.graph.passes import DEFAULT_ORDER

_TOOLCHAIN = ("tensorflow", "numpy", "networkx")


# --------------------------------------------------------------------------
# graph-freeze
# --------------------------------------------------------------------------


class FreezeParams(Params):
    batch_size: int | None = Field(
        None, ge=1, le=4096,
        description="fixed batch dimension of the frozen graph; leave unset for a dynamic "
                    "batch (None), which serves every batch size",
    )


def run_freeze(ctx: StepContext, inputs: Sequence[Artifact], params: FreezeParams) -> dict[str, Any]:
    from tinybuild_plugins.sdk.keras_model import load_keras_model

    from tinybuild_plugins.sdk.graphdef import GRAPH_FILE, save_graphdef
    from tinybuild_plugins.graph.freeze import freeze_keras_model

    model = load_keras_model(inputs[0].path)
    graph_def, signature = freeze_keras_model(model, params.batch_size)
    save_graphdef(ctx.out_dir, graph_def, signature)
    ctx.log(f"froze {len(graph_def.node)} nodes; inputs "
            f"{[s['tensor'] for s in signature['inputs']]}, outputs {[s['tensor'] for s in signature['outputs']]}")
    return {
        "nodes": len(graph_def.node),
        "ops": op_counts(graph_def),
        "graph_bytes": (ctx.out_dir / GRAPH_FILE).stat().st_size,
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
    }


# --------------------------------------------------------------------------
# graph-optimize
# --------------------------------------------------------------------------


class OptimizeParams(Params):
    passes: tuple[str, ...] | None = Field(
        None,
        description="graph passes to run, in order, repeated to a fixed point; default: the "
                    "built-in exact passes (remove-identity, remove-noop, reduce-control-edges, "
                    "fold-constants, simplify-arithmetic, remove-dead); a plugin's pass runs only "
                    "when named here",
    )
    tolerance: float = Field(
        1e-4, gt=0, le=1.0,
        description="max absolute output difference allowed when an inexact pass (e.g. "
                    "fold-batchnorm) changed the graph; exact passes must stay within 1e-6",
    )
    samples: int = Field(16, ge=1, le=4096, description="number of verification inputs")
    max_rounds: int = Field(8, ge=1, le=100, description="stop after this many rounds over the passes")

    @field_validator("passes")
    @classmethod
    def _names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one pass, or leave 'passes' out for the default list")
        duplicates = sorted({n for n in value if value.count(n) > 1})
        if duplicates:
            raise ValueError(f"pass(es) listed twice: {', '.join(duplicates)} (passes repeat to a "
                             "fixed point anyway)")
        return value


def default_pass_names(registered: Mapping[str, GraphPass]) -> list[str]:
    """The built-in exact passes, in DEFAULT_ORDER. Third-party passes are
    never added implicitly: installing a plugin must not change what existing
    steps compute (nor their keys); name a pass in ``passes`` to use it."""
    return [n for n in DEFAULT_ORDER if n in registered and registered[n].exact]


def check_passes(params: OptimizeParams, registry: Any) -> list[ParamProblem]:
    """Plan-time check: every named pass is registered (else say which
    disabled plugin has it, or what is close), and the default list is not
    empty (it is when the built-in passes plugin is disabled)."""
    if params.passes is None:
        if default_pass_names(registry.passes):
            return []
        return [ParamProblem("", "no 'passes' given and the built-in graph passes are not loaded "
                                 "(plugin 'graph-passes' disabled?)",
                             "name the passes to run in 'passes', or enable the plugin 'graph-passes'")]
    return [ParamProblem(f"passes[{i}]", f"unknown graph pass '{name}'",
                         registry.missing_hint("graph pass", name, registry.passes))
            for i, name in enumerate(params.passes) if name not in registry.passes]


def selected_passes(params: OptimizeParams, registered: Mapping[str, GraphPass]) -> list[GraphPass]:
    names = list(params.passes) if params.passes is not None else default_pass_names(registered)
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise StepError(f"unknown graph pass(es) {', '.join(repr(n) for n in unknown)}; registered passes: "
                        f"{', '.join(sorted(registered)) or 'none'}")
    return [registered[n] for n in names]


def optimize_key_extras(params: OptimizeParams, registered: Mapping[str, GraphPass]) -> dict[str, Any]:
    names = list(params.passes) if params.passes is not None else default_pass_names(registered)
    return {"graph_passes": [[n, registered[n].version if n in registered else None,
                              registered[n].exact if n in registered else None,
                              _pass_fingerprint(registered[n]) if n in registered else None] for n in names]}


def _pass_fingerprint(graph_pass: GraphPass) -> str:
    """Digest of a pass's code: editing a pass reruns the steps that apply it."""
    return graph_pass_fingerprint(graph_pass)


def run_optimize(ctx: StepContext, inputs: Sequence[Artifact], params: OptimizeParams) -> dict[str, Any]:
    from tinybuild_plugins.sdk.graphdef import load_graphdef, save_graphdef
    from tinybuild_plugins.graph.optimize import run_to_fixed_point
    from tinybuild_plugins.graph.verify import EXACT_TOLERANCE, Runner, sample_inputs

    passes = selected_passes(params, ctx.graph_passes())
    graph_def, signature = load_graphdef(inputs[0])
    original = Graph(graph_def, tuple(s["tensor"] for s in signature["inputs"]),
                     tuple(s["tensor"] for s in signature["outputs"]))

    done = [0]

    def report(application: Any) -> None:
        done[0] += 1
        ctx.progress(done[0], None, f"round {application.round}: {application.graph_pass.name}")
        if application.changed:
            ctx.log(f"round {application.round}: {application.graph_pass.name} "
                    f"{len(application.before.graph_def.node)} -> {len(application.after.graph_def.node)} nodes")
        elif application.after.skipped:
            ctx.log(f"{application.graph_pass.name} skipped: {application.after.skipped}")

    result = run_to_fixed_point(original, passes, params.max_rounds, report)

    applied = list(dict.fromkeys(a.graph_pass.name for a in result.changes))
    exact = all(a.graph_pass.exact for a in result.changes)
    tolerance = EXACT_TOLERANCE if exact else params.tolerance
    runner = Runner(sample_inputs(signature, ctx.dataset, params.samples, ctx.seed))
    baseline = runner.outputs(original)
    if isinstance(baseline, str):
        raise StepError(f"the input graph of step '{ctx.step}' fails to run on its sample inputs "
                        f"({runner.inputs.source}), so nothing can be verified: {baseline}")
    difference, failure = runner.difference(original, result.graph)
    if failure is not None or difference > tolerance:
        raise StepError(_verification_message(runner, result, difference, failure, tolerance, exact, params))

    save_graphdef(ctx.out_dir, result.graph.graph_def, signature)
    return {
        "passes": [p.name for p in passes],
        "applied": applied,
        "rounds": result.rounds,
        "converged": result.converged,
        "nodes_before": len(original.graph_def.node),
        "nodes_after": len(result.graph.graph_def.node),
        "ops_before": op_counts(original.graph_def),
        "ops_after": op_counts(result.graph.graph_def),
        "history": [a.metrics() for a in result.applications],
        "skipped": {a.graph_pass.name: a.after.skipped for a in result.applications if a.after.skipped},
        "verification": {
            "max_abs_diff": difference,
            "samples": runner.inputs.samples,
            "inputs": runner.inputs.source,
            "tolerance": tolerance,
            "exact": exact,
            "passed": True,
        },
    }


def _verification_message(runner: Any, result: Any, difference: float, failure: str | None,
                          tolerance: float, exact: bool, params: OptimizeParams) -> str:
    """Name the pass application(s) that moved the outputs, checked one by one."""
    from tinybuild_plugins.graph.verify import EXACT_TOLERANCE

    why = "every applied pass is exact" if exact else "an inexact pass was applied; see 'tolerance'"
    headline = (f"optimized graph does not match the original: {failure}" if failure else
                f"optimized graph's outputs differ from the original by {difference:.3g}")
    lines = [f"{headline} on {runner.inputs.samples} samples ({runner.inputs.source}); "
             f"allowed {tolerance:g} ({why})."]
    culprits: dict[str, tuple[list[int], float, str | None, float]] = {}  # pass -> rounds, worst diff, failure, limit
    for application in result.changes:
        allowed = EXACT_TOLERANCE if application.graph_pass.exact else params.tolerance
        step_diff, step_failure = runner.difference(application.before, application.after)
        if step_failure or step_diff > allowed:
            rounds, worst, failed, _ = culprits.get(application.graph_pass.name, ([], 0.0, None, allowed))
            culprits[application.graph_pass.name] = (rounds + [application.round], max(worst, step_diff),
                                                     failed or step_failure, allowed)
    if culprits:
        blamed = []
        for name, (rounds, worst, failed, allowed) in culprits.items():
            when = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {', '.join(map(str, rounds))}"
            what = failed or f"changes outputs by up to {worst:.3g} (allowed {allowed:g})"
            blamed.append(f"pass '{name}' ({when}) {what}")
        lines.append("Culprit: " + "; ".join(blamed) + ".")
    else:
        lines.append("No single pass exceeds its own limit; the differences add up across passes "
                     f"({', '.join(dict.fromkeys(a.graph_pass.name for a in result.changes))}).")
    lines.append("Remove the pass from 'passes'" + ("" if exact else " or raise 'tolerance'") + ".")
    return " ".join(lines)


# --------------------------------------------------------------------------


_FINGERPRINT = (
    "tinybuild_plugins.sdk.tf",
    "tinybuild_plugins.sdk.dataset",
    "tinybuild_plugins.sdk.graph_edit",
    "tinybuild_plugins.sdk.tfgraph",
    "tinybuild_plugins.sdk.graphdef",
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [
        StepType(
            name="graph-freeze",
            version="1.0",
            produces=Kind.GRAPHDEF,
            consumes=(Kind.KERAS_MODEL,),
            run=run_freeze,
            params=FreezeParams,
            toolchain=("tensorflow", "tf-keras"),
            description="freeze a Keras model into a GraphDef (variables folded to constants) + signature",
            uses_names=False,
            fingerprint_modules=(*_FINGERPRINT, "tinybuild_plugins.sdk.keras_model", "tinybuild_plugins.sdk.keras_builder",
                                 "tinybuild_plugins.graph.freeze"),
        ),
        StepType(
            name="graph-optimize",
            version="1.0",
            produces=Kind.GRAPHDEF,
            consumes=(Kind.GRAPHDEF,),
            run=run_optimize,
            params=OptimizeParams,
            uses_dataset=True,
            dataset_optional=True,
            toolchain=_TOOLCHAIN,
            description="rewrite a GraphDef with graph passes to a fixed point, verified numerically",
            uses_names=False,
            fingerprint_modules=(
                *_FINGERPRINT,
                "tinybuild_plugins.graph.optimize",
                "tinybuild_plugins.graph.verify",
                "tinybuild_plugins.graph.passes",
                "tinybuild_plugins.graph.identity",
                "tinybuild_plugins.graph.noop",
                "tinybuild_plugins.graph.constfold",
                "tinybuild_plugins.graph.dead",
                "tinybuild_plugins.graph.control_edges",
                "tinybuild_plugins.graph.batchnorm",
                "tinybuild_plugins.graph.arithmetic",
            ),
            key_extras=optimize_key_extras,
            check=check_passes,
        ),
    ]
