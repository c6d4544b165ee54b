"""Running ready steps concurrently: a ready queue over the DAG.

The driver keeps every decision: a step becomes *ready* when all its
dependencies are resolved; the driver computes its key, looks it up in the
local and remote cache (a hit resolves it at once, so early cutoff works as
in a serial build) and only on a miss hands a JSON job to a pool (local
worker processes, :mod:`tinybuild.workers`, or Ray, :mod:`tinybuild.ray_executor`).
When the pool answers, the driver verifies the entry (shape, digest, every
object present and intact while it is materialized), records it and updates
the lock. Ready steps are taken in the serial run order, so the same recipe
dispatches in the same order every time.

Heavy steps (``StepType.heavy``: training, pruning...) take one of a limited
number of slots so N jobs never run more of them than the cores hold.
"""

from __future__ import annotations

import heapq
import time
from typing import Any, Mapping, Sequence

from .cache import ActionEntry
from .hashing import artifact_digest
from .plan import run_reasons

#: how long the driver waits for a worker event before checking again (s)
POLL = 0.5


class Scheduler:
    """Drives a pool: ``submit(step, job)``, ``events(timeout)``, ``free``,
    ``close()``; ``heavy_slots`` bounds concurrent heavy steps."""

    def __init__(self, make_pool: Any, heavy_slots: int, label: str = "worker"):
        self.make_pool = make_pool
        self.heavy_slots = max(1, heavy_slots)
        self.label = label

    def run(self, ex: Any, selected: Sequence[str], result: Any, lock: Mapping[str, Any],
            new_lock: dict[str, dict[str, Any]], options: Any) -> None:
        from .executor import STOPPED, _StepFailure
        from .workers import make_job

        project = ex.project
        order = {name: i for i, name in enumerate(selected)}
        chosen = set(selected)
        waiting = {n: {d for d in project.steps[n].dependencies if d in chosen} for n in selected}
        dependents: dict[str, list[str]] = {n: [] for n in selected}
        for n, deps in waiting.items():
            for d in deps:
                dependents[d].append(n)
        ready = [order[n] for n, deps in waiting.items() if not deps]
        heapq.heapify(ready)
        queued: list[tuple[int, str, dict[str, Any], str, bool]] = []  # (order, step, material, key, heavy)
        running: dict[str, tuple[dict[str, Any], str, float, bool]] = {}
        stopped = False
        pool = None

        def resolved(name: str) -> None:
            for child in dependents[name]:
                waiting[child].discard(name)
                if not waiting[child]:
                    heapq.heappush(ready, order[child])

        def fail(name: str, failure: _StepFailure) -> None:
            nonlocal stopped
            ex.record_failure(name, failure, result, selected)
            if not options.keep_going:
                stopped = True
            resolved(name)

        try:
            while ready or queued or running:
                while ready:  # the driver's half: keys, cache lookups, early cutoff
                    name = selected[heapq.heappop(ready)]
                    step = project.steps[name]
                    blocked = [d for d in step.dependencies if d in result.failed or d in result.gated or d in result.skipped]
                    if blocked or stopped:
                        result.skipped[name] = f"upstream {blocked[0]} did not build" if blocked else STOPPED
                        resolved(name)
                        continue
                    try:
                        hit, material, key = ex.lookup(step, result, lock, name in options.force)
                    except _StepFailure as failure:
                        fail(name, failure)
                        continue
                    if hit is not None:
                        result.artifacts[name], new_lock[name] = hit
                        resolved(name)
                    else:
                        queued.append((order[name], name, material, key, step.step_type.heavy))
                if stopped:
                    for _, name, *_ in queued:
                        result.skipped[name] = STOPPED
                        resolved(name)
                    queued.clear()
                    if ready:
                        continue
                if queued:
                    pool = pool or self.make_pool()
                    heavy_running = sum(1 for *_, heavy in running.values() if heavy)
                    for item in sorted(queued):
                        if pool.free <= 0:
                            break
                        _, name, material, key, heavy = item
                        if heavy and heavy_running >= self.heavy_slots:
                            continue
                        step = project.steps[name]
                        ex.hooks.step_started(name, step.step_type.name, run_reasons(material, step, lock, name in options.force))
                        pool.submit(name, make_job(ex, name, result.artifacts, key))
                        running[name] = (material, key, time.perf_counter(), heavy)
                        heavy_running += heavy
                        queued.remove(item)
                if not running:
                    continue
                for kind, name, payload in pool.events(POLL):
                    if kind == "progress":
                        ex.hooks.step_progress(*payload)
                    elif kind == "log":
                        ex.hooks.step_log(*payload)
                    elif kind == "lost":
                        cause, retry, job = payload
                        if retry:
                            ex.hooks.step_log(name, f"{self.label} running step '{name}' was {cause}; retrying it once")
                            pool.submit(name, job)
                            continue
                        running.pop(name)
                        fail(name, _StepFailure(self._lost_message(ex, name, cause)))
                    elif kind == "done":
                        material, key, started, _ = running.pop(name)
                        try:
                            entry, stable = self._verify(ex, name, payload)
                            artifact, lock_entry = ex.record_run(project.steps[name], result, material, key, entry,
                                                                 stable, time.perf_counter() - started)
                        except _StepFailure as failure:
                            fail(name, failure)
                            continue
                        result.artifacts[name] = artifact
                        if lock_entry is not None:
                            new_lock[name] = lock_entry
                        resolved(name)
        finally:
            if pool is not None:
                pool.close()

    def _lost_message(self, ex: Any, name: str, cause: str) -> str:
        from .capture import tail

        log = ex.project.out_dir / ".logs" / f"{name}.log"
        output = "".join(f"\n  | {line}" for line in tail(log))
        return (f"the {self.label} running step '{name}' was {cause} (a crash in native code, or the process was "
                f"killed); nothing it wrote was cached" + (f"\nlast output ({log}):{output}" if output else ""))

    @staticmethod
    def _verify(ex: Any, name: str, payload: Mapping[str, Any]) -> tuple[ActionEntry, bool]:
        """A worker's answer, checked before anything is recorded: a failure
        it reports, or an entry of the right shape, kind and digest whose
        objects are in the store (their content is verified as they are
        materialized into the build folder)."""
        from .executor import _StepFailure

        if "failed" in payload:
            raise _StepFailure(str(payload["failed"]), gate=bool(payload.get("gate")))
        step_type = ex.project.steps[name].step_type
        try:
            entry = ActionEntry.from_json(payload["entry"])
        except (KeyError, ValueError, TypeError) as exc:
            raise _StepFailure(f"the worker of step '{name}' returned a malformed entry ({exc})") from None
        if entry.kind != step_type.produces or entry.digest != artifact_digest(entry.kind, entry.files):
            raise _StepFailure(f"the worker of step '{name}' returned an entry whose kind or digest does not match its files")
        missing = [rel for rel, digest in entry.files.items() if not ex.cache.has_object(digest)]
        if missing:
            raise _StepFailure(f"the worker of step '{name}' returned file {missing[0]!r}, which is not in the cache "
                               f"{ex.cache.root} (does the worker share it?)")
        return entry, bool(payload.get("stable"))


#: cores a heavy step keeps busy: TensorFlow steps run with a pinned intra-op
#: pool of 2 threads (see ``tinybuild_plugins.sdk.tf.INTRA_OP_THREADS``)
HEAVY_CORES = 2


def local_scheduler(cache_tmp: Any, jobs: int) -> Scheduler:
    """``-j N``: N local worker processes; each step's OpenMP/BLAS pools get an
    equal share of the cores, and no more heavy steps run at once than the
    cores hold (``cores // HEAVY_CORES``, at least one)."""
    from .workers import LocalPool, cores

    n = cores()
    return Scheduler(lambda: LocalPool(cache_tmp, jobs, max(1, n // jobs)), heavy_slots=min(jobs, max(1, n // HEAVY_CORES)))
