"""GraphDef plumbing shared by every pass: tensor references, the ``Graph``
wrapper the passes receive, and ``GraphEditor``, the one place that rewires
edges.

Why a wrapper and not a bare GraphDef: a GraphDef does not say which tensors
are the model's inputs and outputs, yet a pass must never remove or rename
them (``remove-dead`` would delete everything, ``remove-identity`` would
delete the ``Identity`` that *is* the output). ``GraphPass.apply`` is typed
``Any`` precisely so that it can take a :class:`Graph` -- the GraphDef plus
the signature's tensor names -- and return a new one. The nodes behind
``inputs`` and ``outputs`` are *protected*: passes may rewire around them but
never delete or rename them.

Why an editor: every pass ends up doing the same three risky things --
rerouting a node's consumers to another tensor (keeping control dependencies
so execution order is preserved), deleting nodes that lost their consumers,
and adding constants. Doing them in one audited place keeps each pass a few
lines of pattern matching. The editor works on a private copy, so ``apply``
stays pure: the input proto is never mutated (the optimizer checks this).

This module never imports TensorFlow at top level; the few helpers that need
the op registry import it lazily.
"""

from __future__ import annotations

import dataclasses
import functools
import graphlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

#: index used by :func:`parse_ref` for a control input (``^node``)
CONTROL = -1

#: ops whose semantics involve sub-graphs, frames or function calls: no pass
#: here reasons about them, so a graph holding any is left untouched.
CONTROL_FLOW_OPS = frozenset({
    "While", "StatelessWhile", "If", "StatelessIf", "Case", "StatelessCase",
    "PartitionedCall", "StatefulPartitionedCall", "For", "RemoteCall",
    "Enter", "RefEnter", "Exit", "RefExit", "Switch", "RefSwitch", "Merge", "RefMerge",
    "NextIteration", "RefNextIteration", "LoopCond", "ControlTrigger",
})

#: ops that are part of the graph's interface rather than its computation
PLACEHOLDER_OPS = frozenset({"Placeholder", "PlaceholderV2"})


# --------------------------------------------------------------------------
# Tensor references: "node", "node:1", "^node"
# --------------------------------------------------------------------------


def parse_ref(ref: str) -> tuple[str, int]:
    """``"a"`` -> ``("a", 0)``, ``"a:2"`` -> ``("a", 2)``, ``"^a"`` -> ``("a", CONTROL)``."""
    if ref.startswith("^"):
        return ref[1:], CONTROL
    name, sep, index = ref.rpartition(":")
    if sep and index.isdigit():
        return name, int(index)
    return ref, 0


def tensor_ref(node: str, index: int = 0) -> str:
    """The input string a NodeDef uses for output ``index`` of ``node``."""
    return node if index == 0 else f"{node}:{index}"


def control_ref(node: str) -> str:
    return f"^{node}"


def tensor_name(ref: str) -> str:
    """Canonical ``node:index`` form (what signature.json stores)."""
    node, index = parse_ref(ref)
    return f"{node}:{index}"


def op_counts(graph_def: Any) -> dict[str, int]:
    """Node count per op type, sorted by op name (stable for metrics)."""
    return dict(sorted(Counter(node.op for node in graph_def.node).items()))


# --------------------------------------------------------------------------
# The object passes receive and return
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """A frozen GraphDef plus the names of the tensors that must survive.

    ``inputs``/``outputs`` are tensor names (``"x:0"``, ``"Identity:0"``) as in
    signature.json. ``skipped`` is set by a pass that declined to touch the
    graph, with the reason (``"graph has control flow (While)"``); the
    optimizer records it in its metrics. Treat ``graph_def`` as immutable.
    """

    graph_def: Any
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    skipped: str | None = None

    @classmethod
    def wrap(cls, graph: Any) -> "Graph":
        """Accept a :class:`Graph` or a bare GraphDef.

        A bare GraphDef has no signature, so its Placeholders are taken as
        inputs and its sink nodes (no consumers) as outputs: nothing that
        could be an output is ever removed.
        """
        if isinstance(graph, Graph):
            return graph
        consumed = {parse_ref(ref)[0] for node in graph.node for ref in node.input}
        inputs = tuple(f"{n.name}:0" for n in graph.node if n.op in PLACEHOLDER_OPS)
        outputs = tuple(f"{n.name}:0" for n in graph.node if n.name not in consumed and n.op not in PLACEHOLDER_OPS)
        return cls(graph, inputs, outputs)

    @classmethod
    def coerce(cls, result: Any, like: "Graph") -> "Graph":
        """A pass result as a Graph; a bare GraphDef keeps ``like``'s signature."""
        if isinstance(result, Graph):
            return result
        return cls(result, like.inputs, like.outputs)

    @property
    def protected_nodes(self) -> frozenset[str]:
        return frozenset(parse_ref(t)[0] for t in (*self.inputs, *self.outputs))

    def with_graph_def(self, graph_def: Any) -> "Graph":
        return dataclasses.replace(self, graph_def=graph_def, skipped=None)

    def serialize(self) -> bytes:
        return self.graph_def.SerializeToString(deterministic=True)


