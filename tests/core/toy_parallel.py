"""Step types for the parallel-build tests (loaded beside ``toy_plugin``).

They do trivial work but behave like the things a scheduler must survive:
steps that must overlap (a barrier), heavy steps that must not, native
crashes, and a step that hangs until its worker is killed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import Field

from tinybuild.api import Kind, Params, StepError, StepType, hookimpl


class MeetParams(Params):
    rendezvous: str = Field(description="folder where the steps that must overlap leave a mark")
    others: list[str] = Field(default_factory=list, description="steps that must be running at the same time")
    wait: float = Field(30.0, description="seconds to wait for the others")
    hold: float = Field(0.0, description="seconds to stay 'running' afterwards")


def run_meet(ctx, inputs, params: MeetParams):
    """Leave a mark, then wait until every step in ``others`` left theirs:
    only possible if they run concurrently. Heavy variants also check that no
    other heavy step is running."""
    folder = Path(params.rendezvous)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{ctx.step}.started").write_text(str(os.getpid()))
    heavy_mark = folder / f"{ctx.step}.heavy"
    if ctx.step.startswith("heavy"):
        busy = [p.name for p in folder.glob("*.heavy")]
        if busy:
            raise StepError(f"heavy steps overlap: {busy}")
        heavy_mark.write_text("")
    try:
        deadline = time.monotonic() + params.wait
        while not all((folder / f"{other}.started").exists() for other in params.others):
            if time.monotonic() > deadline:
                raise StepError(f"{ctx.step}: {params.others} did not run at the same time")
            time.sleep(0.02)
        time.sleep(params.hold)
    finally:
        heavy_mark.unlink(missing_ok=True)
    (ctx.out_dir / "out.txt").write_text(f"{ctx.step} met {sorted(params.others)}\n")
    return {"threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TF_NUM_INTEROP_THREADS")}}


class CrashParams(Params):
    how: str = Field(pattern="^(segfault|abort|exit|hang-once)$")
    marker: str = Field("", description="hang-once: file holding the worker's pid while it hangs")


def run_crash(ctx, inputs, params: CrashParams):
    print(f"about to {params.how}", flush=True)
    (ctx.out_dir / "half.bin").write_bytes(b"partial")
    if params.how == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif params.how == "abort":
        os.abort()
    elif params.how == "exit":
        os._exit(3)
    elif params.how == "hang-once":  # the first attempt hangs (to be killed); a retry finishes
        marker = Path(params.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(120)
    (ctx.out_dir / "half.bin").write_bytes(b"whole")


STEP_TYPES = [
    StepType("toy-meet", "1.0", Kind.METRICS, run_meet, params=MeetParams, arity=(0, None),
             consumes=(Kind.METRICS, Kind.DATASET, Kind.KERAS_MODEL, Kind.TFLITE), description="waits for others"),
    StepType("toy-meet-heavy", "1.0", Kind.METRICS, run_meet, params=MeetParams, arity=(0, None),
             consumes=(Kind.METRICS, Kind.DATASET, Kind.KERAS_MODEL), heavy=True, description="a heavy toy-meet"),
    StepType("toy-crash", "1.0", Kind.METRICS, run_crash, params=CrashParams, arity=(0, None),
             consumes=(Kind.KERAS_MODEL,), description="crashes its process"),
]


@hookimpl
def tinybuild_step_types():
    return STEP_TYPES
