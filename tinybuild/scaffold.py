"""``tinybuild new-plugin NAME``: write a plugin package whose tests pass as generated.

The package has the ``tinybuild`` entry point in its pyproject, one step type
(``NAME-scale``: keras-model -> keras-model) and one graph pass
(``NAME-bypass-identity``), and tests of both written with the fixtures of
:mod:`tinybuild.pytest_plugin`. It is the worked example of ``docs/plugins.md``.
Templates are ``string.Template`` (``$name``), so nothing beyond the standard
library is needed.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from .errors import UsageError

NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
RESERVED = {"tinybuild", "tinybuild_plugins", "test", "tests"}

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$name"
version = "0.1.0"
description = "tinybuild plugin: step type $step and graph pass $graph_pass"
requires-python = ">=3.11"
dependencies = ["tinybuild"]

[project.optional-dependencies]
test = ["pytest>=8"]

# tinybuild finds plugins through this entry-point group; the name is the one
# --disable-plugin and `tinybuild plugins` use.
[project.entry-points.tinybuild]
$name = "$module.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

README = '''\
# $name

A [tinybuild](https://github.com/) plugin with one step type and one graph pass:

| name | kind | what it does |
|---|---|---|
| `$step` | step type, keras-model → keras-model | multiplies a Dense/Conv layer's kernel and bias by `factor` (temperature scaling of the logits when it is the last, linear layer) |
| `$graph_pass` | graph pass (exact) | bypasses `Identity` nodes that are not signature inputs or outputs |

    pip install -e .            # registers the plugin (entry point group "tinybuild")
    tinybuild plugins           # lists $name, $step and $graph_pass
    pytest                      # uses tinybuild's fixtures: tb, tb_dataset, tb_keras_model, tb_graphdef

In a recipe:

```toml
[steps.cool]
use = "$step"
input = "train"
factor = 0.5

[steps.lean]
use = "graph-optimize"
input = "frozen"                          # a graph-freeze step
passes = ["$graph_pass", "remove-dead"]   # a plugin's pass runs only when named
```
'''

INIT = '''\
"""tinybuild plugin $name (registered in pyproject.toml, entry point group "tinybuild")."""
'''

PLUGIN = '''\
"""The step type ``$step`` and the graph pass ``$graph_pass``.

This module is imported by every ``tinybuild`` command, including fully
cached builds, so it imports only tinybuild.api and pydantic at top level:
TensorFlow and NumPy are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field

from tinybuild.api import Artifact, GraphPass, Kind, Params, StepContext, StepError, StepType, hookimpl
from tinybuild_plugins.sdk.graph_edit import GraphEditor, graph_pass


# -- the step type ------------------------------------------------------------


class ScaleParams(Params):
    """Keys of a ``[steps.x]`` table with ``use = "$step"`` (besides use/input)."""

    factor: float = Field(1.0, gt=0, le=100, description="multiply the layer's kernel and bias by this")
    layer: str | None = Field(None, description="layer to scale; default: the last layer with a kernel")


def run_scale(ctx: StepContext, inputs: Sequence[Artifact], params: ScaleParams) -> dict[str, Any]:
    """``inputs`` holds one artifact (arity (1, 1)): the recipe's ``input = "..."`` step."""
    from tinybuild_plugins.sdk import load_keras_model, save_keras_model

    model = load_keras_model(inputs[0])
    with_kernel = [layer for layer in model.layers if any("kernel" in w.name for w in layer.weights)]
    if params.layer is None:
        if not with_kernel:
            raise StepError(f"step '{ctx.step}': the model of '{inputs[0].step}' has no layer with a kernel")
        layer = with_kernel[-1]
    else:
        names = [layer.name for layer in model.layers]
        if params.layer not in names:
            raise StepError(f"step '{ctx.step}': no layer named '{params.layer}' in the model of "
                            f"'{inputs[0].step}'; its layers: {', '.join(names)}")
        layer = model.get_layer(params.layer)
    layer.set_weights([w * params.factor for w in layer.get_weights()])
    save_keras_model(model, ctx.out_dir, meta={"optimization": "$step"})
    ctx.log(f"scaled layer {layer.name} by {params.factor:g}")
    return {"layer": layer.name, "factor": params.factor}


SCALE = StepType(
    name="$step",
    version="0.1",                       # bump it when the output for the same inputs changes
    produces=Kind.KERAS_MODEL,
    consumes=(Kind.KERAS_MODEL,),        # checked at plan time
    arity=(1, 1),                        # exactly one input
    run=run_scale,
    params=ScaleParams,
    toolchain=("tensorflow", "tf-keras"),  # their versions enter the cache key
    uses_names=False,                    # the output does not depend on step names
    description="multiply a layer's kernel and bias by a factor (temperature scaling of logits)",
)


