"""``remove-dead``: delete nodes that no signature output depends on.

Liveness flows backwards from the signature's output nodes through data and
control edges; signature inputs are always kept (they are the interface even
when an output ignores them). Everything else is unreachable work: training
ops, summaries, leftovers of other passes. Exact by construction.
"""

from __future__ import annotations

from tinybuild_plugins.sdk.graph_edit import GraphEditor, graph_pass, parse_ref


@graph_pass
def remove_dead(editor: GraphEditor) -> None:
    live: set[str] = set()
    stack = [name for name in editor.protected if name in editor]
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        stack.extend(parse_ref(ref)[0] for ref in editor.node(name).input)
    editor.remove_all(node.name for node in editor.nodes() if node.name not in live)
