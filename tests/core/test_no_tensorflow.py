"""Planning and cached builds must never import TensorFlow (it costs ~4 s), nor
the report's matplotlib and jinja2, nor NumPy (plugin modules name it at their
top through a lazy stand-in, ``tinybuild_plugins.sdk.lazy``); a cached build
and ``plan`` do not import networkx either (the run order comes from graphlib).

Runs in a fresh interpreter with every installed plugin enabled, built-ins
included, so a plugin that imports TensorFlow at module top fails here.
Both the normal path and the no-op fast path are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from toyenv import HERE, TOY_RECIPE

HEAVY = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "ai_edge_litert", "matplotlib", "jinja2",
         "numpy", "scipy")
#: only walking the DAG needs networkx (``graph``, ``--only``, a failure's downstream)
GRAPH = ("networkx",)

SCRIPT = """
import json, sys
from tinybuild.cli import main
recipe, cache, mode = sys.argv[1:4]
if mode == "cached":
    codes = [main(["build", recipe, "--plain", "--cache-dir", cache]), main(["plan", recipe, "--cache-dir", cache])]
    heavy = HEAVY + GRAPH
else:
    codes = [main(["plugins"]), main(["schema"]), main(["graph", recipe, "--cache-dir", cache])]
    heavy = HEAVY
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
print(json.dumps({"codes": codes, "heavy": loaded}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY)).replace("GRAPH", repr(GRAPH))


def run_cli(tmp_path, mode: str, fast: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
    env.update({"TINYBUILD_PLUGINS": "toy=toy_plugin", "PYTHONPATH": str(HERE)})
    if not fast:
        env["TINYBUILD_NO_FASTPATH"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "recipe.toml"), str(tmp_path / "cache"), mode],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_cached_build_plan_and_listings_import_no_tensorflow(tmp_path):
    (tmp_path / "numbers.txt").write_text("1 2 3\n")
    (tmp_path / "recipe.toml").write_text(TOY_RECIPE)
    first = run_cli(tmp_path, "cached", fast=False)  # builds the toy steps with built-ins loaded
    assert first["codes"] == [0, 0]
    for fast in (False, True):
        result = run_cli(tmp_path, "cached", fast=fast)
        assert result == {"codes": [0, 0], "heavy": []}
    assert run_cli(tmp_path, "listings", fast=False) == {"codes": [0, 0, 0], "heavy": []}


def test_every_plugin_module_imports_without_numpy():
    """Not only the registration modules: every module under plugins/ names
    NumPy lazily, so whatever a registration module comes to import stays free."""
    script = (
        "import importlib, json, pkgutil, sys, tinybuild_plugins\n"
        "names = [m.name for m in pkgutil.walk_packages(tinybuild_plugins.__path__, 'tinybuild_plugins.')]\n"
        "for name in names: importlib.import_module(name)\n"
        f"print(json.dumps([len(names), sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    count, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert count > 40 and heavy == []
