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
from tinybuild.api import Kind
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
    # 0 and 0.0 are one integer to both (JSON Schema's uniqueItems, the loader once params are read)
    "repeat-once-read": ("final_sparsity = 0.8\nmatrix = { begin_step = [0, 0.0] }", ["steps", "pruned", "matrix", "begin_step"]),
    "bool-for-int": ("final_sparsity = 0.8\nmatrix = { begin_step = [0, true] }", ["steps", "pruned", "matrix", "begin_step", 1]),
    "table-value": ("final_sparsity = 0.8\nmatrix = { augment = [{ shift = 0.1 }] }", ["steps", "pruned", "matrix", "augment", 0]),
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


# -- numbers and booleans: the loader and the schema agree on every built-in param ----------

#: what a recipe may write where a number or boolean is expected; JSON Schema
#: counts 1.0 as an integer, never true as 1 nor 1 as true
SCALARS = [True, False, 0, 1, 3, 1.0, 3.0, 0.5, 2.5, -1, "1", "true"]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"


def scalar_slots(model) -> list[tuple[str, object, str]]:
    """(field, how to place a scalar there, where below the field it lands)
    for each number/boolean in a params model: the field itself, the items
    of a list or tuple of numbers, each number field of a nested table."""
    import typing

    from pydantic import BaseModel

    from tinybuild.paramsbase import item_annotations, scalar_kinds

    slots = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if scalar_kinds(ann) is not None:
            slots.append((name, lambda v: v, ""))
            continue
        items = item_annotations(ann, 1)
        if items and all(scalar_kinds(a) is not None for a in items):
            count = len(item_annotations(ann, 0)) or 1  # a fixed tuple's length, else one item
            slots.append((name, lambda v, n=count: [v] * n, "["))
            continue
        nested = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        for sub_name, sub in (nested[0].model_fields.items() if nested else ()):
            if scalar_kinds(sub.annotation) is not None:
                slots.append((name, lambda v, s=sub_name: {s: v}, f".{sub_name}"))
    return slots


def test_every_builtin_step_type_has_number_or_boolean_params(registry):
    # the check below must have something to check
    assert sum(len(scalar_slots(st.params)) for st in registry.step_types.values()) > 60


@pytest.mark.parametrize("table", ["recipe", "target", "step"])
def test_the_loader_and_the_schema_agree_on_numbers_and_booleans(table, registry, validator, tmp_path):
    """For every number/boolean param of every built-in step type (and of
    [recipe] and [target]), each value in SCALARS, written plainly and in a
    matrix: what the schema rejects the loader rejects, and a value the loader
    rejects for itself (a problem at the value's own key: its type or range,
    not a check across the table such as split fractions summing to 1) the
    schema rejects too."""
    from tinybuild.recipe import RecipeMeta, Target

    head = '[recipe]\nname = "t"\n'
    cases = []  # (label, recipe text, key of the field, key of the value itself)
    if table in ("recipe", "target"):
        model = RecipeMeta if table == "recipe" else Target
        for name, place, tail in scalar_slots(model):
            for value in SCALARS:
                line = f"{name} = {toml_value(place(value))}\n"
                text = head + line if table == "recipe" else head + f"[target]\n{line}"
                cases.append((f"{table}.{name}={value!r}", text, f"{table}.{name}", f"{table}.{name}{tail}"))
    else:
        for st in sorted(registry.step_types.values(), key=lambda s: s.name):
            section = "dataset" if st.produces == Kind.DATASET else "steps.s"
            for name, place, tail in scalar_slots(st.params):
                for value in SCALARS:
                    written = toml_value(place(value))
                    forms = [(f"{name} = {written}", f"{section}.{name}", tail)]
                    if section != "dataset":
                        forms.append((f"matrix = {{ {name} = [{written}] }}", f"{section}.matrix.{name}", f"[0]{tail}"))
                    for form, key, below in forms:
                        text = head + f'[{section}]\nuse = "{st.name}"\n{form}\n'
                        cases.append((f"{st.name}: {form}", text, key, key + below))
    disagree = []
    recipe = tmp_path / "recipe.toml"
    for label, text, key, own in cases:
        paths = [".".join(map(str, e.absolute_path)) for e in validator.iter_errors(tomllib.loads(text))]
        schema_rejects = any(p == key or p.startswith(key + ".") for p in paths)
        recipe.write_text(text)
        try:
            resolve_recipe(load_recipe(recipe, environ={}), registry)
            problems = []
        except RecipeError as exc:
            problems = [p.key for p in exc.problems]
        loader_rejects = any(k == key or k.startswith((key + ".", key + "[")) for k in problems)
        loader_rejects_value = any(k == own or k.startswith(own) and own.endswith("[") for k in problems)
        if schema_rejects and not loader_rejects:
            disagree.append(f"{label}: the schema rejects it, the loader accepts it")
        if loader_rejects_value and not schema_rejects:
            disagree.append(f"{label}: the loader rejects the value ({problems}), the schema accepts it")
    assert len(cases) >= {"recipe": 12, "target": 6 * 12, "step": 1000}[table]
    assert not disagree, "\n".join(disagree[:40])
