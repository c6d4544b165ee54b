"""``--executor ray``: each step that has to run becomes a Ray task.

The driver stays the driver (:mod:`tinybuild.scheduler`): it plans, computes
keys, looks up the caches, and records what a task returns. A task gets a
JSON job and runs the step with :func:`tinybuild.workers.run_job`, reserving
the resources its step type declares: one CPU, or two for heavy steps (their
TensorFlow runs two intra-op threads), OpenMP/BLAS pools capped to match, and
``gpus`` where the cluster has them. Data moves through the cache:

* **shared folder** (default): the cache and the build folder are on a file
  system every node sees (one machine, NFS...); a task reads its inputs from
  the build folder and installs its outputs into the cache's object store;
* **remote cache** (``--remote-cache URL``): a task downloads its inputs by
  digest from the remote into a cache of its own, runs, and uploads its
  outputs' objects; the driver downloads them (verifying every digest) and
  records the entry. The recipe and the files it names must still be at the
  same path on every node (a shared checkout or the same image).

Ray is imported only when a step has to run: a cached build never loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .errors import UsageError
from .scheduler import HEAVY_CORES, Scheduler
from .workers import PLUGIN_VARS, artifact_from_json, run_job, thread_env

#: seconds to wait for a cluster's address to answer before giving up
CONNECT_TIMEOUT = 3.0


def check_address(address: str) -> None:
    """Fail fast (exit 2) when a ``host:port`` address does not answer:
    ``ray.init`` itself would retry for a long time."""
    target = address.split("://", 1)[-1]
    if target in ("auto", "local", ""):
        return
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--ray-address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise UsageError(f"--ray-address {address}: no Ray cluster answers there ({exc}); start one with "
                         "`ray start --head` or fix the address (also $RAY_ADDRESS)") from None


def ray_scheduler(project: Any, address: str | None, jobs: int | None) -> Scheduler:
    if address:
        check_address(address)
    remote = project.remote
    if remote is not None and not remote.push_enabled:
        raise UsageError("--executor ray with --remote-cache moves step outputs through the remote cache, "
                         "so it must be writable: drop --no-push (or drop --remote-cache on a shared file system)")
    # Ray queues tasks by the resources they reserve: the driver submits every ready step
    return Scheduler(lambda: RayPool(project, address, jobs), heavy_slots=1 << 30, label="Ray worker")


def ray_task(job_text: str) -> str:
    """The Ray task: one step, JSON in, JSON out (module-level, so Ray ships
    it by reference)."""
    job = json.loads(job_text)
    if job.get("remote"):
        return json.dumps(_run_through_remote(job))
    scratch = Path(job["scratch"])
    try:
        return json.dumps(run_job(job, scratch=scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_through_remote(job: dict[str, Any]) -> dict[str, Any]:
    from .api import Artifact
    from .cache import Cache
    from .remote import RemoteCache

    root = Path(os.environ.get("TINYBUILD_WORKER_CACHE") or Path(tempfile.gettempdir()) / "tinybuild-ray-worker")
    local = Cache(root / "cache")
    remote = RemoteCache(job["remote"])
    # inside the worker cache's tmp/: the step's scratch must lie under its cache (safefs containment)
    work = local.root / "tmp" / "jobs" / uuid.uuid4().hex
    try:
        inputs = {}
        for name, raw in job["inputs"].items():
            a = artifact_from_json(raw)
            for rel, digest in a.files.items():
                remote.download_object(digest, raw["sizes"][rel], local)
            local.materialize(a.files, work / "inputs" / name)
            inputs[name] = Artifact(step=a.step, kind=a.kind, path=work / "inputs" / name, files=a.files,
                                    digest=a.digest, metrics=a.metrics)
        result = run_job({**job, "cache": str(local.root), "out": str(root / "out")}, scratch=work / "tmp",
                         artifacts=inputs)
        if "entry" in result:
            entry = result["entry"]
            for rel, digest in entry["files"].items():
                remote.upload_object(digest, entry["sizes"][rel], local)
        return result
    except Exception as exc:
        return {"failed": f"moving data through the remote cache {job['remote']}: {type(exc).__name__}: {exc}",
                "gate": False}
    finally:
        shutil.rmtree(work, ignore_errors=True)


class RayPool:
    """Steps as Ray tasks (see :class:`tinybuild.scheduler.Scheduler` for the
    pool interface). A task whose worker dies is retried once by Ray
    (``max_retries=1``); after that it is a failed step naming the cause."""

    free = 1 << 30  # Ray queues by resources: never hold a ready step back

    def __init__(self, project: Any, address: str | None, jobs: int | None):
        import logging

        import ray

        self.ray = ray
        self.project = project
        self.started_here = not address
        base = {k: os.environ[k] for k in PLUGIN_VARS if k in os.environ}
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            # "local": always a fresh instance; None would join whatever cluster a stale
            # /tmp/ray/ray_current_cluster names (and wait for it forever if it is gone)
            ray.init(address=address or "local", num_cpus=None if address else jobs, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING, configure_logging=True,
                     runtime_env={"env_vars": base})
        except Exception as exc:  # ConnectionError, a version mismatch, ...
            raise UsageError(f"--ray-address {address or '(local)'}: could not connect to Ray "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        finally:  # Ray's core worker installs native handlers that would end the driver without cleanup
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        biggest = max((int(r.get("CPU", 1)) for r in nodes), default=1)
        self.heavy_cpus = max(1, min(HEAVY_CORES, biggest))
        self.has_gpus = any(r.get("GPU", 0) > 0 for r in nodes)
        self.envs = {heavy: {"env_vars": {**base, **thread_env(self.heavy_cpus if heavy else 1)}} for heavy in (False, True)}
        self.task = ray.remote(ray_task)
        self.refs: dict[Any, tuple[str, dict[str, Any]]] = {}

    def submit(self, step: str, job: dict[str, Any]) -> None:
        st = self.project.steps[step].step_type
        job = dict(job)
        if self.project.remote is not None:
            self._prepare_remote(job)
        else:
            job["scratch"] = str(self.project.cache.tmp / f"ray-{uuid.uuid4().hex[:12]}")
        ref = self.task.options(num_cpus=self.heavy_cpus if st.heavy else 1,
                                num_gpus=st.gpus if (st.gpus and self.has_gpus) else 0,
                                max_retries=1, name=f"tinybuild:{step}", runtime_env=self.envs[st.heavy]).remote(json.dumps(job))
        self.refs[ref] = (step, job)

    def _prepare_remote(self, job: dict[str, Any]) -> None:
        """Inputs travel by digest: make sure the remote has them, tell the task their sizes."""
        cache, remote = self.project.cache, self.project.remote
        job["remote"] = remote.url
        for raw in job["inputs"].values():
            raw["sizes"] = {}
            for rel, digest in raw["files"].items():
                size = cache.object_path(digest).stat().st_size
                remote.upload_object(digest, size, cache)
                raw["sizes"][rel] = size

    def events(self, timeout: float) -> list[tuple[str, str, Any]]:
        if not self.refs:
            return []
        ray = self.ray
        ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        out = []
        for ref in ready:
            step, job = self.refs.pop(ref)
            try:
                result = json.loads(ray.get(ref))
            except ray.exceptions.RayError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                out.append(("lost", step, (f"lost ({type(exc).__name__}: {first}) after one retry", False, job)))
                self._cleanup(job)
                continue
            self._cleanup(job)
            if "entry" in result and self.project.remote is not None:
                result = self._fetch_outputs(step, result)
            out.append(("done", step, result))
        return out

    def _fetch_outputs(self, step: str, result: dict[str, Any]) -> dict[str, Any]:
        entry = result["entry"]
        try:
            for rel, digest in entry["files"].items():
                self.project.remote.download_object(digest, entry["sizes"][rel], self.project.cache)
        except Exception as exc:
            return {"failed": f"fetching the outputs of step '{step}' from {self.project.remote.url}: "
                              f"{type(exc).__name__}: {exc}", "gate": False}
        return result

    def _cleanup(self, job: dict[str, Any]) -> None:
        if "scratch" in job:
            shutil.rmtree(job["scratch"], ignore_errors=True)

    def close(self) -> None:
        """Cancel what still runs (its workers are killed), remove its scratch, disconnect.

        Tasks that already finished are left alone: Ray 2.60 can abort the driver
        when a cancel races with a completion it is still processing
        (``task_manager.cc``: ``it != submissible_tasks_.end()``)."""
        try:
            _, running = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0, fetch_local=False)
        except Exception:
            running = list(self.refs)
        for ref in running:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        if self.refs:
            try:
                self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=10)
            except Exception:
                pass
        for _, job in self.refs.values():
            self._cleanup(job)
        self.refs.clear()
        self.ray.shutdown()
