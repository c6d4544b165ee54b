"""The firmware bundle (``c-array`` with ``tflm = true``): ``<name>_tflm.h``
parsed against the model's operator list and TFLM's own arena figure, and
compiled (``g++ -Wall -Werror``) against a stand-in for TFLM's
``MicroMutableOpResolver`` that records what is registered."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from tinybuild.api import StepError
from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.sdk.dataset import save_dataset
from tinybuild_plugins.sdk.keras_model import save_keras_model
from tinybuild_plugins.tflite import c_array, compress, op_resolver, tflm, tflm_child
from tinybuild_plugins.tflite import convert as tflite

STEP = c_array.tinybuild_step_types()[0]
TFLITE = tflite.tinybuild_step_types()[0]
COMPRESS = compress.tinybuild_step_types()[0]
rng = np.random.default_rng(1)
KERNEL = rng.choice(np.array([-1.0, -0.5, 0.5, 1.0], np.float32), size=(256, 10))
KERNEL[0, :] = 1.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    x = {s: rng.random((n, 256), dtype=np.float32) for s, n in (("train", 40), ("val", 10), ("test", 20))}
    y = {s: (v @ KERNEL).argmax(1) for s, v in x.items()}
    out = tmp_path_factory.mktemp("dataset")
    save_dataset(out, x, y, {"input_shape": [256], "num_classes": 10})
    return artifact_from_dir("dataset", "dataset", out)


@pytest.fixture(scope="module")
def models(tmp_path_factory, dataset):
    from tinybuild_plugins.sdk import tf as _tf

    k = _tf.keras()
    model = k.Sequential([k.layers.Input((256,)), k.layers.Dense(10), k.layers.Softmax()])
    model.layers[0].set_weights([KERNEL, np.zeros(10, np.float32) + 0.01])
    folder = tmp_path_factory.mktemp("keras")
    save_keras_model(model, folder)
    keras = artifact_from_dir("m", "keras-model", folder)
    converted = {m: run_step(TFLITE, [keras], {"quantize": m}, dataset=dataset, step=m.replace("-", "_"))
                 for m in ("int8", "float16")}
    converted["lut"] = run_step(COMPRESS, [converted["int8"]], {}, dataset=dataset, step="lut")
    return converted


def recorded_total(artifact) -> int:
    with tflm_child.native_stderr() as log:
        from tflite_micro.python.tflite_micro import runtime

        runner = runtime.Interpreter.from_bytes(artifact.file("model.tflite").read_bytes(), arena_size=1 << 20)
        detail = runner.get_input_details(0)
        runner.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
        runner.invoke()
        runner.print_allocations()
    return int(tflm_child._ARENA.search(log.text).group(2))


def registered(header: str) -> tuple[int, list[str]]:
    size = int(re.search(r"MicroMutableOpResolver<(\d+)>", header).group(1))
    return size, re.findall(r"resolver\.(Add\w+)\(\)", header)


@pytest.mark.parametrize("variant, decode", [("int8", False), ("lut", True)])
def test_header_registers_exactly_the_models_operators(models, variant, decode):
    out = run_step(STEP, [models[variant]], {"name": "g_model"}, step="fw")
    header = out.file("g_model_tflm.h").read_text()
    ops = tflm.operators(models[variant].file("model.tflite").read_bytes())
    size, calls = registered(header)
    assert calls == [op_resolver.ADD_METHODS[op] for op in ops] and size == len(ops) == len(set(calls))
    assert ("AddDecode" in calls) is decode
    assert {"QUANTIZE", "FULLY_CONNECTED", "SOFTMAX", "DEQUANTIZE"} <= set(ops)
    # kTensorArenaSize: what TFLM needs (the recording allocator's figure, or the smallest arena
    # that works if larger) + 10% margin, a multiple of 16
    arena = recorded_total(models[variant])
    facts = out.metrics["tflm"]
    assert facts["arena_recorded_bytes"] == arena
    assert facts["arena_bytes"] == max(arena, facts["arena_min_bytes"] or 0)
    expected = tflm.arena_with_margin(facts["arena_bytes"], 0.10)
    assert re.search(rf"constexpr int kTensorArenaSize = {expected};", header)
    assert facts["tensor_arena_size"] == expected
    assert out.metrics["files"] == ["g_model.cc", "g_model.h", "g_model_tflm.h"]


def test_arena_margin_comes_from_the_target(models):
    out = run_step(STEP, [models["int8"]], {"name": "g_model"}, step="fw", target={"arena_margin": 0})
    arena = recorded_total(models["int8"])
    assert f"kTensorArenaSize = {tflm.arena_with_margin(arena, 0)};" in out.file("g_model_tflm.h").read_text()


def test_a_model_tflm_cannot_run_fails_with_the_reason(models):
    with pytest.raises(StepError, match=r"'float16' does not run on TFLM: DEQUANTIZE float16.*tflm = false"):
        run_step(STEP, [models["float16"]], step="fw")
    bare = run_step(STEP, [models["float16"]], {"tflm": False}, step="fw")
    assert "tflm" not in bare.metrics and len(bare.files) == 2


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++) on this machine")
def test_bundle_compiles_and_registers_what_the_model_needs(models, tmp_path):
    out = run_step(STEP, [models["lut"]], {"name": "g_model"}, step="fw")
    for name in out.files:
        shutil.copy(out.path / name, tmp_path / name)
    # a stand-in for TFLM's resolver: same method names, N checked like the real one
    stub = tmp_path / "tensorflow" / "lite" / "micro"
    stub.mkdir(parents=True)
    methods = "\n".join(f'  TfLiteStatus {m}() {{ return Add("{m}"); }}' for m in sorted(set(op_resolver.ADD_METHODS.values())))
    (stub / "micro_mutable_op_resolver.h").write_text(f"""
