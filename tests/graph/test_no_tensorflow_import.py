"""Planning imports every plugin module; none of ours may pull in TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap

MODULES = ["graph.steps", "graph.passes", "sdk.graph_edit", "sdk.graphdef", "sdk.tfgraph", "graph.freeze",
           "graph.optimize", "graph.verify", "graph.identity", "graph.noop", "graph.constfold", "graph.dead",
           "graph.control_edges", "graph.batchnorm", "graph.arithmetic", "graph.affine"]


def test_importing_and_registering_graph_plugins_does_not_import_tensorflow():
    script = textwrap.dedent(f"""
        import importlib, sys
        for name in {MODULES!r}:
            importlib.import_module("tinybuild_plugins." + name)
        from tinybuild_plugins.graph import passes, steps
        registered = passes.tinybuild_graph_passes()
        step_types = steps.tinybuild_step_types()
        extras = step_types[1].key_extras(steps.OptimizeParams(), {{p.name: p for p in registered}})
        loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
        print(len(registered), len(step_types), len(extras["graph_passes"]), loaded)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "8 2 6 []"