# --------------------------------------------------------------------------
# What passes refuse to touch
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def op_is_stateful(op: str) -> bool | None:
    """Whether TensorFlow registers ``op`` as stateful; None for unknown ops."""
    from tinybuild_plugins.sdk import tf as _tf

    _tf.tensorflow()
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(op)
    return None if op_def is None else bool(op_def.is_stateful)


def unsupported_reason(graph_def: Any) -> str | None:
    """Why the built-in passes must leave this graph alone, or None.

    The passes reason about plain dataflow graphs of stateless ops, which is
    what freezing a Keras model gives. Control flow (functional or v1),
    function libraries, variables and other stateful ops,
    ``PlaceholderWithDefault`` (a feedable constant) and ops TensorFlow does
    not know all change what "same outputs" means, so rather than risk a
    subtly wrong rewrite the whole graph is passed through unchanged.
    """
    ops = sorted({node.op for node in graph_def.node})
    flow = [op for op in ops if op in CONTROL_FLOW_OPS]
    if flow:
        return f"graph has control flow ({', '.join(flow)})"
    if len(graph_def.library.function):
        return f"graph has a function library ({len(graph_def.library.function)} functions)"
    if "PlaceholderWithDefault" in ops:
        return "graph has PlaceholderWithDefault (a feedable constant)"
    unknown = [op for op in ops if op_is_stateful(op) is None]
    if unknown:
        return f"graph has ops TensorFlow does not register ({', '.join(unknown)})"
    stateful = [op for op in ops if op_is_stateful(op)]
    if stateful:
        return f"graph has stateful ops ({', '.join(stateful)})"
    return None


# --------------------------------------------------------------------------
# The editor
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Splice:
    """How to remove a pass-through node: output index -> replacement ref,
    control refs its data readers must now wait for, and what replaces a
    control dependency on it."""

    tensors: Mapping[int, str]
    after: tuple[str, ...]
    control_replacement: tuple[str, ...]