# -- the graph pass -----------------------------------------------------------


@graph_pass
def bypass_identity(editor: GraphEditor) -> None:
    """Point the readers of every unprotected ``Identity`` at its input, then
    delete it. ``graph_pass`` makes this a pure ``apply(graph) -> Graph`` that
    works on a copy and leaves graphs it does not understand alone."""
    for node in editor.topological_order():
        if node.op == "Identity" and node.name not in editor.protected and len(editor.data_inputs(node)) == 1:
            editor.bypass(node, node.input[0])
            editor.remove(node.name)


BYPASS_IDENTITY = GraphPass(
    name="$graph_pass",
    version="0.1",
    exact=True,  # outputs unchanged to 1e-6; graph-optimize verifies it on sample inputs
    apply=bypass_identity,
    description="bypass Identity nodes that are not signature inputs or outputs",
)


# -- registration (hooks) -------------------------------------------------------


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [SCALE]


@hookimpl
def tinybuild_graph_passes() -> list[GraphPass]:
    return [BYPASS_IDENTITY]
'''

TEST_STEP = '''\
"""Tests of the step type $step, with tinybuild's pytest fixtures.

``tb`` runs step types and checks keys and errors; ``tb_dataset`` and
``tb_keras_model`` are a tiny dataset and a tiny trained model (seconds).
"""

import numpy as np

from $module.plugin import SCALE


def logits(model_artifact, dataset_artifact):
    from tinybuild_plugins.sdk import load_dataset, load_keras_model

    x = load_dataset(dataset_artifact).x["val"]
    return load_keras_model(model_artifact).predict(x, verbose=0)


def test_scales_the_logits(tb, tb_dataset, tb_keras_model):
    out = tb.run(SCALE, [tb_keras_model], {"factor": 0.5})
    before, after = logits(tb_keras_model, tb_dataset), logits(out, tb_dataset)
    np.testing.assert_allclose(after, before * 0.5, rtol=1e-5, atol=1e-6)
    assert out.metrics == {"layer": "logits", "factor": 0.5}
    from tinybuild_plugins.sdk import read_model_meta

    assert read_model_meta(out)["optimization"] == "$step"


def test_same_inputs_give_the_same_bytes(tb, tb_keras_model):
    a = tb.run(SCALE, [tb_keras_model], {"factor": 2.0})
    b = tb.run(SCALE, [tb_keras_model], {"factor": 2.0})
    assert a.digest == b.digest  # what makes early cutoff work


def test_cache_key_follows_the_params(tb, tb_keras_model):
    tb.assert_key_sensitive(SCALE, {"factor": 0.5}, {"factor": 0.25}, {"layer": "logits"}, inputs=[tb_keras_model])
    tb.assert_key_insensitive(SCALE, {}, {"factor": 1.0})  # a default written out


def test_errors_name_the_problem(tb, tb_keras_model):
    tb.assert_step_error(SCALE, [tb_keras_model], {"layer": "nope"}, match="no layer named 'nope'")
    tb.assert_params_error(SCALE, {"factor": 0}, key="factor", match="greater than 0")
    tb.assert_params_error(SCALE, {"facter": 2}, key="facter", match="did you mean 'factor'")
    tb.assert_params_error(SCALE, {"factor": "2"}, key="factor", match="remove the quotes")
'''

TEST_PASS = '''\
"""Tests of the graph pass $graph_pass on a tiny frozen model (``tb_graphdef``)."""

from $module.plugin import BYPASS_IDENTITY, bypass_identity


def ops(graph):
    return [node.op for node in graph.graph_def.node]


def test_removes_identities_and_keeps_the_signature(tb, tb_graphdef):
    graph = tb.graph(tb_graphdef)
    before = ops(graph)
    after = bypass_identity(graph)
    assert ops(after).count("Identity") < before.count("Identity")
    assert (after.inputs, after.outputs) == (graph.inputs, graph.outputs)
    names = {node.name for node in after.graph_def.node}
    assert all(tensor.split(":")[0] in names for tensor in (*after.inputs, *after.outputs))
    assert ops(graph) == before  # pure: the input graph is untouched
    assert bypass_identity(after).serialize() == after.serialize()  # idempotent


