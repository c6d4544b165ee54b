"""A small plugin used by the core tests: real step types with trivial work.

Artifacts are text files, so the core's behaviour (keys, cache, early
cutoff, failure handling) is tested without TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field

from tinybuild.api import GateFailed, InputFile, Kind, Params, StepError, StepType, hookimpl

# Test hooks: tests append to these to observe lifecycle events.
EVENTS: list[tuple] = []


def _read(artifact, name: str) -> str:
    return artifact.file(name).read_text()


class DataParams(Params):
    file: InputFile = Field(description="a text file of numbers")
    scale: int = Field(1, ge=1, description="multiply every number")


def run_data(ctx, inputs, params: DataParams):
    try:
        numbers = [int(x) for x in params.file.read_text().split()]
    except ValueError as exc:
        raise StepError(f"{params.file}: not a list of integers ({exc})") from None
    (ctx.out_dir / "data.json").write_text(json.dumps([n * params.scale for n in numbers]))
    return {"count": len(numbers)}


class ModelParams(Params):
    width: int = Field(4, ge=1)


def run_model(ctx, inputs, params: ModelParams):
    data = json.loads(ctx.dataset.file("data.json").read_text())
    (ctx.out_dir / "model.txt").write_text(f"model width={params.width} n={len(data)} seed={ctx.seed}\n")


class Schedule(Params):
    warmup: int = Field(0, ge=0)
    decay: float = Field(1.0, gt=0)


class TrainParams(Params):
    epochs: int = Field(2, ge=1)
    schedule: Schedule | None = Field(None, description="a nested table, to test nested errors")
    learning_rate: float = 0.1
    note: str = Field("", description="free text that does not change the output (for early cutoff)")
    crash: bool = Field(False, description="raise after writing half the output")
    mutate_input: bool = Field(False, description="touch the input while running")
    exit_with: int | None = Field(None, description="call sys.exit with this code")
    noise: bool = Field(False, description="write to descriptors 1 and 2 like a native library")
    hang: bool = Field(False, description="after writing half the output, signal $TOY_HANG_MARKER and sleep")


def run_train(ctx, inputs, params: TrainParams):
    text = _read(inputs[0], "model.txt")
    for epoch in range(1, params.epochs + 1):
        ctx.progress(epoch, params.epochs, f"epoch {epoch}/{params.epochs}")
    (ctx.out_dir / "model.txt").write_text(text + f"trained epochs={params.epochs} lr={params.learning_rate}\n")
    if params.exit_with is not None:
        import sys

        sys.exit(params.exit_with)
    if params.noise:
        os.write(2, b"native noise on fd 2\n")
        os.write(1, b"native noise on fd 1\n")
        print("python print", flush=True)
    if params.hang:
        import time

        (ctx.out_dir / "half.bin").write_bytes(b"partial")
        Path(os.environ["TOY_HANG_MARKER"]).write_text("running")
        time.sleep(60)
    if params.crash:
        (ctx.out_dir / "half.bin").write_bytes(b"partial")
        raise RuntimeError("simulated crash halfway")
    if params.mutate_input:
        src = Path(ctx.dataset.path) / "data.json"
        os.chmod(src, 0o644)
        src.write_text(src.read_text() + " ")
    return {"epochs": params.epochs, "note": params.note}


class ConvertParams(Params):
    mode: str = Field("float32", pattern="^(float32|int8)$")


CONVERT_RUNS = [0]


def run_convert(ctx, inputs, params: ConvertParams):
    (ctx.out_dir / "model.tflite").write_bytes((_read(inputs[0], "model.txt") + params.mode).encode())
    CONVERT_RUNS[0] += 1
    # "convert_ms" stands for a measured time: it differs on every run (declared volatile)
    return {"size": len(_read(inputs[0], "model.txt")) + len(params.mode), "convert_ms": CONVERT_RUNS[0]}


class ReportParams(Params):
    max_size: int | None = None
    fail: bool = False


def run_report(ctx, inputs, params: ReportParams):
    lines = [f"{a.step}: {a.kind} {a.digest[:8]}" for a in inputs]
    (ctx.out_dir / "report.md").write_text("\n".join(lines) + "\n")
    if params.fail:
        raise StepError("report was told to fail")
    if params.max_size is not None:
        for a in inputs:
            size = a.metrics.get("size", 0)
            if size > params.max_size:
                raise GateFailed(f"variant {a.step}: size {size} B > budget {params.max_size} B")
    return {"variants": len(inputs)}


STEP_TYPES = [
    StepType("toy-data", "1.0", Kind.DATASET, run_data, params=DataParams, arity=(0, 0), description="numbers from a file",
             uses_names=False),
    StepType("toy-model", "1.0", Kind.KERAS_MODEL, run_model, params=ModelParams, arity=(0, 0), uses_dataset=True,
             uses_names=False),
    StepType("toy-train", "1.0", Kind.KERAS_MODEL, run_train, consumes=(Kind.KERAS_MODEL,), params=TrainParams,
             default_input="model", uses_dataset=True, toolchain=("numpy",), uses_names=False),
    StepType("toy-convert", "1.0", Kind.TFLITE, run_convert, consumes=(Kind.KERAS_MODEL,), params=ConvertParams,
             uses_names=False, volatile_metrics=("convert_ms",)),
    # toy-report writes its inputs' step names into report.md: it keeps uses_names=True
    StepType("toy-report", "1.0", Kind.REPORT, run_report, consumes=(Kind.TFLITE, Kind.KERAS_MODEL), params=ReportParams, arity=(1, None),
             uses_input_metrics=True),  # its gate reads the inputs' "size" metric
]


@hookimpl
def tinybuild_step_types():
    return STEP_TYPES


@hookimpl
def tinybuild_step_finished(step, step_type, digest, seconds, metrics):
    EVENTS.append(("finished", step))


@hookimpl
def tinybuild_step_cached(step, step_type, digest):
    EVENTS.append(("cached", step))


class FolderParams(Params):
    folder: Path = Field(description="a folder of .txt files of numbers (all of them are read)")


def listed_files(params: FolderParams) -> dict[str, Path]:
    return {f"file {p.name}": p for p in sorted(params.folder.iterdir()) if p.suffix == ".txt"}


def run_folder(ctx, inputs, params: FolderParams):
    numbers = [int(x) for p in listed_files(params).values() for x in p.read_text().split()]
    (ctx.out_dir / "data.json").write_text(json.dumps(numbers))
    return {"count": len(numbers)}


#: a step type that lists a folder (as the audio dataset does), declared with
#: input_folders; served by toy_listing (no lifecycle hooks: the fast path applies)
FOLDER_STEP_TYPE = StepType("toy-folder", "1.0", Kind.DATASET, run_folder, params=FolderParams, arity=(0, 0),
                            description="numbers from every .txt file of a folder", uses_names=False,
                            input_files=listed_files, input_folders=lambda params: [params.folder])