#pragma once
#include <cstdio>
enum TfLiteStatus {{ kTfLiteOk = 0, kTfLiteError = 1 }};
namespace tflite {{
template <unsigned int tOpCount>
class MicroMutableOpResolver {{
 public:
  unsigned int count = 0;
{methods}
 private:
  TfLiteStatus Add(const char* name) {{
    if (count >= tOpCount) return kTfLiteError;
    ++count;
    std::printf("%s\\n", name);
    return kTfLiteOk;
  }}
}};
}}  // namespace tflite
""")
    (tmp_path / "main.cc").write_text("""
#include <cstdio>
#include "g_model.h"
#include "g_model_tflm.h"
alignas(16) static unsigned char arena[g_model_tflm::kTensorArenaSize];
int main() {
  g_model_tflm::OpResolver resolver;
  if (g_model_tflm::RegisterOps(resolver) != kTfLiteOk) return 1;
  std::printf("count %u arena %u model %u\\n", resolver.count, (unsigned)sizeof(arena), g_model_len);
  return 0;
}
""")
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-I.", "main.cc", "g_model.cc", "-o", "probe"],
                   cwd=tmp_path, check=True)
    lines = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout.split("\n")
    ops = tflm.operators(models["lut"].file("model.tflite").read_bytes())
    assert lines[:-2] == [op_resolver.ADD_METHODS[op] for op in ops]
    assert lines[-2] == (f"count {len(ops)} arena {out.metrics['tflm']['tensor_arena_size']} "
                         f"model {len(models['lut'].file('model.tflite').read_bytes())}")


def test_only_the_arena_margin_of_the_target_enters_the_key(models):
    """c-array reads [target] arena_margin alone: a new budget or device label
    must not rerun it (its files would be identical), a new margin must."""
    from tinybuild.keys import target_for
    from tinybuild.testing import step_key

    base = {"name": "mcu", "ram_kb": 32, "flash_kb": 64, "arena_margin": 0.1}
    key = step_key(STEP, {"name": "g_model"}, [models["int8"]], step="fw", target=base)
    for change in ({"ram_kb": 16}, {"name": "other"}, {"flash_kb": 8, "min_accuracy": 0.5}):
        assert step_key(STEP, {"name": "g_model"}, [models["int8"]], step="fw", target={**base, **change}) == key
    assert step_key(STEP, {"name": "g_model"}, [models["int8"]], step="fw", target={**base, "arena_margin": 0.2}) != key
    assert target_for(STEP.uses_target, base) == {"arena_margin": 0.1}  # all ctx.target holds in a build