def test_graph_optimize_applies_and_verifies_it(tb, tb_graphdef, tb_dataset):
    optimize = tb.step_type("graph-optimize")
    passes = {**tb.passes, BYPASS_IDENTITY.name: BYPASS_IDENTITY}
    out = tb.run(optimize, [tb_graphdef], {"passes": [BYPASS_IDENTITY.name]}, dataset=tb_dataset, passes=passes)
    assert out.metrics["applied"] == [BYPASS_IDENTITY.name]
    assert out.metrics["nodes_after"] < out.metrics["nodes_before"]
    assert out.metrics["verification"]["passed"] and out.metrics["verification"]["max_abs_diff"] <= 1e-6


def test_a_new_pass_version_reruns_the_step(tb, tb_graphdef):
    import dataclasses

    optimize = tb.step_type("graph-optimize")
    params = {"passes": [BYPASS_IDENTITY.name]}
    old = {**tb.passes, BYPASS_IDENTITY.name: BYPASS_IDENTITY}
    new = {**old, BYPASS_IDENTITY.name: dataclasses.replace(BYPASS_IDENTITY, version="0.2")}
    from tinybuild.testing import key_reasons

    reasons = key_reasons(optimize, params, params, [tb_graphdef], passes=old, new_passes=new)
    assert reasons == ["pass $graph_pass 0.1 → 0.2"]
'''

TEST_REGISTERED = '''\
"""The plugin is registered (installed with pip, or named in TINYBUILD_PLUGINS)
and cheap to import: every tinybuild command imports it, cached builds too."""

import subprocess
import sys


def test_importing_the_plugin_imports_no_tensorflow():
    code = "import sys, $module.plugin; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'numpy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", "import TensorFlow and NumPy inside functions, not at module top"


def test_tinybuild_finds_the_plugin(tb):
    assert tb.step_type("$step").name == "$step"
    assert "$graph_pass" in tb.passes


def test_an_unknown_pass_fails_at_plan_time(tb):
    optimize = tb.step_type("graph-optimize")
    tb.assert_params_error(optimize, {"passes": ["$graph_pass", "bypass-identiy"]}, key="passes[1]",
                           match="unknown graph pass")
'''

FILES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "src/$module/__init__.py": INIT,
    "src/$module/plugin.py": PLUGIN,
    "tests/test_step.py": TEST_STEP,
    "tests/test_pass.py": TEST_PASS,
    "tests/test_registered.py": TEST_REGISTERED,
}


def names_for(name: str) -> dict[str, str]:
    """Template values: distribution/entry-point name, module, step type, pass."""
    if not NAME.match(name):
        raise UsageError(f"new-plugin: '{name}' is not a valid plugin name; use lowercase letters, digits and "
                         "single dashes, starting with a letter (e.g. acme or acme-tools)")
    module = name.replace("-", "_")
    if keyword.iskeyword(module) or module in RESERVED:
        raise UsageError(f"new-plugin: '{name}' is reserved; pick another name (e.g. {name}-plugin)")
    return {"name": name, "module": module, "step": f"{name}-scale", "graph_pass": f"{name}-bypass-identity"}


def _taken(values: dict[str, str]) -> str | None:
    """What an installed plugin already calls by one of the package's names,
    or None. A package named after an installed plugin (entry point group
    "tinybuild") clashes with it at load time, and one whose step type or pass
    already exists is shadowed: either way its generated tests fail, so the
    name is refused before anything is written."""
    from .plugins import load_plugins

    _, registry = load_plugins(tolerant=True)  # a broken plugin must not hide the names of the others
    installed = set(registry.plugins) | set(registry.broken) | set(registry.disabled)
    if values["name"] in installed:
        return f"an installed plugin is named '{values['name']}'"
    for kind, names in (("step type", registry.step_types), ("graph pass", registry.passes)):
        for key in ("name", "step", "graph_pass"):
            if values[key] in names:
                return f"the {kind} '{values[key]}' already exists"
    return None


def write_plugin(name: str, parent: Path) -> Path:
    """Write the package into ``parent/name`` and return that folder. Refuses
    names an installed plugin already uses, and to write into an existing
    non-empty folder (nothing is overwritten)."""
    values = names_for(name)
    clash = _taken(values)
    if clash:
        raise UsageError(f"new-plugin: '{name}' is taken: {clash} (see `tinybuild plugins`); "
                         f"pick a name of your own (e.g. my-{name} or acme-{name})")
    root = Path(parent) / name
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"new-plugin: {root} already exists and is not empty; choose another --dir or name")
    try:
        for rel, text in FILES.items():
            path = root / Template(rel).substitute(values)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(text).substitute(values), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"new-plugin: cannot write {exc.filename or root}: {exc.strerror or exc}; "
                         "choose a writable --dir") from None
    return root
