"""Hostile or broken recipes and data paths: each ends in exit 2 with a message
naming the file and the key, within seconds, never a hang or a traceback.

No TensorFlow: the toy plugin's ``toy-data`` step has an ``InputFile`` param
(``dataset.file``), which stands for every data path of every plugin.
"""

from __future__ import annotations

import json

import os
import signal
import socket
import time

import pytest

from toyenv import TOY_RECIPE

#: seconds any single case may take; a hang (a FIFO read) trips the alarm. Generous:
#: it tells a hang from slow work on a loaded 2-core machine, it times nothing.
DEADLINE = 120


@pytest.fixture(autouse=True)
def deadline():
    """Turn a hang into a failure: SIGALRM interrupts a blocking open/read."""

    def expired(signum, frame):
        raise TimeoutError(f"hung for over {DEADLINE} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(DEADLINE)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _fifo(path):
    os.mkfifo(path)


def _folder(path):
    path.mkdir()


def _socket(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s  # kept open by the caller's fixture scope


def _device(name):
    def link(path):
        os.symlink(name, path)  # a link to a device is still a device
    return link


# (id, maker, words the message must contain)
SPECIAL_FILES = [
    ("fifo", _fifo, "FIFO"),
    ("dev-zero", _device("/dev/zero"), "character device"),
    ("dev-urandom", _device("/dev/urandom"), "character device"),
    ("folder", _folder, "folder"),
    ("socket", _socket, "socket"),
]


def _expect(run, *parts):
    assert run.code == 2, (run.code, run.err)
    text = run.err + run.out
    assert "Traceback" not in text
    for part in parts:
        assert part in text, f"{part!r} not in:\n{text}"


@pytest.mark.parametrize("command", ["build", "plan", "graph"])
@pytest.mark.parametrize("maker,word", [c[1:] for c in SPECIAL_FILES], ids=[c[0] for c in SPECIAL_FILES])
def test_recipe_that_is_not_a_regular_file(ws, command, maker, word):
    path = ws.root / "special.toml"
    keep = maker(path)
    start = time.monotonic()
    run = ws.run(command, str(path))
    _expect(run, str(path), word)
    assert time.monotonic() - start < 5
    del keep


@pytest.mark.parametrize("maker,word", [c[1:] for c in SPECIAL_FILES], ids=[c[0] for c in SPECIAL_FILES])
@pytest.mark.parametrize("command", ["build", "plan"])
def test_data_path_that_is_not_a_regular_file(ws, command, maker, word):
    keep = maker(ws.root / "special")
    ws.edit('file = "numbers.txt"', 'file = "special"')
    run = ws.run(command, str(ws.recipe))
    _expect(run, str(ws.recipe), "dataset.file", word, "special")
    del keep


@pytest.mark.parametrize("maker,word", [c[1:] for c in SPECIAL_FILES[:3]], ids=[c[0] for c in SPECIAL_FILES[:3]])
@pytest.mark.parametrize("where", ["--lock", "beside-recipe"])
def test_lock_file_that_is_not_a_regular_file(ws, maker, word, where):
    """Builds replace the lock file: over a device that would replace the device node."""
    path = ws.root / ("special.lock.json" if where == "--lock" else "recipe.lock.json")
    maker(path)
    args = ["--lock", str(path)] if where == "--lock" else []
    # --lock is resolved (links followed), so the message may name the link's target
    _expect(ws.build(*args), "--lock" if args else str(path), word)
    assert path.is_symlink() or not path.is_file()  # untouched


def test_lock_file_that_is_garbage_is_ignored(ws):
    (ws.root / "recipe.lock.json").write_text("[" * 100_000)
    assert ws.build().code == 0


@pytest.mark.parametrize("entry", ['"x"', "[]", '{"key": "k"}', '{"key": 1, "material": {}, "input_steps": [], "output": {}}',
                                   '{"key": "k", "material": {"params": [1], "inputs": 5}, "input_steps": [],'
                                   ' "output": {"kind": "metrics", "digest": "d", "files": {}}}'])
def test_lock_file_entries_edited_by_hand_are_no_traceback(ws, entry):
    """The lock file is the user's to edit: an entry of another shape counts
    as absent or unreadable, and the step is rebuilt with a reason."""
    assert ws.build().code == 0
    lock = ws.root / "recipe.lock.json"
    data = json.loads(lock.read_text())
    data["steps"]["train"] = json.loads(entry)
    lock.write_text(json.dumps(data))
    ws.edit("epochs = 3", "epochs = 4")  # train must run: its reasons are diffed against that entry
    plan = ws.run("plan", str(ws.recipe))
    assert plan.code == 0 and "Traceback" not in plan.err, plan.err
    run = ws.build()
    assert run.code == 0 and "Traceback" not in run.err and "run [toy-train]" in run.err, run.err


@pytest.mark.parametrize("path", ["/proc/self/status", "/proc/self/cmdline"])
def test_data_path_that_is_a_kernel_pseudo_file(ws, path):
    """/proc and /sys files stat as regular, but their sizes are made up."""
    ws.edit('file = "numbers.txt"', f'file = "{path}"')
    _expect(ws.run("plan", str(ws.recipe)), str(ws.recipe), "dataset.file", "pseudo-file")


def test_hashing_refuses_a_fifo_swapped_in_after_loading(tmp_path):
    """The check at load time leaves a window; hashing opens with O_NONBLOCK
    and checks the opened descriptor, so a FIFO swapped in cannot hang it."""
    from tinybuild.hashing import file_digest
    from tinybuild.safeio import NotRegularFile

    os.mkfifo(tmp_path / "numbers.txt")
    with pytest.raises(NotRegularFile, match="FIFO"):
        file_digest(tmp_path / "numbers.txt")


def test_recipe_over_the_size_cap(ws):
    ws.write(TOY_RECIPE + "#" * (1 << 20) + "\n")
    _expect(ws.build(), str(ws.recipe), "1 MiB")


def test_recipe_just_under_the_size_cap_loads(ws):
    padding = (1 << 20) - len(TOY_RECIPE.encode()) - 2
    ws.write(TOY_RECIPE + "#" * padding + "\n")
    assert ws.recipe.stat().st_size <= 1 << 20
    assert ws.run("plan", str(ws.recipe)).code == 0


LONG = "x" * 300

# (id, option, value, words): paths that cannot name a file at all
BAD_PATHS = [
    ("recipe-nul", None, "reci\x00pe.toml", ["recipe", "NUL byte"]),
    ("recipe-long", None, LONG + ".toml", ["recipe", "255"]),
    ("out-nul", "--out", "bu\x00ild", ["--out", "NUL byte"]),
    ("out-long", "--out", LONG, ["--out", "255"]),
    ("cache-long", "--cache-dir", LONG, ["--cache-dir", "255"]),
    ("lock-nul", "--lock", "a\x00.json", ["--lock", "NUL byte"]),
    ("out-path-over-4096", "--out", "/".join(["d" * 9] * 500), ["--out", "4096"]),
]


@pytest.mark.parametrize("option,value,words", [c[1:] for c in BAD_PATHS], ids=[c[0] for c in BAD_PATHS])
def test_paths_that_cannot_name_a_file_are_usage_errors(ws, option, value, words):
    args = ["build", value] if option is None else ["build", str(ws.recipe), option, str(ws.root / value)]
    _expect(ws.run(*args, "--plain"), *words)


@pytest.mark.parametrize("value,words", [
    ("numbers\\u0000.txt", ["NUL byte"]),
    (LONG, ["255"]),
    (f"{LONG}/{LONG}", ["255"]),
], ids=["nul", "long-name", "long-folder"])
@pytest.mark.parametrize("command", ["build", "plan"])
def test_data_paths_that_cannot_name_a_file(ws, command, value, words):
    ws.edit('file = "numbers.txt"', f'file = "{value}"')
    _expect(ws.run(command, str(ws.recipe)), str(ws.recipe), "dataset.file", *words)


def _replace(old: str, new: str) -> str:
    assert old in TOY_RECIPE
    return TOY_RECIPE.replace(old, new, 1)


# (id, recipe text, words the message must contain)
HOSTILE_RECIPES = [
    ("int-5000-digits-seed", _replace("seed = 3", "seed = " + "1" * 5000), ["invalid TOML", "4300 digits", "64-bit"]),
    ("int-5000-digits-param", _replace("epochs = 3", "epochs = " + "9" * 5000), ["invalid TOML", "64-bit"]),
    ("hex-5000-digits", _replace("seed = 3", "seed = 0x" + "f" * 5000), ["recipe.seed", "out of range", "64-bit"]),
    ("int-2-to-the-64", _replace("epochs = 3", f"epochs = {2**64}"), ["steps.train.epochs", "out of range"]),
    ("array-nested-5000", _replace("epochs = 3", "epochs = 3\nx = " + "[" * 5000 + "]" * 5000), ["nested too deeply"]),
    ("inline-table-nested-3000", _replace("epochs = 3", "epochs = 3\nx = " + "{a=" * 3000 + "1" + "}" * 3000), ["nested too deeply"]),
    ("array-nested-100", _replace("epochs = 3", "epochs = 3\nx = " + "[" * 100 + "]" * 100),
     ["steps.train.x", "nested more than 32 levels"]),
    ("dotted-table-5000", TOY_RECIPE + "\n[" + ".".join(["a"] * 5000) + "]\n", ["nested more than 32 levels"]),
    ("step-name-newline", TOY_RECIPE + '\n[steps."extra\\n"]\nuse = "toy-train"\n', ["invalid step name"]),
    ("recipe-name-newline", _replace('name = "toy"', 'name = "toy\\n"'), ["recipe.name", "should match pattern"]),
    ("step-name-300-chars", TOY_RECIPE + f'\n[steps.{"s" * 300}]\nuse = "toy-train"\n', ["invalid step name", "at most 100"]),
    ("recipe-name-300-chars", _replace('name = "toy"', f'name = "{"t" * 300}"'), ["recipe.name", "at most 100 characters"]),
    ("float-overflow-to-inf", _replace("epochs = 3", "epochs = 3\nlearning_rate = 1" + "0" * 400 + ".0"),
     ["steps.train.learning_rate", "finite number"]),
    ("inf-in-untyped-table", _replace("epochs = 3", "epochs = 3\nschedule = { decay = 1.0 }\n[steps.train.extra]\nx = inf"),
     ["steps.train.extra.x", "finite number"]),
    ("huge-string-in-error", _replace("epochs = 3", 'epochs = "' + "z" * 100_000 + '"'), ["steps.train.epochs", "..."]),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in HOSTILE_RECIPES], ids=[c[0] for c in HOSTILE_RECIPES])
@pytest.mark.parametrize("command", ["build", "plan", "graph"])
def test_hostile_recipe_content(ws, command, text, words):
    ws.write(text)
    start = time.monotonic()
    run = ws.run(command, str(ws.recipe))
    _expect(run, str(ws.recipe), *words)
    assert len(run.err) < 5000, "error messages stay readable"
    assert time.monotonic() - start < 5


def _chain(n: int) -> str:
    steps = [f'[steps.s0]\nuse = "toy-train"\nepochs = 1\n']
    steps += [f'[steps.s{i}]\nuse = "toy-train"\ninput = "s{i - 1}"\nepochs = 1\n' for i in range(1, n)]
    head = TOY_RECIPE[: TOY_RECIPE.index("[steps.train]")]
    return head + "\n".join(steps)


@pytest.fixture
def chain(ws):
    ws.write(_chain(1000))
    return ws


def test_graph_of_a_1000_step_chain(chain):
    for fmt in ("text", "dot", "mermaid"):
        run = chain.run("graph", str(chain.recipe), "--format", fmt)
        assert run.code == 0, run.err
        assert "s999" in run.out
    text = chain.run("graph", str(chain.recipe)).out.splitlines()
    assert text[-1].strip().startswith("└── s999")
    assert max(len(line) for line in text) < 250  # indentation stops growing: output linear in steps


def test_plan_and_build_of_a_1000_step_chain(chain):
    plan = chain.plan()
    assert len(plan) == 1002 and plan["s999"][0] == "run"
    run = chain.build()
    assert run.code == 0, run.err[-2000:]
    assert all(status == "cached" for status, _ in chain.plan().values())


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """``tinybuild schema | head -1``: when the reader closes the pipe the
    command stops with status 141 (as git and the shell give), no traceback."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}  # every built-in plugin: 150 kB
    proc = subprocess.Popen([sys.executable, "-m", "tinybuild", "schema"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # the reader goes away with most of the schema still to come
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
