"""The ``tflite`` artifact (one ``model.tflite`` flatbuffer) and running it.

Reading and writing are plain bytes. Running uses the LiteRT interpreter
(``ai_edge_litert``), which never imports TensorFlow and loads in a fraction
of a second; it runs one sample at a time (batch 1, as a microcontroller
does) on one thread, quantizing float features with an int8 input tensor's
own scale and zero-point and dequantizing int8 outputs, exactly as the
built-in ``evaluate`` step does (the implementation is shared with it in
``tinybuild_plugins.tflite.litert``, imported only when called).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Callable

from tinybuild.api import StepError

MODEL_FILE = "model.tflite"


def read_model_bytes(artifact: str | PathLike[str]) -> bytes:
    """The flatbuffer of a tflite artifact (an ``Artifact`` or its directory)."""
    path = Path(artifact) / MODEL_FILE
    if not path.is_file():
        raise StepError(f"{path} is missing: the input is not a tflite artifact")
    data = path.read_bytes()
    if not data:
        raise StepError(f"{path} is empty")
    return data


def save_model_bytes(out_dir: str | PathLike[str], model: bytes) -> Path:
    """Write a flatbuffer as ``out_dir/model.tflite``; returns the file's path."""
    path = Path(out_dir) / MODEL_FILE
    path.write_bytes(bytes(model))
    return path


def interpreter(model: bytes) -> Any:
    """A ready-to-run, single-threaded LiteRT ``Interpreter`` for ``model``
    (a StepError, not a crash, when LiteRT cannot load it)."""
    from tinybuild_plugins.tflite import litert

    return litert.interpreter(model)


def predict(model: bytes | Any, x: Any, on_progress: Callable[[int, int], None] | None = None) -> Any:
    """Float32 outputs for every sample of ``x`` (features as in a dataset
    artifact), run at batch 1; ``model`` is the flatbuffer or an interpreter."""
    from tinybuild_plugins.tflite import litert

    runner = litert.interpreter(model) if isinstance(model, (bytes, bytearray, memoryview)) else model
    return litert.predict(runner, x, on_progress)


def describe(model: bytes) -> dict[str, Any]:
    """Facts read from the flatbuffer without running it: op counts, input
    and output types, parameter count, kernel sparsity."""
    from tinybuild_plugins.tflite import litert

    return litert.describe(model)


def quantize(values: Any, detail: dict) -> Any:
    """Float features -> the integer type of a quantized input tensor
    (``detail`` is an entry of ``interpreter.get_input_details()``)."""
    from tinybuild_plugins.tflite import litert

    return litert.quantize(values, detail)


def dequantize(values: Any, detail: dict) -> Any:
    """Integer outputs of a quantized tensor -> float32 (floats pass through)."""
    from tinybuild_plugins.tflite import litert

    return litert.dequantize(values, detail)