class GraphEditor:
    """A private, mutable copy of a graph with a consumer index.

    Node protos are edited in place on the copy; removed nodes are only
    marked, and :meth:`graph_def` builds the result in the original node
    order (new nodes last), so outputs are deterministic.
    """

    def __init__(self, graph: Graph) -> None:
        source = graph.graph_def
        self._graph_def = type(source)()
        self._graph_def.CopyFrom(source)
        self.protected = graph.protected_nodes
        self._nodes: dict[str, Any] = {node.name: node for node in self._graph_def.node}
        self._removed: set[str] = set()
        self._consumers: dict[str, dict[str, None]] = {}  # insertion-ordered sets
        for node in self._graph_def.node:
            for ref in node.input:
                self._consumers.setdefault(parse_ref(ref)[0], {})[node.name] = None
        self.edits = 0

    @property
    def changed(self) -> bool:
        return self.edits > 0

    # -- reading -----------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self._nodes and name not in self._removed

    def node(self, name: str) -> Any:
        if name not in self:
            raise KeyError(f"no node named {name!r}")
        return self._nodes[name]

    def nodes(self) -> list[Any]:
        """Live nodes in graph order (a snapshot: safe to edit while iterating)."""
        return [n for n in self._graph_def.node if n.name not in self._removed]

    def consumers(self, name: str) -> list[Any]:
        return [self._nodes[c] for c in self._consumers.get(name, {}) if c in self]

    def data_inputs(self, node: Any) -> list[tuple[str, int]]:
        return [parse_ref(ref) for ref in node.input if not ref.startswith("^")]

    def control_inputs(self, node: Any) -> list[str]:
        return [ref[1:] for ref in node.input if ref.startswith("^")]

    def constant(self, ref: str) -> Any:
        """The NumPy value behind ``ref`` if it is a ``Const`` (possibly seen
        through ``Identity`` nodes), else None."""
        from tinybuild_plugins.sdk.tfgraph import const_array

        name, index = parse_ref(ref)
        while name in self and index == 0:
            node = self._nodes[name]
            if node.op == "Const":
                return const_array(node)
            if node.op != "Identity":
                return None
            name, index = self.data_inputs(node)[0]
        return None

    def uses_output(self, name: str, index: int) -> bool:
        """Whether any live node reads output ``index`` of ``name``."""
        return any(parse_ref(ref) == (name, index) for c in self.consumers(name) for ref in c.input)

    def topological_order(self) -> list[Any]:
        """Live nodes, producers before consumers (ties in graph order)."""
        order = {n.name: i for i, n in enumerate(self.nodes())}
        sorter = graphlib.TopologicalSorter()
        for name in order:
            node = self._nodes[name]
            sorter.add(name, *sorted({parse_ref(r)[0] for r in node.input} & order.keys(), key=order.get))
        return [self._nodes[name] for name in sorter.static_order()]

    # -- writing -----------------------------------------------------------

    def set_inputs(self, node: Any, refs: Iterable[str]) -> None:
        """Replace ``node``'s inputs: data refs keep their order, control refs
        follow them, deduplicated (a node never waits twice for the same one)."""
        refs = list(refs)
        data = [r for r in refs if not r.startswith("^")]
        controls = list(dict.fromkeys(r for r in refs if r.startswith("^") and r[1:] != node.name))
        new = data + controls
        if list(node.input) == new:
            return
        for ref in node.input:
            self._consumers.get(parse_ref(ref)[0], {}).pop(node.name, None)
        del node.input[:]
        node.input.extend(new)
        for ref in new:
            self._consumers.setdefault(parse_ref(ref)[0], {})[node.name] = None
        self.edits += 1

    def reroute(self, name: str, tensors: Mapping[int, str], after: Sequence[str] = (),
                control_replacement: Sequence[str] | None = None) -> None:
        """Point every consumer of ``name`` somewhere else.

        ``tensors`` maps output index -> replacement ref. A consumer that read
        data from ``name`` additionally waits for ``after`` (control refs), so
        an order the removed node imposed is kept. A consumer that waited for
        ``name`` (``^name``) waits for ``control_replacement`` instead (default:
        the producers of the replacement tensors plus ``after``).
        """
        if control_replacement is None:
            producers = [control_ref(parse_ref(t)[0]) for t in tensors.values()]
            control_replacement = [*producers, *after]
        for consumer in self.consumers(name):
            refs: list[str] = []
            waits: list[str] = []
            for ref in consumer.input:
                source, index = parse_ref(ref)
                if source != name:
                    refs.append(ref)
                elif index == CONTROL:
                    waits.extend(control_replacement)
                else:
                    if index not in tensors:
                        raise ValueError(f"cannot reroute {name}:{index} read by {consumer.name}")
                    refs.append(tensors[index])
                    waits.extend(after)
            self.set_inputs(consumer, refs + list(waits))

    def splice_out(self, splices: Mapping[str, "Splice"]) -> None:
        """Remove many pass-through nodes at once, rewriting each consumer a
        single time (rerouting them one by one costs O(k^2) on a node with k
        inputs, such as the frozen-Keras NoOp that waits for every weight).
        Each :class:`Splice` must already be resolved: it may not refer to
        another spliced node."""
        affected = {c.name: c for name in splices for c in self.consumers(name) if c.name not in splices}
        for consumer in affected.values():
            refs: list[str] = []
            waits: list[str] = []
            for ref in consumer.input:
                source, index = parse_ref(ref)
                splice = splices.get(source)
                if splice is None:
                    refs.append(ref)
                elif index == CONTROL:
                    waits.extend(splice.control_replacement)
                else:
                    refs.append(splice.tensors[index])
                    waits.extend(splice.after)
            self.set_inputs(consumer, refs + waits)
        self.remove_all(splices)

    def bypass(self, node: Any, replacement: str) -> None:
        """Make ``node``'s consumers read ``replacement`` (a data ref) instead
        of its output 0, keeping its control dependencies; a protected node
        is instead turned into ``Identity(replacement)`` so its name stays."""
        controls = [control_ref(c) for c in self.control_inputs(node)]
        if node.name in self.protected:
            dtype_key = "T" if "T" in node.attr else "DstT"  # DstT: a no-op Cast
            dtype = type(node.attr[dtype_key])()
            dtype.CopyFrom(node.attr[dtype_key])
            self.rewrite(node, "Identity", [replacement, *controls], {"T": dtype})
            return
        others = [control_ref(p) for p, _ in self.data_inputs(node)]
        self.reroute(node.name, {0: replacement}, after=controls, control_replacement=[*others, *controls])

    def rewrite(self, node: Any, op: str, inputs: Sequence[str], attrs: Mapping[str, Any] | None = None) -> None:
        """Turn ``node`` into a different op in place (its name, and thus every
        reference to it, stays valid). ``attrs`` values are AttrValue protos."""
        self.set_inputs(node, inputs)
        node.op = op
        node.attr.clear()
        for key, value in (attrs or {}).items():
            node.attr[key].CopyFrom(value)
        self.edits += 1

    def add_node(self, base_name: str, op: str, inputs: Sequence[str] = (),
                 attrs: Mapping[str, Any] | None = None, device: str = "") -> Any:
        """Append a new node named ``base_name`` (made unique) and return it."""
        name, suffix = base_name, 1
        while name in self._nodes:
            name, suffix = f"{base_name}_{suffix}", suffix + 1
        node = self._graph_def.node.add()
        node.name, node.op, node.device = name, op, device
        for key, value in (attrs or {}).items():
            node.attr[key].CopyFrom(value)
        self._nodes[name] = node
        self.set_inputs(node, inputs)
        self.edits += 1
        return node

    def remove(self, name: str) -> None:
        """Delete a node nobody reads any more (a bug guard checks that)."""
        if self.consumers(name):
            raise ValueError(f"node {name!r} still has consumers")
        if name in self.protected:
            raise ValueError(f"node {name!r} is a signature input/output")
        node = self._nodes[name]
        for ref in node.input:
            self._consumers.get(parse_ref(ref)[0], {}).pop(name, None)
        self._removed.add(name)
        self.edits += 1

    def remove_all(self, names: Iterable[str]) -> None:
        """Delete a set of nodes that only feed each other (dead code)."""
        names = set(names) - self._removed
        if names & self.protected:
            raise ValueError(f"cannot remove signature nodes {sorted(names & self.protected)}")
        for name in names:
            outside = [c for c in self._consumers.get(name, {}) if c in self and c not in names]
            if outside:
                raise ValueError(f"node {name!r} is still read by {outside[0]!r}")
        for name in names:
            for ref in self._nodes[name].input:
                self._consumers.get(parse_ref(ref)[0], {}).pop(name, None)
        self._removed |= names
        self.edits += bool(names)

    def sweep(self, names: Iterable[str]) -> None:
        """Remove the given nodes if nobody reads them, then their producers
        that became unread, recursively. Used after a rewrite leaves its old
        operands behind; placeholders and protected nodes always stay."""
        work = list(dict.fromkeys(names))
        while work:
            name = work.pop()
            if name not in self or name in self.protected or self._nodes[name].op in PLACEHOLDER_OPS:
                continue
            if self.consumers(name):
                continue
            producers = [parse_ref(ref)[0] for ref in self._nodes[name].input]
            self.remove(name)
            work.extend(producers)

    # -- result --------------------------------------------------------------

    def empty_graph_def(self) -> Any:
        """A new, empty GraphDef of the same proto class and versions."""
        out = type(self._graph_def)()
        out.versions.CopyFrom(self._graph_def.versions)
        return out

    def graph_def(self) -> Any:
        """The edited GraphDef (a new proto), dangling colocation hints dropped."""
        out = self.empty_graph_def()
        out.library.CopyFrom(self._graph_def.library)
        out.node.extend(self.nodes())
        for node in out.node:
            _drop_dangling_colocation(node, self)
        return out


