"""``tinybuild new-plugin``: the generated package's own tests pass as generated,
it registers through its entry point, and a recipe can use what it provides.

The package is never installed into this environment: its tests run in a
subprocess with ``PYTHONPATH=src`` and ``TINYBUILD_PLUGINS=name=module``
(how tinybuild finds a plugin that is not installed), and its wheel is built
into tmp_path to check the entry point pip would install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tinybuild import cli

NAME, MODULE = "acme", "acme"
MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    parent = tmp_path_factory.mktemp("plugins")
    assert cli.main(["new-plugin", NAME, "--dir", str(parent)]) == 0
    return parent / NAME


def plugin_env(package: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYBUILD_", "PYTEST_"))}
    env["PYTHONPATH"] = str(package / "src")
    env["TINYBUILD_PLUGINS"] = f"{NAME}={MODULE}.plugin"
    return env


def test_layout(package):
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", f"src/{MODULE}/__init__.py", f"src/{MODULE}/plugin.py",
                     "tests/test_pass.py", "tests/test_registered.py", "tests/test_step.py"]


def test_generated_tests_pass(package):
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package,
                         env=plugin_env(package), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "10 passed" in run.stdout


def test_wheel_declares_the_entry_point(package, tmp_path):
    copy = tmp_path / "src-copy"
    shutil.copytree(package, copy)  # building writes egg-info and build/ beside the sources
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(copy)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        text = zf.read(entry_points).decode()
        assert f"{MODULE}/plugin.py" in zf.namelist()
    assert "[tinybuild]" in text and f"{NAME} = {MODULE}.plugin" in text


def test_a_recipe_uses_the_plugin(package, tmp_path):
    recipe = tmp_path / "recipe.toml"
    tmp_path.joinpath("cache").mkdir()
    recipe.write_text(f"""\
[recipe]
name = "uses-acme"

[dataset]
use = "idx"
images = "{MNIST}/t10k-images-idx3-ubyte.gz"
labels = "{MNIST}/t10k-labels-idx1-ubyte.gz"
limit = 100

[model]
use = "keras"
architecture = "mlp"

[steps.cool]
use = "{NAME}-scale"
input = "model"
factor = 0.5

[steps.frozen]
use = "graph-freeze"
input = "cool"

[steps.lean]
use = "graph-optimize"
input = "frozen"
passes = ["{NAME}-bypass-identity", "remove-dead"]
""")
    tinybuild = [sys.executable, "-m", "tinybuild"]
    listing = subprocess.run([*tinybuild, "plugins"], env=plugin_env(package), capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert listing.returncode == 0 and f"{NAME}-scale" in listing.stdout and f"{NAME}-bypass-identity" in listing.stdout
    plan = subprocess.run([*tinybuild, "plan", str(recipe)], env=plugin_env(package), capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "0 cached, 5 to run" in plan.stdout
    # editors see the plugin's params: the schema validates the recipe and names a misspelled key
    import jsonschema
    import tomllib

    schema = subprocess.run([*tinybuild, "schema"], env=plugin_env(package), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    validator = jsonschema.Draft202012Validator(json.loads(schema.stdout))
    assert f"step.{NAME}-scale" in validator.schema["$defs"]
    assert not list(validator.iter_errors(tomllib.loads(recipe.read_text())))
    (error,) = validator.iter_errors(tomllib.loads(recipe.read_text().replace("factor = 0.5", "facter = 0.5")))
    assert list(error.absolute_path) == ["steps", "cool"] and "'facter'" in error.message
    recipe.write_text(recipe.read_text().replace(f'"{NAME}-bypass-identity"', f'"{NAME}-bypass-identiy"'))
    plan = subprocess.run([*tinybuild, "plan", str(recipe)], env=plugin_env(package), capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert plan.returncode == 2
    assert f"steps.lean.passes[0]: unknown graph pass '{NAME}-bypass-identiy'" in plan.stderr
    assert f"did you mean '{NAME}-bypass-identity'" in plan.stderr


@pytest.mark.parametrize("name, message", [
    ("Acme", "not a valid plugin name"),
    ("acme_tools", "not a valid plugin name"),
    ("tinybuild", "reserved"),
])
def test_bad_names_are_usage_errors(name, message, tmp_path, capsys):
    assert cli.main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["tflite", "report", "graph-steps", "keras"])
def test_names_of_installed_plugins_and_step_types_are_refused(name, tmp_path, capsys):
    """`new-plugin tflite` used to write a package whose tests failed as
    generated (its step type shadowed, `tinybuild plugins` showing it BROKEN)."""
    assert cli.main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"'{name}' is taken" in err and f"my-{name}" in err
    assert not any(tmp_path.iterdir())


def test_never_overwrites(package, capsys):
    before = (package / "pyproject.toml").read_text()
    assert cli.main(["new-plugin", NAME, "--dir", str(package.parent)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (package / "pyproject.toml").read_text() == before


def test_a_file_in_the_way_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "blocker").write_text("")
    assert cli.main(["new-plugin", NAME, "--dir", str(tmp_path / "blocker")]) == 2
    assert "cannot write" in capsys.readouterr().err
