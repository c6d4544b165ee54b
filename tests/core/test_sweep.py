"""Sweeps (``matrix`` in a step table) with the toy plugin: expansion, fan-out,
gather, errors, and that members build, cache and rerun like ordinary steps."""

from __future__ import annotations

import itertools
import json

import pytest

from toyenv import built_steps

SWEEP_RECIPE = """\
[recipe]
name = "toy"
seed = 3

[dataset]
use = "toy-data"
file = "numbers.txt"

[model]
use = "toy-model"

[steps.train]
use = "toy-train"
matrix = { epochs = [1, 2], learning_rate = [0.1, 0.05] }

[steps.conv]
use = "toy-convert"
input = "train"
matrix = { mode = ["float32", "int8"] }

[steps.report]
use = "toy-report"
inputs = ["conv"]
"""

EPOCHS, RATES, MODES = [1, 2], [0.1, 0.05], ["float32", "int8"]


def train_name(epochs, rate):
    return f"train-epochs_{epochs}-learning_rate_{str(rate).replace('.', 'p')}"


def conv_name(epochs, rate, mode):
    return train_name(epochs, rate).replace("train-", "conv-", 1) + f"-mode_{mode}"


TRAINS = [train_name(e, r) for e, r in itertools.product(EPOCHS, RATES)]
CONVS = [conv_name(e, r, m) for e, r, m in itertools.product(EPOCHS, RATES, MODES)]


@pytest.fixture
def sweep(ws):
    ws.write(SWEEP_RECIPE)
    return ws


def test_plan_expands_the_product_fans_out_and_gathers(sweep):
    result = sweep.run("plan", str(sweep.recipe), "--json", "--cache-dir", str(sweep.cache))
    items = json.loads(result.out)
    assert [i["step"] for i in items] == ["dataset", "model", *TRAINS, *CONVS, "report"]
    by_name = {i["step"]: i for i in items}
    assert by_name[train_name(2, 0.05)]["sweep"] == {"table": "train", "coordinates": {"epochs": 2, "learning_rate": 0.05}}
    assert by_name[conv_name(1, 0.1, "int8")]["sweep"]["coordinates"] == {"epochs": 1, "learning_rate": 0.1, "mode": "int8"}
    assert "sweep" not in by_name["report"]
    text = sweep.run("plan", str(sweep.recipe))
    assert f"sweep train: 4 steps (matrix over epochs, learning_rate): {', '.join(TRAINS)}" in text.out
    assert "sweep conv: 8 steps (matrix over mode, fans out with its input)" in text.out


def test_graph_shows_each_member_on_its_own_input(sweep):
    tree = sweep.run("graph", str(sweep.recipe)).out
    for epochs, rate in itertools.product(EPOCHS, RATES):
        block = tree.split(train_name(epochs, rate) + " ")[1].split("├── train-")[0].split("└── train-")[0]
        # both conversions of this trained model hang below it, and no other
        assert sorted(n for n in CONVS if n in block) == sorted(conv_name(epochs, rate, m) for m in MODES)


def test_members_build_cache_and_rerun_only_the_changed_member(sweep):
    first = sweep.build()
    assert first.code == 0, first.err
    assert built_steps(first) == ["dataset", "model", *TRAINS, *CONVS, "report"]
    # the gathering step received every member, in member order
    report = (sweep.root / "build" / "toy" / "report" / "report.md").read_text().splitlines()
    assert [line.split(":")[0] for line in report] == CONVS
    assert built_steps(sweep.build()) == []
    # a value changes in one axis: only the members with that value, and what reads them, rerun
    sweep.edit("learning_rate = [0.1, 0.05]", "learning_rate = [0.1, 0.02]")
    again = sweep.build()
    assert again.code == 0, again.err
    changed = [train_name(e, 0.02) for e in EPOCHS]
    assert built_steps(again) == changed + [conv_name(e, 0.02, m) for e in EPOCHS for m in MODES] + ["report"]
    # a value added to a list: only the new members (and the gathering report) build
    sweep.edit("epochs = [1, 2]", "epochs = [1, 2, 3]")
    grown = sweep.build()
    assert grown.code == 0, grown.err
    new_trains = [train_name(3, r) for r in (0.1, 0.02)]
    assert built_steps(grown) == new_trains + [conv_name(3, r, m) for r in (0.1, 0.02) for m in MODES] + ["report"]


def test_member_has_the_key_of_the_same_hand_written_step(sweep):
    sweep.build()
    # the member train-epochs_2-learning_rate_0p1 written out as an ordinary step
    sweep.write(SWEEP_RECIPE + '\n[steps.single]\nuse = "toy-train"\nepochs = 2\nlearning_rate = 0.1\n')
    plan = sweep.plan()
    assert plan["single"][0] == "cached"


def test_member_names_work_with_only_force_and_show(sweep):
    member = conv_name(2, 0.1, "int8")
    only = sweep.build("--only", member)
    assert only.code == 0, only.err
    assert built_steps(only) == ["dataset", "model", train_name(2, 0.1), member]
    forced = sweep.build("--force", train_name(2, 0.1), "--only", member)
    assert built_steps(forced) == [train_name(2, 0.1)]  # identical bytes: early cutoff spares the conversion
    shown = sweep.run("show", str(sweep.recipe), member)
    assert shown.code == 0, shown.err
    assert shown.out.startswith(f"{member}  [toy-convert → tflite]")
    table = sweep.run("plan", str(sweep.recipe), "--only", "train")
    assert table.code == 2
    assert "'train' is a sweep" in table.err and TRAINS[0] in table.err


