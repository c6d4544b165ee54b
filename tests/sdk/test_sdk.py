"""The plugin SDK (tinybuild_plugins.sdk) and the pytest plugin built on it.

The SDK is the door between plugins: every exported name resolves and is in
the index, importing it costs nothing heavy, built-in plugins import nothing
private from each other, and the artifact readers/writers round-trip real
artifacts (a tflite model converted by the built-in step, run with LiteRT).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tinybuild_plugins.sdk as sdk
from tinybuild.api import StepError

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "tensorflow", "tf_keras", "ai_edge_litert")


def test_sdk_version_is_semver():
    assert re.fullmatch(r"\d+\.\d+\.\d+", sdk.SDK_VERSION)


@pytest.mark.parametrize("name", [n for n in sdk.__all__ if n != "SDK_VERSION"])
def test_every_export_resolves_and_is_indexed(name):
    value = getattr(sdk, name)
    assert value is not None
    module = sdk._WHERE[name]
    assert getattr(__import__(f"tinybuild_plugins.sdk.{module}", fromlist=[name]), name) is value
    assert f"``sdk.{module}``" in sdk.__doc__ and name in sdk.__doc__, f"{name} is missing from the SDK index"
    if callable(value) and not isinstance(value, type):
        assert (value.__doc__ or "").strip(), f"sdk.{name} has no docstring"


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sdk.nope  # noqa: B018


def test_importing_the_sdk_and_pytest_plugin_is_light():
    code = ("import sys, json, tinybuild_plugins.sdk, tinybuild.pytest_plugin; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_pytest_start_up_imports_no_tensorflow(tmp_path):
    """The pytest11 entry point is loaded by every pytest run in the venv."""
    (tmp_path / "test_light.py").write_text(
        "import sys\n"
        "def test_fixtures_are_there_but_lazy(tb, request):\n"
        "    assert 'tb_keras_model' in request.fixturenames or True\n"
        f"    assert not [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}], sorted(sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYBUILD_", "PYTEST_"))}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--fixtures", "test_light.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    for fixture in ("tb ", "tb_dataset", "tb_keras_model", "tb_graphdef"):
        assert fixture in out.stdout, f"fixture {fixture} not registered through pytest11"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_light.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from tinybuild_plugins... import name``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinybuild_plugins"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("tinybuild_plugins")]
    return found


def test_built_in_plugins_import_nothing_private_from_each_other():
    private = []
    for path in sorted((REPO / "plugins").rglob("*.py")):
        for module, name in _imports(path):
            if any(part.startswith("_") for part in module.split(".")) or name.startswith("_"):
                private.append(f"{path.relative_to(REPO)}: from {module} import {name}")
    assert not private, private


def test_metrics_round_trip_and_errors(tmp_path):
    from tinybuild.testing import artifact_from_dir

    sdk.write_metrics(tmp_path, {"b": 1, "a": [0.5, 2]})
    assert (tmp_path / "metrics.json").read_text() == '{\n  "a": [\n    0.5,\n    2\n  ],\n  "b": 1\n}\n'
    assert sdk.read_metrics(artifact_from_dir("ev", "metrics", tmp_path)) == {"a": [0.5, 2], "b": 1}
    with pytest.raises(StepError, match="no NaN"):
        sdk.write_metrics(tmp_path, {"x": float("nan")})
    with pytest.raises(StepError, match="not a metrics artifact"):
        sdk.read_metrics(tmp_path / "elsewhere")
    (tmp_path / "metrics.json").write_text("[1]")
    with pytest.raises(StepError, match="JSON object"):
        sdk.read_metrics(tmp_path)


def test_dataset_and_keras_readers_take_artifacts(tb_dataset, tb_keras_model):
    data = sdk.load_dataset(tb_dataset)
    assert data.input_shape == (8, 8, 1) and data.num_classes == 3
    assert {s: len(data.y[s]) for s in sdk.SPLITS} == {"train": 48, "val": 12, "test": 12}
    assert sdk.load_meta(tb_dataset)["splits"] == {"train": 48, "val": 12, "test": 12}
    meta = sdk.read_model_meta(tb_keras_model)
    assert meta["output"] == "logits" and meta["input_shape"] == [None, 8, 8, 1]


def test_tflite_reader_runs_the_model_like_keras(tb, tb_dataset, tb_keras_model):
    """Converted by the built-in tflite step, read and run through the SDK."""
    import numpy as np

    converted = tb.run(tb.step_type("tflite"), [tb_keras_model], {}, dataset=tb_dataset)
    model = sdk.read_model_bytes(converted)
    assert model[4:8] == b"TFL3"  # the flatbuffer identifier
    x = sdk.load_dataset(tb_dataset).x["val"]
    expected = sdk.load_keras_model(tb_keras_model).predict(x, verbose=0)
    np.testing.assert_allclose(sdk.predict(model, x), expected, rtol=1e-4, atol=1e-4)
    facts = sdk.describe(model)
    assert facts and isinstance(facts, dict)
    with pytest.raises(StepError, match="LiteRT cannot load"):
        sdk.interpreter(b"not a flatbuffer")
    with pytest.raises(StepError, match="not a tflite artifact"):
        sdk.read_model_bytes(tb_dataset)


def test_load_graph_gives_what_a_pass_takes(tb, tb_graphdef):
    graph = sdk.load_graph(tb_graphdef)
    assert isinstance(graph, sdk.Graph)
    assert graph.inputs == ("x:0",) and len(graph.outputs) == 1
    assert sdk.op_counts(graph.graph_def)["Conv2D"] == 1


def test_lazy_module_imports_on_first_attribute_read():
    """Plugin modules name NumPy at their top through this stand-in; the
    import must happen at the first use, and the names then read directly."""
    import sys

    from tinybuild_plugins.sdk.lazy import lazy_module

    sys.modules.pop("colorsys", None)
    colorsys = lazy_module("colorsys")
    assert "colorsys" not in sys.modules
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules
    assert colorsys.__dict__["rgb_to_hsv"] is sys.modules["colorsys"].rgb_to_hsv  # copied: no lookup hook any more
