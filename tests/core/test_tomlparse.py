"""The one TOML parser (tinybuild.tomlparse): compiled tomli where it is safe,
tomllib where a hostile document could crash it, the same results either way."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tinybuild import tomlparse

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rebuild import toy_recipe  # noqa: E402

DEEP = 990  # past tomli's own guard on a small stack, within Python's recursion limit


@pytest.mark.parametrize("text", [toy_recipe(1000), toy_recipe(1000).replace("\n", "\r\n"),
                                  (ROOT / "recipes" / "mnist_cnn.toml").read_text()],
                         ids=["1000-steps", "1000-steps-crlf", "example"])
def test_real_recipes_take_the_compiled_parser_and_read_as_tomllib_reads_them(text):
    assert not tomlparse.could_nest_deeper(text)
    assert tomlparse.loads(text) == tomllib.loads(text)


@pytest.mark.parametrize("text", [
    "a = " + "[" * DEEP + "]" * DEEP,
    "a = " + "{b = " * DEEP + "1" + "}" * DEEP,
    "a = [\n" + "[\n" * DEEP + "]\n" * DEEP + "]\n",  # one bracket a line: not header lines
    "a = [\n" + "[[1]\n" * DEEP + "]",  # header-like lines that do not close what they open
    "a = " + '["]", ' * DEEP + "]" * DEEP,  # closing brackets in strings hide nothing
    # header-looking lines whose "]" a comment or a string hides from the parser
    "a = [\n" + "[ # ]\n" * DEEP + "1" + "]" * (DEEP + 1),
    'a = [\n' + '[ """ ]\n""",\n' * DEEP + "1" + "]" * (DEEP + 1),
    "a = [\n" + "[ ''' ]\n''',\n" * DEEP + "1" + "]" * (DEEP + 1),
    'a = [\n["] # ", ' + "[" * DEEP + "1" + "]" * DEEP + "]\n]\n",
    "a = [\n" + "[ { ]\n" * DEEP,
], ids=["arrays", "inline-tables", "line-per-level", "header-like-items", "brackets-in-strings",
        "comment-hides-bracket", "string-hides-bracket", "literal-hides-bracket", "comment-in-string", "brace"])
def test_whatever_could_nest_deep_goes_to_tomllib(text):
    assert tomlparse.could_nest_deeper(text)
    with pytest.raises((RecursionError, tomlparse.TOMLDecodeError)):
        tomlparse.loads(text)  # tomllib's error, not tomli's


def test_deep_nesting_on_a_small_stack_is_an_error_not_a_crash():
    """The compiled parser recurses in C: on a 256 KiB thread stack a thousand
    levels crash the interpreter. Run where a crash fails only this test."""
    code = f"""
import sys, threading
from tinybuild import tomlparse
def parse():
    try:
        tomlparse.loads(sys.stdin.read())
    except (RecursionError, tomlparse.TOMLDecodeError) as exc:
        print(type(exc).__name__)
threading.stack_size(256 * 1024)
thread = threading.Thread(target=parse)
thread.start()
thread.join()
"""
    for text in ["a = " + "[" * DEEP + "]" * DEEP, "a = [\n" + "[ # ]\n" * DEEP + "1" + "]" * (DEEP + 1)]:
        proc = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip(), (proc.returncode, proc.stderr[-500:])


@pytest.mark.parametrize("text", ['a = "x\n', "a = [1,\nb = 2", "[a\nb = 1", 'a = [' * 300 + '"x\n'])
def test_errors_of_either_parser_are_one_type_with_a_position(text):
    with pytest.raises(tomlparse.TOMLDecodeError) as info:
        tomlparse.loads(text)
    error = info.value
    assert error.lineno is not None or "line" in str(error) or "end of document" in str(error)