@pytest.mark.parametrize("matrix, expected", [
    ("{ epochs = [1, 0] }", ["steps.train.matrix.epochs[1]:", "greater than or equal to 1", "in combination epochs=0",
                             "(step train-epochs_0)"]),
    ('{ epochs = [1], learning_rate = [0.1, "fast"] }', ["steps.train.matrix.learning_rate[1]:", "valid number",
                                                         "in combination epochs=1, learning_rate='fast'"]),
    ("{ epoch = [1, 2] }", ["steps.train.matrix.epoch: unknown parameter 'epoch'", "did you mean 'epochs'?"]),
    ("{ epochs = [] }", ["steps.train.matrix.epochs: is an empty list"]),
    ("{ epochs = 3 }", ["steps.train.matrix.epochs: must be a list of values (got int)", "epochs = [3]"]),
    ("[1, 2]", ["steps.train.matrix: must be a table of parameter lists"]),
    ("{}", ["steps.train.matrix: is empty"]),
    ("{ epochs = [2, 2] }", ["steps.train.matrix.epochs[1]: 2 repeats epochs[0] = 2"]),
    # repeats are found on the values the params read, not as written
    ("{ epochs = [1, 2, 1.0] }", ["steps.train.matrix.epochs[2]: 1.0 is the same epochs as epochs[0] = 1",
                                  "(both are 1)", "remove the repeated value"]),
    ("{ learning_rate = [1, 0.5, 1.0] }", ["steps.train.matrix.learning_rate[2]: 1.0 is the same learning_rate as "
                                           "learning_rate[0] = 1", "(both are 1.0)"]),
    ("{ epochs = [1, true] }", ["steps.train.matrix.epochs[1]:", "valid integer, not a boolean", "write a number"]),
    ("{ crash = [false, 1] }", ["steps.train.matrix.crash[1]:", "valid boolean (true/false), not a number"]),
    ('{ note = ["a-b", "a_b"] }', ["steps.train.matrix.note[1]:", "gives the same member name as note[0]"]),
    ("{ epochs = [[1]] }", ["steps.train.matrix.epochs[0]: a matrix value must be a number, a string or a boolean"]),
])
def test_bad_matrix_is_exit_2_naming_the_entry(sweep, matrix, expected):
    sweep.edit("matrix = { epochs = [1, 2], learning_rate = [0.1, 0.05] }", f"matrix = {matrix}")
    result = sweep.run("plan", str(sweep.recipe))
    assert result.code == 2
    assert "Traceback" not in result.err
    for text in expected:
        assert text in result.err, result.err
    # one message per bad entry, even though several members share it
    assert result.err.count("steps.train.matrix") == 1


def test_param_both_plain_and_swept_is_an_error(sweep):
    sweep.edit("use = \"toy-train\"\n", "use = \"toy-train\"\nepochs = 3\n")
    result = sweep.run("plan", str(sweep.recipe))
    assert result.code == 2
    assert "steps.train.matrix.epochs: 'epochs' is given both as a parameter and in the matrix" in result.err


def test_matrix_on_the_dataset_is_refused(sweep):
    sweep.edit('file = "numbers.txt"', 'file = "numbers.txt"\nmatrix = { scale = [1, 2] }')
    result = sweep.run("plan", str(sweep.recipe))
    assert result.code == 2
    assert "dataset.matrix: a matrix on [dataset] is not supported" in result.err


def test_gathering_into_a_single_input_step_says_how_many_it_got(sweep):
    sweep.write(SWEEP_RECIPE + '\n[steps.one]\nuse = "toy-convert"\ninputs = ["train"]\n')
    result = sweep.run("plan", str(sweep.recipe))
    assert result.code == 2
    assert "steps.one.inputs: step type 'toy-convert' takes exactly 1 input" in result.err
    assert "got 4" in result.err


def test_member_name_taken_by_another_step_is_an_error(sweep):
    taken = train_name(1, 0.1)
    sweep.write(SWEEP_RECIPE + f'\n[steps.{taken}]\nuse = "toy-train"\n')
    result = sweep.run("plan", str(sweep.recipe))
    assert result.code == 2
    assert f"steps.train: the sweep member '{taken}' has the name of another step" in result.err


@pytest.mark.parametrize("value, written", [
    (0.75, "0p75"), (-1, "m1"), (1e-05, "1em05"), (8, "8"), (True, "true"), ("int8-only", "int8_only"), ("a b.c", "a_b_c"),
])
def test_member_names_follow_the_step_name_rules(value, written):
    from tinybuild.matrix import encode, suffix
    from tinybuild.recipe import STEP_NAME

    assert encode(value) == written
    name = "step" + suffix([("param", value), ("other", "x")])
    assert name == f"step-param_{written}-other_x"
    assert STEP_NAME.match(name)
