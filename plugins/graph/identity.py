"""``remove-identity``: bypass ``Identity`` and ``IdentityN`` nodes.

Freezing a Keras model leaves one ``Identity`` per variable read (the old
``ReadVariableOp``), plus one per output: on MobileNetV2 that is 263 of 689
nodes. Each consumer of an identity is pointed at the identity's input and
inherits its control inputs, and a consumer that waited for the identity
(``^identity``) waits for its producer instead, so execution order is kept.

An identity that is a signature output (e.g. ``Identity:0``) must keep that
tensor name valid. When nothing but the identity reads its producer, the
producer *takes over the identity's name* (the identity node becomes the
producer's op, attrs and inputs, the producer node goes), so the output
tensor keeps its name and one node disappears; otherwise the identity stays.
Signature inputs are never touched. Exact by construction.
"""

from __future__ import annotations

from typing import Any

from tinybuild_plugins.sdk.graph_edit import PLACEHOLDER_OPS, GraphEditor, Splice, control_ref, graph_pass, parse_ref, tensor_ref

IDENTITY_OPS = frozenset({"Identity", "IdentityN"})


@graph_pass
def remove_identity(editor: GraphEditor) -> None:
    splices: dict[str, Splice] = {}
    for node in editor.topological_order():  # producers first: chains resolve in one sweep
        if node.op in IDENTITY_OPS and node.name not in editor.protected:
            splices[node.name] = _splice(editor, node, splices)
    if splices:
        editor.splice_out(splices)
    for node in editor.topological_order():
        if node.op == "Identity" and node.name in editor.protected:
            _take_over_producer(editor, node)


def _splice(editor: GraphEditor, node: Any, earlier: dict[str, Splice]) -> Splice:
    """How to remove ``node``, seen through identities removed before it."""
    tensors: dict[int, str] = {}
    after: list[str] = []
    for index, (source, source_index) in enumerate(editor.data_inputs(node)):
        if source in earlier:
            tensors[index] = earlier[source].tensors[source_index]
            after.extend(earlier[source].after)
        else:
            tensors[index] = tensor_ref(source, source_index)
    for source in editor.control_inputs(node):
        after.extend(earlier[source].control_replacement if source in earlier else [control_ref(source)])
    after = list(dict.fromkeys(after))
    producers = [control_ref(parse_ref(ref)[0]) for ref in tensors.values()]
    return Splice(tensors, tuple(after), tuple(dict.fromkeys([*producers, *after])))


def _take_over_producer(editor: GraphEditor, node: Any) -> None:
    """Fold a signature-output ``Identity`` and its producer into one node
    under the identity's name (see the module docstring)."""
    if len(editor.data_inputs(node)) != 1:
        return
    source, index = editor.data_inputs(node)[0]
    if index != 0 or source not in editor or source in editor.protected:
        return
    producer = editor.node(source)
    if [c.name for c in editor.consumers(source)] != [node.name] or producer.op in PLACEHOLDER_OPS:
        return
    controls = [control_ref(c) for c in editor.control_inputs(node)]
    attrs = {key: value for key, value in producer.attr.items()}
    editor.rewrite(node, producer.op, [*producer.input, *controls], attrs)
    node.device = producer.device
    editor.remove(source)
