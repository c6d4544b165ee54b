"""The child process that runs a model on TensorFlow Lite Micro.

Why a child: TFLM is native code, and a kernel that aborts or segfaults
takes its process with it. The parent (``tflm.py``) starts this module with
``python -m``, hands it a JSON request, and reads a JSON result and a ``.npy``
of outputs back (``allow_pickle=False`` both ways): a crash here fails one
step with a clear message, never the build.

TFLM reports through C++ ``MicroPrintf`` on file descriptor 2, not through
Python exceptions ("TFLM failed to allocate tensors" is all the exception
says). So every native call runs with fd 2 redirected to a temporary file,
and what it printed is read back: the kernel's refusal ("Node DEQUANTIZE
(number 0) failed to prepare") and the recording allocator's report
("Arena allocation total 11952 bytes").

Request keys: ``model`` (path), ``inputs`` (path of a float32 ``.npy``, one
row per sample, or null), ``outputs`` (path to write), ``result`` (path to
write), ``arena_size`` (bytes the interpreter may use), ``find_min_arena``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from typing import Any, Iterator

_FAILED_NODE = re.compile(r"Node (\w+) \(number (\d+)\) failed to (prepare|invoke|init)")
_NO_REGISTRATION = re.compile(r"Failed to get registration from op code (\w+)")
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '(\w+)'")
_PY_ERROR = re.compile(r"^\w+(Error|Exception): ")
_ARENA = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")


class Captured:
    text = ""


@contextlib.contextmanager
def native_stderr() -> Iterator[Captured]:
    """Redirect file descriptor 2 (where TFLM's C++ prints) into a buffer."""
    captured = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


def refusal(model_bytes: bytes, log: str, error: str) -> str:
    """"does not run on TFLM: <op> <types>" from the kernel's complaint and
    the model's own tensor types (read from the flatbuffer, not guessed)."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and "RecordingMicroAllocator" not in line]
    missing = _MISSING_OP.search(log)
    if missing:
        return f"does not run on TFLM: {missing.group(1)} has no TFLM kernel"
    unregistered = _NO_REGISTRATION.search(log)
    if unregistered:
        op = unregistered.group(1)
        if op == "CUSTOM":  # TFLM does not say which: name the model's custom ops it has no kernel for
            op = "custom operator " + ", ".join(_unknown_custom_ops(model_bytes) or ["(unnamed)"])
        return f"does not run on TFLM: {op} has no TFLM kernel"
    node = _FAILED_NODE.search(log)
    if node:
        op, index, phase = node.group(1), int(node.group(2)), node.group(3)
        types = _operator_types(model_bytes, index)
        detail = [line for line in lines if not _FAILED_NODE.search(line) and not _PY_ERROR.match(line)]
        why = f" ({detail[-1]})" if detail else ""
        return f"does not run on TFLM: {op} {types} (operator {index} failed to {phase}){why}"
    tail = "; ".join(lines[-3:]) or error
    return f"does not run on TFLM: {tail}"


def _unknown_custom_ops(model_bytes: bytes) -> list[str]:
    try:
        from tinybuild_plugins.tflite import arena, op_resolver

        custom = 32  # BuiltinOperator.CUSTOM
        model = arena.read_model(model_bytes)
        names = {c.customCode.decode() if isinstance(c.customCode, bytes) else str(c.customCode)
                 for c in model.operatorCodes or [] if max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) == custom}
        return sorted(n for n in names if n not in op_resolver.ADD_METHODS)
    except Exception:  # the names decorate the message; the message stands without them
        return []


def _operator_types(model_bytes: bytes, index: int) -> str:
    try:
        from tinybuild_plugins.tflite import arena

        model = arena.read_model(model_bytes)
        graph = model.subgraphs[0]
        op = graph.operators[index]
        tensors = graph.tensors
        ins = [arena.type_name(tensors[i].type) for i in op.inputs if i >= 0]
        outs = [arena.type_name(tensors[i].type) for i in op.outputs if i >= 0]
        return f"{' x '.join(ins) or 'no inputs'} -> {', '.join(outs) or 'no outputs'}"
    except Exception:  # the types decorate the message; the message stands without them
        return "(types unknown)"


def _quantize(values, detail):
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return values.astype(dtype, copy=False)
    q = detail["quantization_parameters"]
    scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(values, detail):
    import numpy as np

    q = detail["quantization_parameters"]
    if np.issubdtype(values.dtype, np.integer) and len(q["scales"]):
        return ((values.astype(np.float32) - int(q["zero_points"][0])) * float(q["scales"][0])).astype(np.float32)
    return values.astype(np.float32, copy=False)


def _interpreter(model_bytes: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model_bytes, arena_size=arena_size)


def attempt(model_bytes: bytes, arena_size: int) -> tuple[bool, str]:
    """(whether the model allocates and invokes on zeros in ``arena_size``
    bytes, what TFLM printed meanwhile).

    The try runs in a forked process: TFLM segfaults (rather than failing
    cleanly) when an arena is too small for its tail allocations, and both
    the first try and the search for the smallest arena meet such sizes."""
    import numpy as np

    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        pid = os.fork()
        if pid == 0:  # exit status 0 means it allocated and invoked
            status = 1
            try:
                os.dup2(sink.fileno(), 2)
                runner = _interpreter(model_bytes, arena_size)
                detail = runner.get_input_details(0)
                runner.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
                runner.invoke()
                status = 0
            except BaseException as exc:  # noqa: BLE001 - any failure means "does not run"
                os.write(2, f"\n{type(exc).__name__}: {exc}\n".encode())
            os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        sink.seek(0)
        log = sink.read().decode("utf-8", "replace")
    if os.WIFSIGNALED(wait_status):
        log += f"\n(TFLM crashed with signal {os.WTERMSIG(wait_status)})"
    return os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0, log


def smallest_arena(model_bytes: bytes, works: int) -> int:
    """The smallest ``arena_size`` that allocates and invokes, given a size
    that ``works``. Usually the recording allocator's total is that size and
    one byte less fails: two tries. Otherwise a binary search (a failing size
    below a working one is all it needs: larger arenas never fail)."""
    high = works
    low = high - 1
    if attempt(model_bytes, low)[0]:
        low = 0
    while high - low > 1:
        middle = (low + high) // 2
        if attempt(model_bytes, middle)[0]:
            high = middle
        else:
            low = middle
    return high


def evaluate(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    with open(request["model"], "rb") as handle:
        model_bytes = handle.read()
    if len(model_bytes) < 8 or model_bytes[4:8] != b"TFL3":
        return {"runs": False, "error": "not a TFLite flatbuffer (no 'TFL3' identifier at byte 4)"}
    arena_size = int(request["arena_size"])
    works, log = attempt(model_bytes, arena_size)
    if not works:
        if _ARENA_TOO_SMALL.search(log):
            return {"runs": False, "reason": f"does not fit the {arena_size:,} B arena TFLM was given "
                                             f"(tflm_arena_kb); TFLM says: {_first_line(log)}"}
        return {"runs": False, "reason": refusal(model_bytes, log, "")}
    with native_stderr():
        runner = _interpreter(model_bytes, arena_size)
    inp, out = runner.get_input_details(0), runner.get_output_details(0)
    x = np.load(request["inputs"], allow_pickle=False) if request.get("inputs") else np.zeros((1, *inp["shape"][1:]), np.float32)
    expected = tuple(int(d) for d in inp["shape"][1:])
    if tuple(x.shape[1:]) != expected:
        return {"runs": False, "error": f"the model expects inputs of shape {list(expected)} but the dataset "
                                        f"has {list(x.shape[1:])}"}
    outputs = []
    quantized = _quantize(x, inp)  # all at once: the loop below is what a device runs
    failure = None
    with native_stderr() as log:
        try:
            for i in range(len(x)):
                runner.set_input(quantized[i : i + 1], 0)
                runner.invoke()
                outputs.append(np.array(runner.get_output(0)).reshape(-1))
                if i == 0:
                    runner.print_allocations()
        except RuntimeError as exc:
            failure = str(exc)
    if failure is not None:  # log.text is complete only once the redirection has ended
        return {"runs": False, "reason": refusal(model_bytes, log.text, failure)}
    outputs = [_dequantize(np.stack(outputs), out)] if outputs else []
    arena = {m.group(1): int(m.group(2)) for m in _ARENA.finditer(log.text)}
    if "total" not in arena:
        return {"runs": False, "error": "TFLM's recording allocator printed no arena total"}
    np.save(request["outputs"], outputs[0] if outputs else np.zeros((0, 0), np.float32), allow_pickle=False)
    result = {"runs": True, "reason": None, "arena_bytes": arena["total"], "arena_head_bytes": arena.get("head"),
              "arena_tail_bytes": arena.get("tail"), "arena_min_bytes": None,
              "output_dtype": np.dtype(out["dtype"]).name, "input_dtype": np.dtype(inp["dtype"]).name}
    if request.get("find_min_arena"):
        result["arena_min_bytes"] = smallest_arena(model_bytes, arena["total"] if attempt(
            model_bytes, arena["total"])[0] else arena_size)
    return result


_ARENA_TOO_SMALL = re.compile(r"Failed to (allocate (tail|head) memory|resize buffer)")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as handle:
        request = json.load(handle)
    result = evaluate(request)
    with open(request["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
