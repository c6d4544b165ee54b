"""Malformed recipes: each gives a precise message and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from toyenv import TOY_RECIPE

HEAD = '[recipe]\nname = "toy"\n\n[dataset]\nuse = "toy-data"\nfile = "numbers.txt"\n\n[model]\nuse = "toy-model"\n'


def replace(old: str, new: str) -> str:
    assert old in TOY_RECIPE
    return TOY_RECIPE.replace(old, new, 1)


# (id, recipe text, substrings the message must contain)
CASES = [
    ("toml-syntax", '[recipe]\nname = "toy\n', ["recipe.toml:2:", "invalid TOML"]),
    ("toml-bad-table", "[recipe\nname = 1\n", ["recipe.toml:1:", "invalid TOML"]),
    # recipes are TOML 1.0 (tinybuild.tomlparse pins tomli 2.2.1): TOML 1.1's newlines in inline
    # tables and \e escapes are errors, as other TOML 1.0 readers of the recipe would find them
    ("toml11-inline-newline", replace("epochs = 3", "epochs = 3\nschedule = { warmup = 1,\n decay = 0.5 }"),
     ["invalid TOML"]),
    ("toml11-escape", replace("epochs = 3", 'epochs = 3\nnote = "\\e"'), ["invalid TOML"]),
    ("unknown-section", TOY_RECIPE + "\n[stesp.x]\nuse = \"toy-train\"\n", ["stesp: unknown section 'stesp'", "did you mean 'steps'?"]),
    ("missing-recipe-table", '[dataset]\nuse = "toy-data"\nfile = "numbers.txt"\n', ["recipe: missing [recipe] table"]),
    ("missing-name", replace('name = "toy"\n', ""), ["recipe.name: missing required key", "add name = ..."]),
    ("bad-recipe-name", replace('name = "toy"', 'name = "my toy"'), ["recipe.name:", "should match pattern"]),
    ("seed-type", replace("seed = 3", 'seed = "three"'), ["recipe.seed:", "valid integer", "'three'"]),
    ("dotdot-name", replace('name = "toy"', 'name = ".."'), ["recipe.name:", "should match pattern"]),
    ("nan-param", replace("epochs = 3", "epochs = 3\nlearning_rate = nan"), ["steps.train.learning_rate:", "finite number"]),
    ("inf-budget", TOY_RECIPE + "\n[target]\nflash_kb = inf\n", ["target.flash_kb:", "finite number"]),
    ("seed-range", replace("seed = 3", "seed = -1"), ["recipe.seed:", "greater than or equal to 0"]),
    ("unknown-recipe-key", replace("seed = 3", "seed = 3\nsed = 4"), ["recipe.sed: unknown key 'sed'", "did you mean 'seed'?"]),
    ("target-unknown-key", TOY_RECIPE + "\n[target]\nflash = 64\n", ["target.flash: unknown key 'flash'", "did you mean 'flash_kb'?"]),
    ("target-range", TOY_RECIPE + "\n[target]\nmin_accuracy = 1.5\n", ["target.min_accuracy:", "less than or equal to 1"]),
    ("target-runtime", TOY_RECIPE + "\n[target]\nruntime = \"tfml\"\n", ["target.runtime:", "'tflm' or 'litert'"]),
    ("target-margin", TOY_RECIPE + "\n[target]\narena_margin = -0.1\n", ["target.arena_margin:", "greater than or equal to 0"]),
    ("target-arena-typo", TOY_RECIPE + "\n[target]\nmax_arena = 16\n", ["target.max_arena: unknown key", "did you mean 'max_arena_kb'?"]),
    ("unknown-param", replace("epochs = 3", "epoch = 3"), ["steps.train.epoch: unknown key 'epoch'", "did you mean 'epochs'?"]),
    ("nested-unknown-param", replace("epochs = 3", "epochs = 3\nschedule = { warmpu = 2 }"),
     ["steps.train.schedule.warmpu: unknown key 'warmpu'", "did you mean 'warmup'?"]),
    ("nested-param-range", replace("epochs = 3", "epochs = 3\nschedule = { decay = 0 }"), ["steps.train.schedule.decay:", "greater than 0"]),
    ("unknown-param-no-match", replace("epochs = 3", "zzz = 3"), ["steps.train.zzz: unknown key 'zzz'", "valid keys:"]),
    ("param-type", replace("epochs = 3", 'epochs = "many"'), ["steps.train.epochs:", "valid integer", "'many'"]),
    ("param-range", replace("epochs = 3", "epochs = 0"), ["steps.train.epochs:", "greater than or equal to 1"]),
    ("param-pattern", replace('mode = "int8"', 'mode = "int4"'), ["steps.int8.mode:", "should match pattern"]),
    ("unknown-step-type", replace('use = "toy-train"', 'use = "toy-trian"'), ["steps.train.use: unknown step type 'toy-trian'", "did you mean 'toy-train'?"]),
    ("unknown-step-type-listing", replace('use = "toy-train"', 'use = "zzz"'), ["unknown step type 'zzz'", "installed step types: toy-convert, toy-data"]),
    ("missing-use", replace('use = "toy-train"\n', ""), ["steps.train.use: missing", "add use ="]),
    ("missing-reference", replace('input = "train"', 'input = "trian"'), ["steps.fp32.input: no step named 'trian'", "did you mean 'train'?"]),
    ("missing-reference-in-list", replace('inputs = ["fp32", "int8"]', 'inputs = ["fp32", "int9"]'), ["steps.report.inputs[1]: no step named 'int9'"]),
    ("input-and-inputs", replace('input = "train"', 'input = "train"\ninputs = ["train"]'), ["steps.fp32.inputs: both 'input' and 'inputs'"]),
    ("input-not-string", replace('input = "train"', "input = 3"), ["steps.fp32.input: must be the name of one step"]),
    ("cycle", HEAD + '\n[steps.a]\nuse = "toy-train"\ninput = "b"\n\n[steps.b]\nuse = "toy-train"\ninput = "a"\n', ["steps form a cycle: a → b → a"]),
    ("self-input", HEAD + '\n[steps.a]\nuse = "toy-train"\ninput = "a"\n', ["steps.a.input: step 'a' cannot take itself as input"]),
    ("kind-mismatch", replace('[steps.fp32]\nuse = "toy-convert"\ninput = "train"', '[steps.fp32]\nuse = "toy-convert"\ninput = "int8"'),
     ["steps.fp32.input: step 'int8' produces a tflite artifact, but step type 'toy-convert' consumes keras-model"]),
    ("too-many-inputs", replace('input = "train"', 'inputs = ["train", "model"]'), ["takes exactly 1 input", "got 2"]),
    ("no-input", replace('use = "toy-convert"\ninput = "train"', 'use = "toy-convert"'), ["steps.fp32.input: step type 'toy-convert' takes exactly 1 input", "add input ="]),
    ("input-to-source", replace('[model]\nuse = "toy-model"', '[model]\nuse = "toy-model"\ninput = "dataset"'), ["model.input: step type 'toy-model' takes no input"]),
    ("reserved-step-name", TOY_RECIPE + '\n[steps.model]\nuse = "toy-train"\n', ["steps.model: 'model' is reserved"]),
    ("bad-step-name", TOY_RECIPE + '\n[steps."a b"]\nuse = "toy-train"\n', ["invalid step name 'a b'"]),
    ("dataset-wrong-kind", replace('[dataset]\nuse = "toy-data"\nfile = "numbers.txt"', '[dataset]\nuse = "toy-model"'), ["dataset.use: step type 'toy-model' produces keras-model, not a dataset"]),
    ("needs-dataset", '[recipe]\nname = "t"\n\n[model]\nuse = "toy-model"\n', ["model: step type 'toy-model' needs the recipe's dataset", "add a [dataset] table"]),
    ("missing-env-var", replace('file = "numbers.txt"', 'file = "${TOY_DATA_DIR}/numbers.txt"'), ["dataset.file: environment variable TOY_DATA_DIR is not set", "${TOY_DATA_DIR:-value}"]),
    ("missing-input-file", replace('file = "numbers.txt"', 'file = "nope.txt"'), ["dataset.file: file not found:", "nope.txt", "relative paths resolve against the recipe's folder"]),
    ("input-file-is-folder", replace('file = "numbers.txt"', 'file = "."'), ["dataset.file: is a folder, not a file"]),
    ("steps-not-table", "steps = 3\n" + HEAD, ["steps: must be a table of steps"]),
    # numbers and booleans are taken as the JSON Schema takes them, never converted
    ("bool-for-int", replace("epochs = 3", "epochs = true"), ["steps.train.epochs:", "valid integer, not a boolean", "write a number"]),
    ("bool-for-optional-int", replace("epochs = 3", "epochs = 3\nexit_with = false"), ["steps.train.exit_with:", "not a boolean"]),
    ("int-for-bool", replace("epochs = 3", "epochs = 3\ncrash = 1"), ["steps.train.crash:", "valid boolean (true/false), not a number", "write true or false"]),
    ("zero-for-bool", replace("epochs = 3", "epochs = 3\ncrash = 0"), ["steps.train.crash:", "valid boolean"]),
    ("float-for-bool", replace("epochs = 3", "epochs = 3\ncrash = 1.0"), ["steps.train.crash:", "valid boolean"]),
    ("bool-for-float", replace("epochs = 3", "epochs = 3\nlearning_rate = true"), ["steps.train.learning_rate:", "valid number, not a boolean"]),
    ("fractional-int", replace("epochs = 3", "epochs = 2.5"), ["steps.train.epochs:", "fractional part", "write a whole number"]),
    ("bool-in-nested-table", replace("epochs = 3", "epochs = 3\nschedule = { warmup = true }"), ["steps.train.schedule.warmup:", "not a boolean"]),
    ("quoted-number", replace("epochs = 3", 'epochs = "3"'), ["steps.train.epochs:", "not a string", "remove the quotes"]),
    ("bool-seed", replace("seed = 3", "seed = true"), ["recipe.seed:", "valid integer, not a boolean"]),
    ("bool-budget", TOY_RECIPE + "\n[target]\nflash_kb = true\n", ["target.flash_kb:", "valid number, not a boolean"]),
    ("no-steps", '[recipe]\nname = "t"\n', ["steps: the recipe declares no steps"]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["build", "plan"])
def test_malformed_recipe(ws, command, text, expected):
    ws.write(text)
    run = ws.run(command, str(ws.recipe))
    assert run.code == 2, run.err
    assert "Traceback" not in run.err + run.out
    message = run.err
    assert str(ws.recipe) in message  # every error names the file
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
    assert "fix:" in message or "did you mean" in message


def test_all_problems_are_reported_together(ws):
    ws.write(replace("epochs = 3", "epoch = 3").replace('input = "train"', 'input = "trian"', 1))
    run = ws.build()
    assert run.code == 2
    assert "steps.train.epoch" in run.err and "steps.fp32.input" in run.err


def test_missing_recipe_file(ws):
    run = ws.run("build", str(ws.root / "nope.toml"))
    assert run.code == 2 and "no such recipe file" in run.err


def test_env_var_default_and_value(ws, monkeypatch):
    ws.edit('file = "numbers.txt"', 'file = "${TOY_DATA_DIR:-.}/numbers.txt"')
    assert ws.build().code == 0
    sub = ws.root / "elsewhere"
    sub.mkdir()
    (sub / "numbers.txt").write_text("1 2 3\n")
    monkeypatch.setenv("TOY_DATA_DIR", str(sub))
    # same content in another place: the key uses content, so nothing reruns
    plan = ws.plan()
    assert all(status == "cached" for status, _ in plan.values())


def test_debug_shows_traceback(ws):
    ws.write(replace("epochs = 3", "epoch = 3"))
    from tinybuild.errors import RecipeError

    with pytest.raises(RecipeError):
        ws.run("build", str(ws.recipe), "--debug")


@pytest.mark.parametrize("option,make", [("--cache-dir", "file"), ("--out", "file"), ("--lock", "dir")])
def test_unusable_locations_are_usage_errors(ws, option, make):
    target = ws.root / f"thing-{make}"
    if make == "file":
        target.write_text("not a folder")
    else:
        target.mkdir()
    run = ws.run("build", str(ws.recipe), "--plain", option, str(target))
    assert run.code == 2, run.err
    assert option in run.err and "Traceback" not in run.err


def test_an_integral_float_is_the_integer_and_an_int_the_float(ws):
    """JSON Schema counts 2.0 as an integer, so the loader accepts it too, as
    the same value: same params, same cache key (and 1 for a float is 1.0)."""
    ws.edit("epochs = 3", "epochs = 3\nlearning_rate = 1")
    assert ws.build().code == 0
    ws.edit("epochs = 3\nlearning_rate = 1", "epochs = 3.0\nlearning_rate = 1.0")
    plan = ws.plan()
    assert plan["train"][0] == "cached", plan["train"]


def test_list_items_are_checked_one_by_one():
    from pydantic import ValidationError

    from tinybuild.api import Params
    from tinybuild.recipe import validation_problems

    class Folds(Params):
        folds: list[int] = []
        pair: tuple[float, float] | None = None

    assert Folds.model_validate({"folds": [1, 2.0], "pair": [1, 2]}).model_dump() == {"folds": [1, 2], "pair": (1.0, 2.0)}
    with pytest.raises(ValidationError) as info:
        Folds.model_validate({"folds": [1, True], "pair": [1, False]})
    problems = {p.key: p for p in validation_problems(info.value, "steps.s", Folds)}
    assert set(problems) == {"steps.s.folds[1]", "steps.s.pair[1]"}
    assert "not a boolean (got True)" in problems["steps.s.folds[1]"].message


@pytest.mark.parametrize("text, env, expected", [
    # as in the shell: ":-" takes the default for an unset or empty variable, "-" only for an unset one
    ("${TOY_DIR:-.}/numbers.txt", {"TOY_DIR": ""}, "./numbers.txt"),
    ("${TOY_DIR:-.}/numbers.txt", {}, "./numbers.txt"),
    ("${TOY_DIR:-.}/numbers.txt", {"TOY_DIR": "d"}, "d/numbers.txt"),
    ("${TOY_DIR-.}/numbers.txt", {"TOY_DIR": ""}, "/numbers.txt"),
    ("${TOY_DIR-.}/numbers.txt", {}, "./numbers.txt"),
    ("${TOY_DIR}/numbers.txt", {"TOY_DIR": ""}, "/numbers.txt"),
    ("$${TOY_DIR}", {"TOY_DIR": "d"}, "${TOY_DIR}"),
])
def test_interpolation_defaults(tmp_path, text, env, expected):
    from tinybuild.recipe import load_recipe

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TOY_RECIPE.replace('file = "numbers.txt"', f'file = "{text}"'))
    assert load_recipe(recipe, environ=env).steps["dataset"].raw_params["file"] == expected


def test_an_empty_variable_that_breaks_a_path_is_named(ws, monkeypatch):
    ws.edit('file = "numbers.txt"', 'file = "${TOY_DATA_DIR}/numbers.txt"')
    monkeypatch.setenv("TOY_DATA_DIR", "")
    run = ws.build()
    assert run.code == 2 and "Traceback" not in run.err
    assert "dataset.file: file not found" in run.err
    assert "${TOY_DATA_DIR} expanded to an empty string" in run.err, run.err
    assert "set TOY_DATA_DIR to a non-empty value, or give a default: ${TOY_DATA_DIR:-value}" in run.err


def test_a_recipe_with_a_byte_order_mark_is_read(ws):
    """Windows editors save UTF-8 with a byte order mark, which TOML forbids:
    the loader drops it, and the recipe means what it means without one."""
    ws.recipe.write_bytes(b"\xef\xbb\xbf" + TOY_RECIPE.encode("utf-8"))
    first = ws.build()
    assert first.code == 0, first.err
    ws.recipe.write_bytes(TOY_RECIPE.encode("utf-8"))
    assert all(status == "cached" for status, _ in ws.plan().values())
    # a BOM is not dropped anywhere else: inside the file it is still a TOML error
    ws.recipe.write_bytes(TOY_RECIPE.encode("utf-8") + b"\xef\xbb\xbf\n")
    assert ws.build().code == 2