def _drop_dangling_colocation(node: Any, editor: GraphEditor) -> None:
    """``_class: ["loc:@x"]`` naming a removed node makes import_graph_def fail."""
    if "_class" not in node.attr:
        return
    entries = list(node.attr["_class"].list.s)
    kept = [e for e in entries if not e.startswith(b"loc:@") or e[5:].decode() in editor]
    if kept == entries:
        return
    if kept:
        del node.attr["_class"].list.s[:]
        node.attr["_class"].list.s.extend(kept)
    else:
        del node.attr["_class"]


# --------------------------------------------------------------------------
# Turning an editing function into a pure pass
# --------------------------------------------------------------------------

Rewrite = Callable[[GraphEditor], None]


def graph_pass(rewrite: Rewrite) -> Callable[[Any], Graph]:
    """Wrap ``rewrite(editor)`` as a pure ``apply(graph) -> Graph``.

    The wrapper refuses graphs the passes do not understand (returning them
    unchanged with ``skipped`` set), gives the rewrite a private copy, and
    returns the very same GraphDef object when nothing changed.
    """

    @functools.wraps(rewrite)
    def apply(graph: Any) -> Graph:
        graph = Graph.wrap(graph)
        reason = unsupported_reason(graph.graph_def)
        if reason is not None:
            return dataclasses.replace(graph, skipped=reason)
        editor = GraphEditor(graph)
        rewrite(editor)
        if not editor.changed:
            return dataclasses.replace(graph, skipped=None)
        return graph.with_graph_def(editor.graph_def())

    return apply


def repeat_until_stable(step: Callable[[], bool], limit: int = 32) -> None:
    """Call ``step`` until it reports no change (at most ``limit`` times).

    Passes loop internally so that applying them twice equals applying them
    once (idempotence), which the optimizer's fixed point relies on.
    """
    for _ in range(limit):
        if not step():
            return
