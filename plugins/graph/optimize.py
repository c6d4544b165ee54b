"""Run graph passes to a fixed point and record what each application did.

This module is the contract-keeper between the optimizer step and passes it
did not write (third-party ones included): a pass must return a graph with
the same signature, keep every signature node, and leave its input proto
untouched. Breaking any of these is reported as a :class:`StepError` naming
the pass, instead of surfacing later as a baffling TensorFlow error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tinybuild.api import GraphPass, StepError

from tinybuild_plugins.sdk.graph_edit import Graph, op_counts


@dataclass(frozen=True)
class Application:
    """One call of one pass: what went in, what came out."""

    round: int
    graph_pass: GraphPass
    before: Graph
    after: Graph
    changed: bool

    def metrics(self) -> dict[str, Any]:
        """Node counts (by op type when the pass changed something: an
        unchanged application would only repeat the previous counts)."""
        entry: dict[str, Any] = {
            "round": self.round,
            "pass": self.graph_pass.name,
            "changed": self.changed,
            "nodes_before": len(self.before.graph_def.node),
            "nodes_after": len(self.after.graph_def.node),
        }
        if self.changed:
            entry["ops_before"] = op_counts(self.before.graph_def)
            entry["ops_after"] = op_counts(self.after.graph_def)
        if self.after.skipped:
            entry["skipped"] = self.after.skipped
        return entry


@dataclass(frozen=True)
class FixedPoint:
    graph: Graph
    applications: list[Application]
    rounds: int
    converged: bool

    @property
    def changes(self) -> list[Application]:
        return [a for a in self.applications if a.changed]


def run_to_fixed_point(
    graph: Graph,
    passes: Sequence[GraphPass],
    max_rounds: int,
    on_application: Callable[[Application], None] | None = None,
) -> FixedPoint:
    """Apply ``passes`` in order, round after round, until a whole round
    changes nothing (converged) or ``max_rounds`` rounds have run."""
    applications: list[Application] = []
    rounds = 0
    converged = False
    serialized = graph.serialize()  # kept in step with ``graph``: serializing costs more than most passes
    for round_number in range(1, max_rounds + 1):
        rounds = round_number
        round_changed = False
        for graph_pass in passes:
            application, serialized = _apply(graph_pass, graph, serialized, round_number)
            applications.append(application)
            if on_application is not None:
                on_application(application)
            round_changed = round_changed or application.changed
            graph = application.after
        if not round_changed:
            converged = True
            break
    return FixedPoint(graph, applications, rounds, converged)


def _apply(graph_pass: GraphPass, graph: Graph, before_bytes: bytes, round_number: int) -> tuple[Application, bytes]:
    """One checked application; also returns the result's serialized bytes."""
    name = graph_pass.name
    try:
        result = Graph.coerce(graph_pass.apply(graph), graph)
    except StepError:
        raise
    except Exception as exc:  # a pass bug must name the pass
        raise StepError(f"graph pass '{name}' failed in round {round_number}: {type(exc).__name__}: {exc}") from exc
    if graph.serialize() != before_bytes:
        raise StepError(f"graph pass '{name}' modified its input GraphDef; passes must be pure "
                        "(copy the proto, edit the copy)")
    if (result.inputs, result.outputs) != (graph.inputs, graph.outputs):
        raise StepError(f"graph pass '{name}' changed the graph's signature "
                        f"({list(graph.outputs)} -> {list(result.outputs)}); passes must keep it")
    present = {node.name for node in result.graph_def.node}
    missing = sorted(graph.protected_nodes - present)
    if missing:
        raise StepError(f"graph pass '{name}' removed signature node(s) {missing}; "
                        "inputs and outputs must survive every pass")
    after_bytes = before_bytes if result.graph_def is graph.graph_def else result.serialize()
    changed = after_bytes != before_bytes
    if not changed:
        result = Graph(graph.graph_def, graph.inputs, graph.outputs, result.skipped)
    return Application(round_number, graph_pass, graph, result, changed), after_bytes
