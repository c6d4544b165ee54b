"""Running one step away from the driver: the job, and local worker processes.

A *job* is plain JSON: where the recipe, cache and build folder are, the
step's name and key, and its input artifacts (paths, file digests, metrics).
A worker loads the same project (recipe + plugins) once, runs the step with
the very code the serial build uses (:meth:`Executor._run`: scratch folder,
log capture, atomic install of every output into the cache's object store)
and answers with the action entry as JSON. The driver verifies the entry and
decides what is cached; a worker never writes an action entry or the lock.

Local workers are ``spawn``-ed processes (never ``fork``: a forked
TensorFlow or Ray is unsafe), one step at a time each, so a native crash
(segfault, abort, ``os._exit``) kills a worker, not the build. Nothing but
paths and JSON crosses the pipe: models stay in files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .api import Artifact

#: environment variables that cap a library's thread pool (read when the
#: library loads, which in a worker is after they are set). TensorFlow's
#: intra-op pool is not among them: its size changes float results, so the
#: TensorFlow helper pins it (``tinybuild_plugins.sdk.tf.INTRA_OP_THREADS``)
#: whatever ``-j`` is, and the scheduler counts a heavy step as that many cores
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")
#: environment that names the plugins to load: a worker must load the driver's set
PLUGIN_VARS = ("TINYBUILD_PLUGINS", "TINYBUILD_DISABLE_PLUGINS")


def cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_env(threads: int) -> dict[str, str]:
    """Thread caps for one step: OpenMP/BLAS pools get ``threads``, and
    TensorFlow's inter-op pool (which runs independent ops side by side, no
    effect on results) gets 1: the built-in steps run one op graph at a time."""
    env = {name: str(threads) for name in THREAD_VARS}
    env["TF_NUM_INTEROP_THREADS"] = "1"
    return env


# -- the job (JSON both ways) ------------------------------------------------------


def make_job(executor: Any, step_name: str, artifacts: Mapping[str, Artifact], key: str) -> dict[str, Any]:
    project = executor.project
    step = project.steps[step_name]
    return {
        "recipe": str(project.recipe.path), "cache": str(project.cache.root), "out": str(project.out_dir.parent),
        "disabled": list(project.registry.disabled), "step": step_name, "key": key,
        "inputs": {d: artifact_json(artifacts[d]) for d in step.dependencies},
    }


def artifact_json(a: Artifact) -> dict[str, Any]:
    return {"step": a.step, "kind": a.kind, "path": str(a.path), "files": dict(a.files), "digest": a.digest,
            "metrics": a.metrics}


def artifact_from_json(raw: Mapping[str, Any]) -> Artifact:
    return Artifact(step=raw["step"], kind=raw["kind"], path=Path(raw["path"]), files=dict(raw["files"]),
                    digest=raw["digest"], metrics=dict(raw["metrics"]))


_PROJECTS: dict[str, Any] = {}


def _project_for(job: Mapping[str, Any]) -> Any:
    """The job's project, loaded once per worker (plugins import once)."""
    from .project import load_project

    ident = json.dumps([job["recipe"], job["cache"], job["out"], job["disabled"]])
    if ident not in _PROJECTS:
        _PROJECTS[ident] = load_project(job["recipe"], cache_dir=job["cache"], out_dir=job["out"],
                                        disabled=job["disabled"])
    return _PROJECTS[ident]


class _Forward:
    """Stands in for :class:`tinybuild.plugins.Hooks` in a worker: a step's
    progress and log messages go back to the driver, which shows them."""

    def __init__(self, send: Callable[[dict[str, Any]], None]):
        self.send = send

    def step_progress(self, step: str, completed: float, total: float | None, description: str) -> None:
        self.send({"type": "progress", "args": [step, completed, total, description]})

    def step_log(self, step: str, message: str) -> None:
        self.send({"type": "log", "args": [step, message]})


def run_job(job: Mapping[str, Any], send: Callable[[dict[str, Any]], None] = lambda _m: None,
            scratch: Path | None = None, artifacts: Mapping[str, Artifact] | None = None) -> dict[str, Any]:
    """Run one step; ``{"entry": ..., "stable": ...}`` or ``{"failed": ..., "gate": ...}``.

    ``scratch`` moves the cache's scratch area (step folders, half-written
    objects) to a folder of this worker's own, which the driver removes if
    the worker dies. ``artifacts`` replaces the job's input paths (a Ray
    worker without the driver's file system materializes them itself).
    """
    from .executor import Executor, _StepFailure
    from .keys import step_key
    from .plan import material_for

    try:
        project = _project_for(job)
        step = project.steps.get(job["step"])
        if step is None:
            return {"failed": f"step '{job['step']}' is no longer in {job['recipe']} (edited during the build?)",
                    "gate": False}
        inputs = dict(artifacts) if artifacts is not None else {n: artifact_from_json(a) for n, a in job["inputs"].items()}
        material = material_for(project, step, {d: inputs[d].digest for d in step.dependencies},
                                {d: inputs[d].metrics for d in step.dependencies})
        if step_key(material) != job["key"]:
            return {"failed": f"the worker computed another key for step '{step.name}': the recipe, a plugin or an "
                              "input file changed during the build; run the build again", "gate": False}
        if scratch is not None:
            project.cache.tmp = scratch
        entry, stable = Executor(project, _Forward(send))._run(step, inputs)
    except _StepFailure as failure:
        return {"failed": str(failure), "gate": failure.gate}
    except Exception as exc:  # the worker's own machinery (loading the recipe, plugins): report, don't die
        return {"failed": f"worker error: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}", "gate": False}
    return {"entry": entry.to_json(), "stable": stable}


