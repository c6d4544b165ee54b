"""The ``c-array`` step: the bytes round-trip, identifiers are valid, the code compiles."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.tflite import c_array

STEP = c_array.tinybuild_step_types()[0]


@pytest.fixture(scope="module")
def tflite_artifact(tmp_path_factory):
    """A real .tflite file (a small Dense model converted by the tflite step)."""
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.tflite import convert as tflite
    from tinybuild_plugins.sdk.keras_model import save_keras_model

    _tf.seed_everything(0)
    k = _tf.keras()
    model = k.Sequential([k.layers.Input((10,)), k.layers.Dense(7, activation="relu"), k.layers.Dense(3)])
    keras_dir = tmp_path_factory.mktemp("keras")
    save_keras_model(model, keras_dir)
    return run_step(tflite.tinybuild_step_types()[0], [artifact_from_dir("m", "keras-model", keras_dir)],
                    {"quantize": "float32"}, step="int8-model")


def parse_array(source: str, ident: str) -> bytes:
    """The bytes of ``ident[]`` as a C compiler would read them."""
    body = re.search(rf"const unsigned char {ident}\[\] = \{{(.*?)\}};", source, re.S)
    assert body, "array definition not found"
    return bytes(int(v, 16) for v in re.findall(r"0x([0-9a-fA-F]{2})", body.group(1)))


def test_array_decodes_to_exactly_the_tflite_bytes(tflite_artifact):
    out = run_step(STEP, [tflite_artifact], {"tflm": False}, step="int8-model")  # the bare array
    ident = "int8_model"
    assert sorted(out.files) == [f"{ident}.cc", f"{ident}.h"]
    data = tflite_artifact.file("model.tflite").read_bytes()
    source = out.file(f"{ident}.cc").read_text()
    assert parse_array(source, ident) == data
    assert f"const unsigned int {ident}_len = {len(data)};" in source
    assert f"alignas(16) const unsigned char {ident}[]" in source
    hex_lines = [line for line in source.splitlines() if line.strip().startswith("0x")]
    assert all(line.count("0x") == 12 for line in hex_lines[:-1])
    assert 1 <= hex_lines[-1].count("0x") <= 12
    assert out.metrics == {"identifier": ident, "bytes": len(data), "files": [f"{ident}.cc", f"{ident}.h"],
                           "sha256": out.metrics["sha256"]}


def test_header_declares_extern_symbols_behind_an_include_guard(tflite_artifact):
    out = run_step(STEP, [tflite_artifact], {"name": "g_model"})
    header = out.file("g_model.h").read_text()
    assert "#ifndef TINYBUILD_G_MODEL_H_" in header and "#define TINYBUILD_G_MODEL_H_" in header
    assert "extern const unsigned char g_model[];" in header
    assert "extern const unsigned int g_model_len;" in header
    assert '#include "g_model.h"' in out.file("g_model.cc").read_text()


def test_output_is_deterministic(tflite_artifact):
    first = run_step(STEP, [tflite_artifact], step="fw")
    second = run_step(STEP, [tflite_artifact], step="fw")
    assert first.digest == second.digest


@pytest.mark.parametrize("step_name, expected", [
    ("int8-model", "int8_model"),
    ("8bit", "model_8bit"),
    ("float", "float_model"),
    ("main", "main_model"),  # C++ refuses a global variable named main
    ("std", "std_model"),  # the C++ library's namespace
    ("uint8_t", "uint8_t_model"),  # a type of <cstdint>, which the files include
    ("my model.v2", "my_model_v2"),
    ("--", "model"),
    ("__init", "init"),
    ("Ünïcode-net", "Unicode_net"),
])
def test_identifiers_derived_from_odd_step_names_are_valid(step_name, expected):
    ident = c_array.identifier_from(step_name)
    assert ident == expected
    assert c_array.identifier_problem(ident) is None


@pytest.mark.parametrize("bad", ["1abc", "int", "class", "a-b", "__x", "_Model", "", "a b", "café", "main", "std",
                                 "tflite", "size_t", "uint8_t", "NULL", "INT8_MAX"])
def test_name_param_rejects_invalid_identifiers(bad):
    with pytest.raises(ValidationError):
        STEP.params.model_validate({"name": bad})


def test_name_param_accepts_valid_identifiers():
    assert STEP.params.model_validate({"name": "g_model_data2"}).name == "g_model_data2"
    assert STEP.params().name is None


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) on this machine")
@pytest.mark.parametrize("step_name, ident", [("8-bit", "model_8_bit"), ("main", "main_model"), ("std", "std_model")])
def test_generated_code_compiles_links_and_holds_the_bytes(tflite_artifact, tmp_path, step_name, ident):
    out = run_step(STEP, [tflite_artifact], step=step_name)
    for name in out.files:
        shutil.copy(out.path / name, tmp_path / name)
    subprocess.run(["g++", "-c", "-std=c++11", "-Wall", "-Werror", f"{ident}.cc"], cwd=tmp_path, check=True)
    symbols = subprocess.run(["nm", f"{ident}.o"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert re.search(rf"\bR {ident}\b", symbols), "array must be an exported read-only symbol"
    assert re.search(rf"\bR {ident}_len\b", symbols)

    (tmp_path / "main.cc").write_text(f"""
        #include <cstdint>
        #include <cstdio>
        #include "{ident}.h"
        int main() {{
          unsigned long sum = 0;
          for (unsigned int i = 0; i < {ident}_len; ++i) sum = (sum * 31 + {ident}[i]) % 1000000007UL;
          std::printf("%u %lu %d\\n", {ident}_len, sum,
                      static_cast<int>(reinterpret_cast<std::uintptr_t>({ident}) % 16));
          return 0;
        }}
    """)
    subprocess.run(["g++", "-std=c++11", "-Wall", "-Werror", "main.cc", f"{ident}.cc", "-o", "probe"],
                   cwd=tmp_path, check=True)
    length, checksum, misalignment = subprocess.run(
        [str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout.split()
    data = tflite_artifact.file("model.tflite").read_bytes()
    expected = 0
    for byte in data:
        expected = (expected * 31 + byte) % 1000000007
    assert int(length) == len(data)
    assert int(checksum) == expected
    assert int(misalignment) == 0


def test_empty_hex_dump_shape_for_known_bytes():
    source = c_array.render_source("m", "s", bytes(range(25)), "0" * 64)
    assert parse_array(source, "m") == bytes(range(25))
    lines = [line for line in source.splitlines() if "0x" in line]
    assert [line.count("0x") for line in lines] == [12, 12, 1]
    assert np.all([line.startswith("    0x") for line in lines])


@pytest.mark.parametrize("name", ["model\n", "model\r\n", "\nmodel", "mo del"])
def test_identifier_with_a_newline_or_space_is_refused(name):
    """``$`` in a regex matches before a final newline: the check must use fullmatch."""
    assert c_array.identifier_problem(name) is not None
