"""Running a .tflite model on TensorFlow Lite Micro, in a child process.

TFLM (the ``tflite-micro`` package: TFLM's reference interpreter built for
the host) is what a microcontroller runs, so it answers what LiteRT and an
estimate cannot: whether the device can run the model at all (float16 and
dynamic-range models cannot), the arena it really needs (the recording
allocator's total, cross-checked with the smallest ``arena_size`` that
allocates and invokes), and its outputs on the device's kernels.

The interpreter runs in ``tflm_child`` (see there for why); this module
starts it, turns a crash or a hang into a :class:`StepError` naming the
cause, and turns its outputs into the ``tflm`` metrics of ``metrics.json``::

    {"runs", "reason", "arena_bytes", "arena_recorded_bytes", "arena_min_bytes",
     "accuracy", "correct", "samples", "per_class", "confusion_matrix",
     "max_abs_diff_vs_litert", "argmax_agreement"}

``arena_bytes`` is what the model needs (:func:`needed_arena`: the larger of
the recording allocator's total, ``arena_recorded_bytes``, and the smallest
arena that allocated and invoked, ``arena_min_bytes``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tinybuild.api import StepError

#: what TFLM is given when no smaller cap is asked for: far above any model a
#: microcontroller holds, so "does not fit" means the model, not the host
DEFAULT_ARENA_KB = 1024
#: default ``[target] arena_margin``: the host build's kernels and 64-bit
#: structs are not the device's, so firmware reserves a little more than measured
DEFAULT_MARGIN = 0.10
#: TFLM aligns arena allocations to 16 bytes
ALIGN = 16


def needed_arena(section: Mapping[str, Any]) -> int | None:
    """The arena a model needs on TFLM: the larger of the recording
    allocator's total and the smallest ``arena_size`` that allocated and
    invoked. They usually agree; when alignment or the allocator's own
    bookkeeping makes the smallest working arena larger, an arena of the
    recorded size fails ``AllocateTensors()`` on the device, so every
    verdict (gates, report, ``kTensorArenaSize``) uses this figure."""
    recorded = section.get("arena_recorded_bytes", section.get("arena_bytes"))
    if not isinstance(recorded, int):
        return None
    smallest = section.get("arena_min_bytes")
    return max(recorded, smallest) if isinstance(smallest, int) else recorded


def arena_with_margin(arena_bytes: int, margin: float) -> int:
    """The arena firmware should reserve: measured bytes plus ``margin`` (a
    fraction), rounded up to TFLM's 16-byte alignment."""
    return int(math.ceil(arena_bytes * (1.0 + margin) / ALIGN) * ALIGN)


#: how the child is started; the request file's path is appended
CHILD = (sys.executable, "-m", "tinybuild_plugins.tflite.tflm_child")


def run_child(model: Path, x: Any | None, arena_size: int, find_min_arena: bool = True,
              timeout_s: float = 600.0, child: Sequence[str] = CHILD) -> tuple[dict[str, Any], Any | None]:
    """Run ``model`` on TFLM in a child process: (result, outputs or None).

    ``result["runs"]`` is False with a ``reason`` when TFLM refuses the model
    (an operator or type it lacks, an arena too small): that is a fact about
    the model. A crash, a hang, or input TFLM cannot read at all raises
    StepError: the step has failed."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="tinybuild-tflm-") as scratch:
        folder = Path(scratch)
        request = {
            "model": str(model), "inputs": None, "arena_size": int(arena_size),
            "find_min_arena": bool(find_min_arena),
            "outputs": str(folder / "outputs.npy"), "result": str(folder / "result.json"),
        }
        if x is not None:
            np.save(folder / "inputs.npy", np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
            request["inputs"] = str(folder / "inputs.npy")
        (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        try:
            done = subprocess.run(
                [*child, str(folder / "request.json")],
                capture_output=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise StepError(f"TFLM did not finish within {timeout_s:.0f} s on {model.name}; "
                            "the interpreter hung or the test split is too large") from None
        if done.returncode != 0:
            raise StepError(f"TFLM {_exit_cause(done.returncode)} while running the model: "
                            f"{_tail(done.stderr)}")
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        if result.get("error"):
            raise StepError(f"TFLM cannot read the model: {result['error']}")
        outputs = np.load(folder / "outputs.npy", allow_pickle=False) if result.get("runs") else None
        return result, outputs


def _exit_cause(code: int) -> str:
    if code < 0:
        try:
            return f"crashed ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _tail(stderr: bytes, lines: int = 6) -> str:
    text = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:]) or "no message"


def tflm_metrics(result: dict[str, Any], outputs: Any | None, litert_outputs: Any, y: Any,
                 score: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The ``tflm`` object of metrics.json. ``score(predictions)`` gives the
    same accuracy/per-class/confusion figures the LiteRT evaluation uses."""
    import numpy as np

    if not result.get("runs"):
        return {"runs": False, "reason": result.get("reason"), "arena_bytes": None, "arena_recorded_bytes": None,
                "arena_min_bytes": None,
                "accuracy": None, "correct": 0, "samples": int(len(y)), "per_class": [],
                "confusion_matrix": [], "max_abs_diff_vs_litert": None, "argmax_agreement": None}
    predictions = np.argmax(outputs, axis=1)
    scores = score(predictions)
    diff = agreement = None
    if litert_outputs is not None and litert_outputs.shape == outputs.shape and len(outputs):
        diff = float(np.max(np.abs(outputs.astype(np.float64) - litert_outputs.astype(np.float64))))
        agreement = float(np.mean(predictions == np.argmax(litert_outputs, axis=1)))
    return {
        "runs": True, "reason": None,
        "arena_bytes": needed_arena(result),  # what it needs: see needed_arena
        "arena_recorded_bytes": int(result["arena_bytes"]),
        "arena_min_bytes": result.get("arena_min_bytes"),
        "accuracy": scores["accuracy"], "correct": scores["correct"], "samples": scores["samples"],
        "per_class": scores["per_class"], "confusion_matrix": scores["confusion_matrix"],
        "max_abs_diff_vs_litert": diff, "argmax_agreement": agreement,
    }


def evaluate_on_tflm(model: Path, x: Any, y: Any, litert_outputs: Any, arena_kb: float,
                     score: Callable[[Any], dict[str, Any]]) -> tuple[dict[str, Any], Any | None]:
    """Run the split on TFLM: (``tflm`` metrics, TFLM outputs or None)."""
    result, outputs = run_child(model, x, int(arena_kb * 1024))
    return tflm_metrics(result, outputs, litert_outputs, y, score), outputs


def operators(model_bytes: bytes) -> list[str]:
    """The model's distinct builtin operator names in first-use order, every
    subgraph included (what an op resolver must register)."""
    from tinybuild_plugins.tflite import arena

    model = arena.read_model(model_bytes)
    seen: list[str] = []
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            name = arena.operator_name(model, op)
            if name not in seen:
                seen.append(name)
    return seen