# -- local worker processes ------------------------------------------------------------


def _worker_main(conn: Any, env: Mapping[str, str], scratch: str) -> None:
    """A worker process: apply the thread caps before anything heavy loads,
    then run jobs one at a time until the pipe closes. SIGINT is the driver's
    to handle (a terminal sends it to the whole process group); SIGTERM ends
    the step like Ctrl-C ends a serial build, cleaning its scratch folder."""
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)

    def send(message: dict[str, Any]) -> None:
        conn.send_bytes(json.dumps(message).encode("utf-8"))

    try:
        while True:
            try:
                raw = conn.recv_bytes()
            except (EOFError, OSError):
                return
            result = run_job(json.loads(raw), send, Path(scratch))
            send({"type": "done", "result": result})
    except KeyboardInterrupt:
        return
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class _Worker:
    process: Any
    conn: Any
    scratch: Path
    step: str | None = None
    job: dict[str, Any] | None = None
    started: float = 0.0


def death_cause(exitcode: int | None) -> str:
    if exitcode is None:
        return "lost"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode} without finishing the step"


#: deaths that come from outside (the OOM killer, an operator, a lost
#: machine): the step itself may be fine, so it is retried once
EXTERNAL_DEATHS = {-signal.SIGKILL, -signal.SIGTERM}


class LocalPool:
    """Up to ``jobs`` spawned worker processes, started when first needed (a
    cached build starts none). Events: ``("progress"|"log", step, args)``,
    ``("done", step, result)``, ``("lost", step, (cause, retry))``."""

    def __init__(self, cache_tmp: Path, jobs: int, threads: int):
        import multiprocessing

        self.context = multiprocessing.get_context("spawn")
        self.cache_tmp = cache_tmp
        self.jobs = jobs
        self.env = {**thread_env(threads), **{k: os.environ[k] for k in PLUGIN_VARS if k in os.environ}}
        self.workers: list[_Worker] = []
        self.retried: set[str] = set()

    @property
    def free(self) -> int:
        return self.jobs - sum(1 for w in self.workers if w.step is not None)

    def _spawn(self) -> _Worker:
        scratch = self.cache_tmp / f"worker-{uuid.uuid4().hex[:12]}"
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker_main, args=(child, self.env, str(scratch)),
                                       name="tinybuild-worker", daemon=True)
        process.start()
        child.close()
        worker = _Worker(process, parent, scratch)
        self.workers.append(worker)
        return worker

    def submit(self, step: str, job: dict[str, Any]) -> None:
        for idle in [w for w in self.workers if w.step is None and not w.process.is_alive()]:
            self._discard(idle)  # died between steps (killed from outside): replaced below
        data = json.dumps(job).encode("utf-8")
        worker = next((w for w in self.workers if w.step is None), None) or self._spawn()
        try:
            worker.conn.send_bytes(data)
        except OSError:  # it died just now: a fresh one takes the step
            self._discard(worker)
            worker = self._spawn()
            worker.conn.send_bytes(data)
        worker.step, worker.job, worker.started = step, job, time.perf_counter()

    def events(self, timeout: float) -> list[tuple[str, str, Any]]:
        from multiprocessing.connection import wait

        busy = [w for w in self.workers if w.step is not None]
        if not busy:
            return []
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
        out: list[tuple[str, str, Any]] = []
        for w in busy:
            if w.conn in ready:
                self._drain(w, out)
            if w.step is not None and (w.process.sentinel in ready or not w.process.is_alive()):
                self._drain(w, out)  # a message may have arrived just before it died
                if w.step is not None:
                    out.append(self._bury(w))
        return out

    def _drain(self, w: _Worker, out: list[tuple[str, str, Any]]) -> None:
        try:
            while w.step is not None and w.conn.poll():
                message = json.loads(w.conn.recv_bytes())
                if message["type"] == "done":
                    out.append(("done", w.step, message["result"]))
                    w.step = w.job = None
                else:
                    out.append((message["type"], w.step, message["args"]))
        except (EOFError, OSError):
            pass

    def _bury(self, w: _Worker) -> tuple[str, str, Any]:
        """A worker died mid-step: reap it, remove what it half wrote."""
        w.process.join(5)
        code = w.process.exitcode
        step, job = w.step, w.job
        self._discard(w)
        retry = code in EXTERNAL_DEATHS and step not in self.retried
        if retry:
            self.retried.add(step)
        return "lost", step, (death_cause(code), retry, job)

    def _discard(self, w: _Worker) -> None:
        with_suppress(w.conn.close)
        shutil.rmtree(w.scratch, ignore_errors=True)  # never follows links; half-written objects live here
        if w in self.workers:
            self.workers.remove(w)

    def close(self, grace: float = 5.0) -> None:
        """Stop every worker: idle ones by closing their pipe, busy ones with
        SIGTERM (their step cleans its scratch), then SIGKILL after ``grace``."""
        for w in self.workers:
            if w.step is not None and w.process.is_alive():
                w.process.terminate()
            with_suppress(w.conn.close)
        deadline = time.monotonic() + grace
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
            shutil.rmtree(w.scratch, ignore_errors=True)
        self.workers.clear()


def with_suppress(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:
        pass
