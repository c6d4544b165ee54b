"""``reduce-control-edges``: drop control edges that impose no extra order.

A control edge ``u -> v`` (``^u`` among ``v``'s inputs) is redundant when
``v`` already runs after ``u`` for another reason:

* ``u`` also feeds ``v`` data, or ``^u`` is listed twice;
* the transitive reduction of the whole dependency DAG (data and control
  edges, computed with networkx) does not contain ``u -> v``: another path
  ``u -> ... -> v`` exists;
* ``u`` is a ``Const`` with no inputs of its own: it is ready before anything
  runs, so waiting for it orders nothing.

Data edges are never touched, and removing a subset of the edges that are
not in the transitive reduction keeps every reachability relation, so the
execution order constraints are exactly preserved. Exact by construction.
"""

from __future__ import annotations

from tinybuild_plugins.sdk.graph_edit import GraphEditor, control_ref, graph_pass, parse_ref


@graph_pass
def reduce_control_edges(editor: GraphEditor) -> None:
    import networkx as nx

    nodes = editor.nodes()
    if not any(ref.startswith("^") for node in nodes for ref in node.input):
        return
    dag = nx.DiGraph()
    dag.add_nodes_from(node.name for node in nodes)
    dag.add_edges_from((parse_ref(ref)[0], node.name) for node in nodes for ref in node.input)
    reduced = nx.transitive_reduction(dag)
    for node in nodes:
        data_sources = {source for source, _ in editor.data_inputs(node)}
        kept = [
            source for source in dict.fromkeys(editor.control_inputs(node))
            if source not in data_sources
            and reduced.has_edge(source, node.name)
            and not _is_free_constant(editor, source)
        ]
        refs = [ref for ref in node.input if not ref.startswith("^")]
        editor.set_inputs(node, refs + [control_ref(s) for s in kept])


def _is_free_constant(editor: GraphEditor, name: str) -> bool:
    node = editor.node(name)
    return node.op == "Const" and not node.input
