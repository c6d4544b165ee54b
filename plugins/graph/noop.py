"""``remove-noop``: remove ``NoOp`` nodes, rewiring their control edges.

A ``NoOp`` only groups control dependencies ("run after all of these"). Each
node that waited for it (``^noop``) now waits for the NoOp's own control
inputs directly, so every ordering it imposed is kept.

Rewiring a NoOp with ``p`` predecessors and ``s`` successors creates
``p * s`` edges in place of ``p + s``; when that would grow the graph (both
sides larger than one or two) the NoOp is kept, as it is the cheaper
encoding of the same ordering. The frozen-Keras ``NoOp`` (hundreds of
predecessors, one successor) is always removed. Exact by construction.
"""

from __future__ import annotations

from tinybuild_plugins.sdk.graph_edit import GraphEditor, control_ref, graph_pass


@graph_pass
def remove_noop(editor: GraphEditor) -> None:
    for node in editor.nodes():
        if node.op != "NoOp" or node.name in editor.protected:
            continue
        predecessors = [control_ref(p) for p in dict.fromkeys(editor.control_inputs(node))]
        successors = editor.consumers(node.name)
        if len(predecessors) * len(successors) > len(predecessors) + len(successors):
            continue
        editor.reroute(node.name, {}, control_replacement=predecessors)
        editor.remove(node.name)
