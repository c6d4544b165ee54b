"""TFLite Micro evaluation: real TFLM runs in a child process, on tiny models.

The model is a single Dense layer with the 3x3 identity kernel (see
test_evaluate.py): its predictions are known, so TFLM's accuracy and its
agreement with LiteRT can be checked against figures worked out by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tinybuild.api import StepError
from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.report import evaluate
from tinybuild_plugins.tflite import convert as tflite
from tinybuild_plugins.tflite import tflm, tflm_child

EVALUATE = evaluate.tinybuild_step_types()[0]
TFLITE = tflite.tinybuild_step_types()[0]

# the same tiny data set and identity model as the LiteRT evaluation tests (fixtures)
from test_evaluate import X_TEST, Y_TEST, dataset, identity_model  # noqa: E402,F401

CONFUSION = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # by hand: argmax of the features


@pytest.fixture(scope="module")
def converted(identity_model, dataset):
    modes = ("float32", "float16", "int8-only")
    return {m: run_step(TFLITE, [identity_model], {"quantize": m}, dataset=dataset, step=m) for m in modes}


def tflm_metrics(artifact, dataset, **params):
    out = run_step(EVALUATE, [artifact], {"latency_runs": 0, "tflm": True, **params}, dataset=dataset,
                   step=f"eval_{artifact.step}")
    return json.loads(out.file("metrics.json").read_text()), out


def recorded_total(model_bytes: bytes) -> int:
    """The recording allocator's total, read here independently of the step."""
    with tflm_child.native_stderr() as log:
        from tflite_micro.python.tflite_micro import runtime

        runner = runtime.Interpreter.from_bytes(model_bytes, arena_size=1 << 20)
        runner.set_input(np.zeros((1, 3), runner.get_input_details(0)["dtype"]), 0)
        runner.invoke()
        runner.print_allocations()
    return int(tflm_child._ARENA.search(log.text).group(2))


def output_scale(artifact) -> float:
    from tinybuild_plugins.tflite import litert

    runner = litert.interpreter(artifact.file("model.tflite").read_bytes())
    return float(runner.get_output_details()[0]["quantization"][0])


