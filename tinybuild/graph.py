"""The recipe as a networkx DAG: construction, plan-time checks, rendering.

Nodes are step names (attribute ``step``: the :class:`ResolvedStep`); an edge
``a → b`` means b reads a's artifact. Checks run here, before anything
executes: cycles (naming the steps in them) and artifact kinds (a ``.tflite``
wired into ``prune`` is an error at plan time, not after an hour of training).

A build or ``plan`` only needs the checks and the run order: :func:`checked_order`
gives both with the standard library's ``graphlib``, so the common path
does not pay networkx's import (~0.1 s); the networkx DAG is built when
something walks it (``--only``, a failure's downstream, ``graph``).
"""

from __future__ import annotations

import graphlib
import heapq
from typing import TYPE_CHECKING, Iterable

from .errors import Problem, RecipeError

if TYPE_CHECKING:
    import networkx as nx

    from .resolve import ResolvedStep


def checked_order(steps: dict[str, ResolvedStep], file: str) -> list[str]:
    """The run order (topological, ties broken by recipe order, as
    :func:`run_order`) after the plan-time checks of :func:`build_dag`."""
    position = {name: i for i, name in enumerate(steps)}
    sorter = graphlib.TopologicalSorter({name: step.dependencies for name, step in steps.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError:
        build_dag(steps, file)  # names the cycle exactly as it always has (and raises)
        raise
    problems = _kind_problems(steps)
    if problems:
        raise RecipeError(file, problems)
    ready = [(position.get(n, len(position)), n) for n in sorter.get_ready()]
    heapq.heapify(ready)
    order = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        sorter.done(name)
        for n in sorter.get_ready():
            heapq.heappush(ready, (position.get(n, len(position)), n))
    return order


def build_dag(steps: dict[str, ResolvedStep], file: str) -> nx.DiGraph:
    import networkx as nx

    dag = nx.DiGraph()
    for name, step in steps.items():
        dag.add_node(name, step=step)
    for name, step in steps.items():
        for dep in step.inputs:
            dag.add_edge(dep, name, via="input")
        if step.dataset and step.dataset not in step.inputs:
            dag.add_edge(step.dataset, name, via="dataset")
    problems = _cycle_problems(dag, steps) or _kind_problems(steps)
    if problems:
        raise RecipeError(file, problems)
    return dag


def _cycle_problems(dag: nx.DiGraph, steps: dict[str, ResolvedStep]) -> list[Problem]:
    import networkx as nx

    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        return []
    names = [u for u, _ in cycle]
    loop = " → ".join(names + [names[0]])
    first = steps[names[0]]
    return [Problem(f"{first.key}.{first.spec.inputs_key}", f"steps form a cycle: {loop}",
                    "a step cannot depend on its own output; remove one of these inputs")]


def _kind_problems(steps: dict[str, ResolvedStep]) -> list[Problem]:
    problems = []
    for step in steps.values():
        accepted = step.step_type.consumes
        for i, dep in enumerate(step.inputs):
            produced = steps[dep].step_type.produces
            if accepted and produced not in accepted:
                key = f"{step.key}.{step.spec.inputs_key}"
                if step.spec.inputs_key == "inputs":
                    key += f"[{i}]"
                names = step.step_type.input_names
                role = f" (the {names[i]})" if i < len(names) else ""
                problems.append(Problem(
                    key,
                    f"step '{dep}'{role} produces a {produced} artifact, but step type '{step.step_type.name}' consumes {' or '.join(accepted)}",
                    f"wire '{step.name}' to a step that produces {' or '.join(accepted)}",
                ))
    return problems


def run_order(dag: nx.DiGraph) -> list[str]:
    """Deterministic topological order: ties broken by recipe order."""
    import networkx as nx

    position = {name: i for i, name in enumerate(dag.nodes)}
    return list(nx.lexicographical_topological_sort(dag, key=lambda n: position[n]))


def with_upstream(dag: nx.DiGraph, names: Iterable[str]) -> set[str]:
    import networkx as nx

    selected: set[str] = set()
    for name in names:
        selected.add(name)
        selected |= nx.ancestors(dag, name)
    return selected


def downstream(dag: nx.DiGraph, name: str) -> set[str]:
    import networkx as nx

    return set(nx.descendants(dag, name))


# -- rendering ---------------------------------------------------------------


def _label(step: ResolvedStep) -> str:
    return f"{step.name} ({step.step_type.name} → {step.step_type.produces})"


def _input_edges(dag: nx.DiGraph) -> nx.DiGraph:
    return dag.edge_subgraph([(u, v) for u, v, via in dag.edges(data="via") if via == "input"])


#: Tree levels indented by ``render_text``; deeper levels stay at this column.
MAX_INDENT = 40


def render_text(dag: nx.DiGraph) -> str:
    """An indented tree along input edges; a step with several inputs is
    shown in full once and referenced afterwards (``↑ see above``). Reading
    the dataset is noted on the step rather than drawn as an edge.

    Walked with an explicit stack, not recursion: a chain of thousands of
    steps must not hit Python's recursion limit. Past :data:`MAX_INDENT`
    levels the indentation stops growing, so output stays linear in size."""
    lines: list[str] = []
    seen: set[str] = set()
    order = run_order(dag)
    position = {name: i for i, name in enumerate(order)}
    inputs = _input_edges(dag)
    roots = [name for name in order if name not in inputs or inputs.in_degree(name) == 0]
    # (name, prefix, last sibling?, root?), popped in display order
    stack: list[tuple[str, str, bool, bool]] = [(name, "", True, True) for name in reversed(roots)]
    while stack:
        name, prefix, last, root = stack.pop()
        step = dag.nodes[name]["step"]
        connector = "" if root else ("└── " if last else "├── ")
        if name in seen:
            lines.append(f"{prefix}{connector}{name} ↑ see above")
            continue
        seen.add(name)
        reads = " [reads dataset]" if step.dataset and step.dataset not in step.inputs else ""
        lines.append(f"{prefix}{connector}{_label(step)}{reads}")
        children = sorted(inputs.successors(name), key=position.__getitem__) if name in inputs else []
        deep = len(prefix) >= 4 * MAX_INDENT  # a long chain must not print O(n²) spaces
        child_prefix = prefix if root or deep else prefix + ("    " if last else "│   ")
        for i in reversed(range(len(children))):
            stack.append((children[i], child_prefix, i == len(children) - 1, False))
    return "\n".join(lines)


def render_dot(dag: nx.DiGraph, title: str) -> str:
    lines = [f'digraph "{title}" {{', "  rankdir=LR;", "  node [shape=box, fontname=\"Helvetica\"];"]
    for name in run_order(dag):
        step = dag.nodes[name]["step"]
        lines.append(f'  "{name}" [label="{name}\\n{step.step_type.name} → {step.step_type.produces}"];')
    for u, v, via in dag.edges(data="via"):
        style = " [style=dashed]" if via == "dataset" else ""
        lines.append(f'  "{u}" -> "{v}"{style};')
    lines.append("}")
    return "\n".join(lines)


def render_mermaid(dag: nx.DiGraph) -> str:
    ids = {name: f"s{i}" for i, name in enumerate(run_order(dag))}
    lines = ["flowchart LR"]
    for name, ident in ids.items():
        step = dag.nodes[name]["step"]
        lines.append(f'  {ident}["{name}<br/>{step.step_type.name} → {step.step_type.produces}"]')
    for u, v, via in dag.edges(data="via"):
        arrow = "-.->" if via == "dataset" else "-->"
        lines.append(f"  {ids[u]} {arrow} {ids[v]}")
    return "\n".join(lines)
