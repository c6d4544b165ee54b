"""``tinybuild schema`` checked with a real validator (jsonschema, Draft 2020-12).

Every example recipe is valid; a broken one gets one error that names the bad
key at its path (step tables are discriminated on ``use``), and the loader
rejects exactly what the schema rejects.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest

from tinybuild import cli
from tinybuild.errors import RecipeError
from tinybuild.plugins import load_plugins
from tinybuild.recipe import load_recipe
from tinybuild.resolve import resolve_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted([*(ROOT / "recipes").glob("*.toml"), *(ROOT / "tests" / "plugins" / "recipes").glob("*.toml")])
MNIST_CNN = Path(__file__).resolve().parents[2] / "recipes" / "mnist_cnn.toml"


@pytest.fixture(scope="module")
def registry():
    return load_plugins(environ={})[1]  # the installed (built-in) plugins only


@pytest.fixture(scope="module")
def schema(registry):
    from tinybuild.schema import recipe_schema

    return recipe_schema(registry)


@pytest.fixture(scope="module")
def validator(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_command_prints_the_schema(capsys, monkeypatch):
    monkeypatch.delenv("TINYBUILD_PLUGINS", raising=False)
    assert cli.main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$id"].startswith("urn:tinybuild:recipe-schema:")
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_top_level_tables_are_described_in_plain_text(schema):
    for table in ("recipe", "target", "dataset", "model", "steps"):
        description = schema["properties"][table]["description"]
        assert len(description) > 30 and "``" not in description and ":class:" not in description
    texts = []

    def walk(node):
        if isinstance(node, dict):
            texts.extend(v for k, v in node.items() if k == "description" and isinstance(v, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    assert texts and not [t for t in texts if "``" in t or ":class:`" in t]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_recipes_are_valid(path, validator):
    errors = list(validator.iter_errors(tomllib.loads(path.read_text())))
    assert not errors, [e.message for e in errors]


def broken(edit: tuple[str, str]) -> dict:
    text = MNIST_CNN.read_text()
    old, new = edit
    assert old in text
    return tomllib.loads(text.replace(old, new, 1))


CASES = {
    # name: (edit of mnist_cnn.toml, JSON path of the error, words the error must contain)
    "misspelled-step-key": (("[steps.train]\nuse = \"train\"\n", "[steps.train]\nuse = \"train\"\nepocs = 2\n"),
                            ["steps", "train"], ["'epocs'"]),
    "quoted-number-in-target": (("flash_kb = 32", 'flash_kb = "32"'), ["target", "flash_kb"], ["'32'", "number"]),
    "unknown-step-type": (("[steps.train]\nuse = \"train\"", "[steps.train]\nuse = \"trian\""),
                          ["steps", "train", "use"], ["'trian'"]),
    "misspelled-recipe-key": (("[recipe]\n", "[recipe]\nsed = 1\n"), ["recipe"], ["'sed'"]),
    "misspelled-dataset-key": (("[dataset]\nuse = \"idx\"\n", "[dataset]\nuse = \"idx\"\nlimt = 5\n"),
                               ["dataset"], ["'limt'"]),
}


@pytest.mark.parametrize("name", CASES)
def test_broken_recipe_error_names_the_key(name, validator):
    edit, path, words = CASES[name]
    errors = list(validator.iter_errors(broken(edit)))
    assert len(errors) == 1, [e.message for e in errors]  # one mistake, one error
    error = jsonschema.exceptions.best_match(errors)
    assert error is not None, f"{name}: the schema accepts it"
    assert list(error.absolute_path) == path, (list(error.absolute_path), error.message)
    for word in words:
        assert word in error.message, error.message
    # the error is the key, not a list of every step type the table does not match
    assert "is not valid under any of the given schemas" not in error.message


@pytest.mark.parametrize("name", CASES)
def test_the_loader_rejects_what_the_schema_rejects(name, registry, tmp_path):
    edit, path, _ = CASES[name]
    old, new = edit
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(MNIST_CNN.read_text().replace(old, new, 1))
    with pytest.raises(RecipeError) as info:
        resolve_recipe(load_recipe(recipe), registry)
    assert ".".join(path[:2]) in str(info.value)


def test_a_step_table_takes_input_or_inputs_not_both(validator):
    data = broken(("[steps.train]\nuse = \"train\"\n", "[steps.train]\nuse = \"train\"\ninput = \"model\"\ninputs = [\"model\"]\n"))
    assert list(validator.iter_errors(data))


SWEEP_CASES = {
    # a matrix of values the params accept is valid; a bad one is an error at the matrix entry
    "ok": ("matrix = { final_sparsity = [0.5, 0.7] }", None),
    "unknown-param": ("matrix = { final_sparsty = [0.5] }", ["steps", "pruned", "matrix"]),
    "empty-list": ("matrix = { final_sparsity = [] }", ["steps", "pruned", "matrix", "final_sparsity"]),
    "not-a-list": ("matrix = { final_sparsity = 0.5 }", ["steps", "pruned", "matrix", "final_sparsity"]),
    "value-out-of-range": ("matrix = { final_sparsity = [0.5, 1.5] }", ["steps", "pruned", "matrix", "final_sparsity", 1]),
}


@pytest.mark.parametrize("name", SWEEP_CASES)
def test_a_step_table_may_declare_a_matrix(name, validator, registry, tmp_path):
    line, path = SWEEP_CASES[name]
    text = MNIST_CNN.read_text()
    assert "final_sparsity = 0.8\n" in text
    text = text.replace("final_sparsity = 0.8\n", line + "\n", 1)
    # the sweep renames the pruned variants: the report's name lists would (rightly) fail the plan
    text = re.sub(r"(?m)^(gate|side_by_side) = .*\n", "", text)
    errors = list(validator.iter_errors(tomllib.loads(text)))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    if path is None:
        assert not errors, [e.message for e in errors]
        assert "pruned-final_sparsity_0p7" in resolve_recipe(load_recipe(recipe), registry)
        return
    error = jsonschema.exceptions.best_match(errors)
    assert error is not None and list(error.absolute_path) == path, (error and list(error.absolute_path))
    with pytest.raises(RecipeError) as info:  # the loader agrees
        resolve_recipe(load_recipe(recipe), registry)
    where = ".".join(str(p) for p in path[:4]) + (f"[{path[4]}]" if len(path) > 4 else "")
    assert f"{where}" in str(info.value)