def runs_in(artifact, arena_size: int) -> bool:
    """Allocate and invoke in a fresh process (TFLM may segfault on a small arena)."""
    script = ("import sys, numpy as np; from tflite_micro.python.tflite_micro import runtime; "
              f"r = runtime.Interpreter.from_bytes(open(sys.argv[1], 'rb').read(), arena_size={arena_size}); "
              "d = r.get_input_details(0); r.set_input(np.zeros((1, 3), d['dtype']), 0); r.invoke()")
    done = subprocess.run([sys.executable, "-c", script, str(artifact.file("model.tflite"))], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("mode", ["float32", "int8-only"])
def test_tflm_scores_like_litert_and_measures_the_arena(converted, dataset, mode):
    metrics, out = tflm_metrics(converted[mode], dataset)
    section = metrics["tflm"]
    assert section["runs"] is True and section["reason"] is None
    assert section["confusion_matrix"] == CONFUSION
    assert section["correct"] == 4 and section["samples"] == 6
    assert section["accuracy"] == pytest.approx(4 / 6) == metrics["accuracy"]
    assert [c["class"] for c in section["per_class"]] == ["zero", "one", "two"]
    assert section["per_class"] == metrics["per_class"]
    assert section["argmax_agreement"] == 1.0
    # float32 kernels agree to rounding; int8 kernels round differently by at most one output step
    tolerance = 1e-5 if mode == "float32" else output_scale(converted[mode]) * 1.0001
    assert section["max_abs_diff_vs_litert"] <= tolerance
    data = converted[mode].file("model.tflite").read_bytes()
    assert section["arena_recorded_bytes"] == recorded_total(data)
    # the smallest arena_size that allocates and invokes: one byte less fails
    smallest = section["arena_min_bytes"]
    assert runs_in(converted[mode], smallest) and not runs_in(converted[mode], smallest - 1)
    # what gates and the firmware use is enough to run, whichever of the two is larger
    assert section["arena_bytes"] == max(section["arena_recorded_bytes"], smallest)
    assert runs_in(converted[mode], section["arena_bytes"])
    assert out.metrics["tflm_runs"] is True and out.metrics["tflm_arena_bytes"] == section["arena_bytes"]


def test_float16_model_is_reported_as_not_running_with_op_and_types(converted, dataset):
    metrics, _ = tflm_metrics(converted["float16"], dataset)
    section = metrics["tflm"]
    assert section["runs"] is False
    assert section["reason"].startswith("does not run on TFLM: DEQUANTIZE float16")
    assert section["accuracy"] is None and section["arena_bytes"] is None
    assert metrics["accuracy"] == pytest.approx(4 / 6)  # LiteRT still evaluated it


def test_arena_cap_too_small_is_a_refusal_naming_the_arena(converted, dataset):
    metrics, _ = tflm_metrics(converted["int8-only"], dataset, tflm_arena_kb=0.25)
    assert metrics["tflm"]["runs"] is False
    assert "256 B arena" in metrics["tflm"]["reason"]


@pytest.mark.parametrize("replacement, reason", [
    ("RFFT2D", "does not run on TFLM: RFFT2D has no TFLM kernel"),
    ("TinybuildNoSuchOp", "does not run on TFLM: custom operator TinybuildNoSuchOp has no TFLM kernel"),
])
def test_an_operator_tflm_lacks_is_named(converted, tmp_path, replacement, reason):
    """The model's FULLY_CONNECTED opcode swapped for an op TFLM has no kernel for."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from tinybuild_plugins.tflite import arena

    model = arena.read_model(converted["float32"].file("model.tflite").read_bytes())
    code = model.operatorCodes[0]
    if replacement.isupper():
        code.builtinCode = getattr(schema.BuiltinOperator, replacement)
        code.deprecatedBuiltinCode = 127  # past the int8 range: the real code is in builtinCode
    else:
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        code.customCode = replacement
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "model.tflite"
    path.write_bytes(bytes(builder.Output()))
    result, outputs = tflm.run_child(path, X_TEST, 1 << 16)
    assert result == {"runs": False, "reason": reason} and outputs is None


def test_not_a_flatbuffer_fails_the_run(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"this is not a flatbuffer")
    with pytest.raises(StepError, match="not a TFLite flatbuffer"):
        tflm.run_child(bogus, None, 1 << 16)


def test_not_a_flatbuffer_fails_the_evaluate_step_naming_the_variant(tmp_path, dataset):
    (tmp_path / "model.tflite").write_bytes(b"this is not a flatbuffer")
    bogus = artifact_from_dir("bogus", "tflite", tmp_path)
    with pytest.raises(StepError, match=r"model.tflite of 'bogus' is not a TFLite flatbuffer"):
        run_step(EVALUATE, [bogus], {"latency_runs": 0, "tflm": True}, dataset=dataset, step="eval_bogus")


def test_a_crashing_interpreter_fails_the_step_not_the_process(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"x")
    abort = (sys.executable, "-c", "import os; os.abort()")
    with pytest.raises(StepError, match=r"TFLM crashed \(SIGABRT\)"):
        tflm.run_child(model, None, 1 << 16, child=abort)


def test_keras_input_is_refused(identity_model, dataset):
    with pytest.raises(StepError, match="tflm = true runs a .tflite model"):
        run_step(EVALUATE, [identity_model], {"latency_runs": 0, "tflm": True}, dataset=dataset)


def test_arena_with_margin_rounds_up_to_alignment():
    assert tflm.arena_with_margin(11952, 0.0) == 11952
    assert tflm.arena_with_margin(11952, 0.10) == 13152  # 13147.2 -> next multiple of 16
    assert tflm.arena_with_margin(1, 0.0) == 16
