"""Registration of the built-in graph passes (entry point ``graph-passes``).

**What a pass receives.** ``GraphPass.apply`` is typed ``Any``; tinybuild's
passes take a :class:`tinybuild_plugins.sdk.graph_edit.Graph` -- a frozen
GraphDef plus the signature's input and output tensor names -- and return a
new ``Graph``. The signature is what a pass needs to know but a GraphDef
cannot say: its nodes are protected (never removed or renamed). A bare
GraphDef is accepted too (Placeholders are taken as inputs and sink nodes as
outputs), and a third-party pass may return a bare GraphDef, which keeps the
signature it was given.

**Purity.** Every pass copies the proto and edits the copy; the optimizer
checks that the input is untouched. Every pass is idempotent (it iterates to
its own fixed point), so applying it twice equals applying it once.

**Graphs a pass does not understand** -- control flow, function libraries,
stateful ops, PlaceholderWithDefault, unregistered ops -- are returned
unchanged with ``Graph.skipped`` set to the reason; ``graph-optimize``
records it in its metrics.

Nothing here imports TensorFlow: the passes import it when applied.
"""

from __future__ import annotations

from tinybuild.api import GraphPass, hookimpl

from tinybuild_plugins.graph import affine, arithmetic, batchnorm, constfold, control_edges, dead, identity, noop

_SHARED = ("tinybuild_plugins.sdk.graph_edit", "tinybuild_plugins.sdk.tfgraph", "tinybuild_plugins.sdk.tf")

#: the order graph-optimize applies passes in by default: identities and
#: NoOps first so constants meet their consumers and stray control edges
#: (which keep operands alive) can be dropped; folding before the arithmetic
#: and batch-norm rewrites, which look for constant operands; dead code last.
DEFAULT_ORDER = (
    "remove-identity",
    "remove-noop",
    "reduce-control-edges",
    "fold-constants",
    "simplify-arithmetic",
    "fold-batchnorm",
    "fold-input-affine",
    "remove-dead",
)


def _graph_pass(name: str, version: str, exact: bool, module: object, apply: object, summary: str) -> GraphPass:
    return GraphPass(
        name=name, version=version, exact=exact, apply=apply, description=summary,  # type: ignore[arg-type]
        fingerprint_modules=(module.__name__, *_SHARED),  # type: ignore[attr-defined]
    )


def builtin_passes() -> list[GraphPass]:
    return [
        _graph_pass("remove-identity", "1.0", True, identity, identity.remove_identity,
                    "bypass Identity/IdentityN nodes (signature outputs kept, control inputs carried over)"),
        _graph_pass("remove-noop", "1.0", True, noop, noop.remove_noop,
                    "remove NoOp nodes, rewiring their control dependencies"),
        _graph_pass("reduce-control-edges", "1.0", True, control_edges, control_edges.reduce_control_edges,
                    "drop redundant control edges (transitive reduction with networkx)"),
        _graph_pass("fold-constants", "1.0", True, constfold, constfold.fold_constants,
                    "evaluate constant subgraphs (and fully known shapes) into Const nodes, size-limited"),
        _graph_pass("simplify-arithmetic", "1.1", True, arithmetic, arithmetic.simplify_arithmetic,
                    "drop x*1, x+0, x-0, x/1 (also x+zeros_like(x), x*ones_like(x), Fill), "
                    "reshape/transpose chains, no-op casts/pads and similar"),
        _graph_pass("fold-batchnorm", "1.0", False, batchnorm, batchnorm.fold_batchnorm,
                    "fold inference batch norm into Conv2D/DepthwiseConv2dNative/MatMul weights and bias"),
        _graph_pass("fold-input-affine", "1.0", False, affine, affine.fold_input_affine,
                    "fold a per-feature scale/shift in front of MatMul/Conv2D (Normalization, "
                    "input batch norm) into its weights and bias"),
        _graph_pass("remove-dead", "1.0", True, dead, dead.remove_dead,
                    "delete nodes no signature output depends on"),
    ]


@hookimpl
def tinybuild_graph_passes() -> list[GraphPass]:
    return builtin_passes()
