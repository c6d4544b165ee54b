"""Running a plan: each step in topological order, cached or executed.

For a step to run, the executor computes its key from its inputs' *output
digests* (so an upstream rebuild that yields identical bytes leaves it
cached: early cutoff), runs the plugin in a scratch folder, stores every
output file in the object store and only then records the action entry.
Inputs are fingerprinted before the run and checked after it; if anything
changed underneath, the result is used for this build but not cached.
"""

from __future__ import annotations

import gc
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import safefs
from .api import Artifact, GateFailed, StepError
from .cache import ActionEntry, CorruptObject
from .capture import output_to, tail
from .context import RunContext
from .graph import downstream
from .hashing import artifact_digest, canonical_json, list_files
from .keys import step_input_paths, target_for
from .shapes import STEP_NAME
from .lockfile import entry_texts, lock_entry, read_lock, write_lock
from .plan import keyed_material, make_plan, run_reasons
from .plugins import Hooks
from .project import Project
from .resolve import ResolvedStep


@dataclass
class BuildOptions:
    only: Sequence[str] = ()
    force: Sequence[str] = ()
    keep_going: bool = False


@dataclass
class BuildResult:
    built: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    pulled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    gated: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    uncached: list[str] = field(default_factory=list)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    seconds: float = 0.0
    remote: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        if self.failed:
            return 1
        if self.gated:
            return 3
        return 0

    def summary(self) -> dict[str, Any]:
        out = {"built": self.built, "cached": self.cached, "failed": sorted({**self.failed, **self.gated}),
               "skipped": sorted(self.skipped), "exit_code": self.exit_code, "seconds": round(self.seconds, 3)}
        if self.remote is not None:  # steps pulled from the remote are not in "cached" (local hits)
            out.update(pulled=self.pulled, remote=self.remote)
        return out


class _StepFailure(Exception):
    """A step failed (``gate``: a budget gate failed); the build goes on without it."""

    def __init__(self, message: str, gate: bool = False):
        super().__init__(message)
        self.gate = gate


def _jsonable(value: Any) -> Any:
    """Metrics as plain JSON: numpy scalars/arrays become Python numbers/lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalar or array
        return _jsonable(value.tolist())
    return value


STOPPED = "build stopped after a failure (use --keep-going to build other branches)"


@contextmanager
def collecting() -> Iterator[None]:
    """The cycle collector on while other code runs long in this process: the
    CLI turns it off for its bookkeeping (see ``cli.main``), but a plugin's
    run (a training loop, TensorFlow's graphs) and the observers a ``-j`` or
    Ray driver replays every forwarded event into build reference cycles that
    only the collector frees. Restored after, as it was.

    What the bookkeeping allocated meanwhile (the parsed lock file, stamp and
    configuration entry: 2 MB at 1,000 steps) is frozen first, so that the
    first collections do not walk it all: that cost a one-step rebuild of a
    1,000-step recipe 18 ms. It is unfrozen after (and freed by reference
    counting, as before); a caller's own frozen objects are left alone."""
    was = gc.isenabled()
    freeze = not was and gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    gc.enable()
    try:
        yield
    finally:
        if not was:
            gc.disable()
        if freeze:
            gc.unfreeze()


class Executor:
    """The driver: plans, keys, early cutoff, lock file and console events.

    ``scheduler`` (see :mod:`tinybuild.scheduler`) runs steps in worker
    processes or on Ray; without one every step runs here, in order.
    """

    def __init__(self, project: Project, hooks: Hooks, scheduler: Any = None,
                 known: Mapping[str, tuple[Artifact, dict[str, Any]]] | None = None):
        """``known``: (artifact, lock entry) of steps already known to be cached
        and in place (:mod:`tinybuild.delta` checked them with the no-op stamp):
        they are neither keyed nor looked up again, only reported cached."""
        self.project = project
        self.hooks = hooks
        self.cache = project.cache
        self.scheduler = scheduler
        self.known = dict(known or {})

    # -- the build loop -------------------------------------------------------

    def build(self, options: BuildOptions) -> BuildResult:
        project = self.project
        project.check_names(options.force, "--force")
        selected = project.select(options.only)
        lock = read_lock(project.lock_path)
        chosen = set(selected)
        known = {name: hit[0] for name, hit in self.known.items() if name in chosen}
        # plan-time checks (missing files) before anything runs
        make_plan(project, [n for n in selected if n not in known], lock, options.force, known)
        result = BuildResult()
        new_lock: dict[str, dict[str, Any]] = {k: v for k, v in lock.items() if k in project.steps}
        started = time.perf_counter()
        self.hooks.build_started(str(project.recipe.path), selected)
        try:
            if self.scheduler is not None:  # -j N / --executor ray: steps in workers (tinybuild.scheduler)
                with collecting():  # the driver runs observers' hooks for every forwarded event meanwhile
                    self.scheduler.run(self, selected, result, lock, new_lock, options)
            else:
                self._serial(selected, result, lock, new_lock, options)
        finally:
            result.seconds = time.perf_counter() - started
            if project.remote is not None:
                result.remote = project.remote.describe()
            if new_lock != lock:
                write_lock(project.lock_path, project.recipe.meta.name, new_lock, self._known_texts(new_lock))
                self._remove_stale_outputs(lock)
            self.cache.register_lock(project.lock_path)
            self.cache.memo.save()
        self.hooks.build_finished(str(project.recipe.path), result.summary())
        return result

    def _serial(self, selected: Sequence[str], result: BuildResult, lock: Mapping[str, Any],
                new_lock: dict[str, dict[str, Any]], options: BuildOptions) -> None:
        """Every step in this process, one after another, in run order."""
        project = self.project
        stopped = False
        known = self.known
        for name in selected:
            step = project.steps[name]
            if name in known:  # cached and in place (its inputs are known too): reported so even after a failure
                artifact, entry = known[name]
                result.artifacts[name] = artifact
                new_lock[name] = entry
                result.cached.append(name)
                self.hooks.step_cached(name, step.step_type.name, artifact.digest, "local", None)
                continue
            blocked = [d for d in step.dependencies if d in result.failed or d in result.gated or d in result.skipped]
            if blocked:
                result.skipped[name] = f"upstream {blocked[0]} did not build"
                continue
            if stopped:
                result.skipped[name] = STOPPED
                continue
            try:
                artifact, entry = self._step(step, result, lock, name in options.force)
                result.artifacts[name] = artifact
                if entry is not None:
                    new_lock[name] = entry
            except _StepFailure as failure:
                self.record_failure(name, failure, result, selected)
                if not options.keep_going:
                    stopped = True

    def _known_texts(self, new_lock: Mapping[str, Any]) -> dict[str, str]:
        """The lock file's own text of the known steps' entries, for those
        written back unchanged (the caller vouched for the file: see ``known``)."""
        if not self.known:
            return {}
        texts = entry_texts(self.project.lock_path)
        return {name: texts[name] for name, (_, entry) in self.known.items()
                if name in texts and new_lock.get(name) is entry}

    def _remove_stale_outputs(self, lock: Mapping[str, Any]) -> None:
        """Remove the output folders of steps the lock file lists but the
        recipe no longer has (renamed or deleted): left behind, an old
        ``fw/`` next to the new ``firmware/`` is a firmware image nobody
        builds any more. Only those names, only below the build folder,
        never through a link (:mod:`tinybuild.safefs`)."""
        project = self.project
        for name in lock:
            if name in project.steps or not STEP_NAME.fullmatch(name):
                continue
            try:
                safefs.remove(project.step_out_dir(name), project.out_dir)
            except (OSError, safefs.UnsafePath):
                pass  # left for `tinybuild clean`; a failed cleanup must not fail the build

    def record_failure(self, name: str, failure: "_StepFailure", result: BuildResult, selected: Sequence[str]) -> None:
        (result.gated if failure.gate else result.failed)[name] = str(failure)
        skipped = sorted(downstream(self.project.dag, name) & set(selected), key=selected.index)
        self.hooks.step_failed(name, self.project.steps[name].step_type.name, str(failure), skipped)

    # -- one step -------------------------------------------------------------

    def _step(self, step: ResolvedStep, result: BuildResult, lock: Mapping[str, Any], forced: bool) -> tuple[Artifact, dict[str, Any] | None]:
        hit, material, key = self.lookup(step, result, lock, forced)
        if hit is not None:
            return hit
        self.hooks.step_started(step.name, step.step_type.name, run_reasons(material, step, lock, forced))
        started = time.perf_counter()
        entry, stable = self._run(step, result.artifacts)
        return self.record_run(step, result, material, key, entry, stable, time.perf_counter() - started)

    def lookup(self, step: ResolvedStep, result: BuildResult, lock: Mapping[str, Any],
               forced: bool) -> tuple[tuple[Artifact, dict[str, Any]] | None, dict[str, Any], str]:
        """The driver's half before a run: key material, key, and the cached
        (artifact, lock entry) when the local or remote cache has the step."""
        artifacts = result.artifacts
        digests = {d: artifacts[d].digest for d in step.dependencies}
        material, key = keyed_material(self.project, step, digests, {d: artifacts[d].metrics for d in step.dependencies})
        entry = None if forced else self.cache.get_action(key, step.step_type.produces)
        source = "local"
        if entry is None and not forced and self.project.remote is not None:
            entry = self.project.remote.pull(key, self.cache, step.step_type.produces)
            source = "remote"
        if entry is not None:
            try:
                artifact = self._materialize(step.name, entry)
            except CorruptObject as exc:  # quarantined by the cache; the step is rebuilt below
                self.hooks.step_log(step.name, f"warning: {exc}, quarantined; rebuilding step '{step.name}'")
                entry = None
            except FileNotFoundError:  # removed since it was looked up (another process's gc)
                self.hooks.step_log(step.name, f"warning: a cache object of step '{step.name}' vanished; rebuilding it")
                entry = None
        if entry is not None:
            transfer = None
            if source == "remote":
                last = self.project.remote.last_pull
                transfer = {"bytes": last.bytes, "seconds": round(last.seconds, 3)}
            self.hooks.step_cached(step.name, step.step_type.name, entry.digest, source, transfer)
            (result.pulled if source == "remote" else result.cached).append(step.name)
            return (artifact, lock_entry(key, material, list(step.inputs), entry.kind, entry.files, entry.digest)), material, key
        return None, material, key

    def record_run(self, step: ResolvedStep, result: BuildResult, material: dict[str, Any], key: str,
                   entry: ActionEntry, stable: bool, seconds: float) -> tuple[Artifact, dict[str, Any] | None]:
        """The driver's half after a run (here or in a worker): materialize the
        outputs (verifying every object), record the action entry, push it."""
        try:
            artifact = self._materialize(step.name, entry)
        except CorruptObject as exc:  # only if the store is damaged while we write it
            raise _StepFailure(f"{exc}; run the build again") from None
        result.built.append(step.name)
        if stable:
            self.cache.put_action(key, entry)
            if self.project.remote is not None:
                self.project.remote.push(key, entry, self.cache)
        else:
            result.uncached.append(step.name)
            self.hooks.step_log(step.name, "an input changed while the step ran: its result is used but NOT cached")
        self.hooks.step_finished(step.name, step.step_type.name, entry.digest, seconds, entry.metrics)
        if not stable:
            return artifact, None
        return artifact, lock_entry(key, material, list(step.inputs), entry.kind, entry.files, entry.digest)

    def _run(self, step: ResolvedStep, artifacts: Mapping[str, Artifact]) -> tuple[ActionEntry, bool]:
        project = self.project
        st = step.step_type
        scratch = self.cache.scratch_dir(step.name)
        out = scratch / "out"
        out.mkdir()
        inputs = [artifacts[name] for name in step.inputs]
        dataset = artifacts.get(step.dataset) if step.dataset else None
        watched = self._watched_files(step, inputs, dataset)
        before = self._fingerprint(watched)
        ctx = RunContext(
            step=step.name, out_dir=out, seed=project.recipe.meta.seed, recipe_dir=project.recipe.dir,
            dataset=dataset, recipe_name=project.recipe.meta.name,
            target=target_for(step.step_type.uses_target, project.recipe.target.model_dump(exclude_none=True)) or {},
            passes=project.registry.passes, on_progress=self.hooks.step_progress, on_log=self.hooks.step_log,
        )
        log = self._logs() / f"{step.name}.log"
        safefs.remove(log, self.project.out_dir)  # a link planted there goes, its target stays
        try:
            try:
                with output_to(log), collecting():
                    metrics = st.run(ctx, inputs, step.params)
            except StepError as exc:
                raise _StepFailure(str(exc)) from None
            except GateFailed as exc:
                self._keep_failed_output(step.name, out)
                raise _StepFailure(str(exc), gate=True) from None
            except KeyboardInterrupt:
                raise
            except SystemExit as exc:  # a plugin must not end the build (and its exit code) for us
                raise _StepFailure(f"plugin '{step.plugin}' called sys.exit({exc.code!r}) in step '{step.name}'") from None
            except Exception as exc:
                trace = self._write_traceback(step.name)
                output = "".join(f"\n  | {line}" for line in tail(log))
                raise _StepFailure(f"{type(exc).__name__}: {exc}\ntraceback: {trace}"
                                   + (f"\nlast output ({log}):{output}" if output else "")) from None
            try:
                metrics = _jsonable(metrics or {})
                canonical_json(metrics)
            except (TypeError, ValueError) as exc:
                raise _StepFailure(f"plugin '{step.plugin}' returned metrics that are not JSON: {exc}") from None
            rels = list_files(out)
            if not rels:
                raise _StepFailure(f"plugin '{step.plugin}' produced no output files for step '{step.name}'")
            stored = {rel: self.cache.store_file(out / rel) for rel in rels}
        finally:
            try:
                self.cache.remove_scratch(scratch)  # only this build's own folder
            except (OSError, safefs.UnsafePath):
                pass  # left for gc; a failed cleanup must not hide the step's own outcome
        stable = self._fingerprint(watched) == before
        files = {rel: digest for rel, (digest, _) in stored.items()}
        sizes = {rel: size for rel, (_, size) in stored.items()}
        entry = ActionEntry(kind=st.produces, files=files, digest=artifact_digest(st.produces, files), metrics=metrics,
                            sizes=sizes)
        return entry, stable

    # -- helpers --------------------------------------------------------------

    def _watched_files(self, step: ResolvedStep, inputs: Sequence[Artifact], dataset: Artifact | None) -> list[Path]:
        files = [a.path / rel for a in [*inputs, *([dataset] if dataset else [])] for rel in a.files]
        return files + step_input_paths(step)

    def _fingerprint(self, files: Sequence[Path]) -> dict[str, str]:
        out = {}
        for f in files:
            try:
                out[str(f)] = self.cache.memo.digest(f)
            except OSError:
                out[str(f)] = "unreadable"
        return out

    def _materialize(self, name: str, entry: ActionEntry) -> Artifact:
        dest = self.project.step_out_dir(name)
        if not self.cache.in_place(entry.files, dest):  # a rebuild's cached steps: already there, nothing to write
            safefs.ensure_dir(dest, self.project.out_dir)  # a planted link or file there is replaced, not followed
            self.cache.materialize(entry.files, dest)
        return Artifact(step=name, kind=entry.kind, path=dest, files=entry.files, digest=entry.digest, metrics=entry.metrics)

    def _keep_failed_output(self, name: str, out: Path) -> None:
        """A gate failure still leaves its report for the user (not cached)."""
        dest = self.project.step_out_dir(name)
        safefs.ensure_dir(self.project.out_dir, self.project.out_dir)
        safefs.remove(dest, self.project.out_dir)
        shutil.copytree(out, dest, symlinks=True)

    def _logs(self) -> Path:
        """``<build folder>/.logs``, a real folder (a planted link there is replaced)."""
        return safefs.ensure_dir(self.project.out_dir / ".logs", self.project.out_dir)

    def _write_traceback(self, name: str) -> Path:
        path = self._logs() / f"{name}.traceback.txt"
        safefs.atomic_write(path, traceback.format_exc().encode("utf-8"), self.project.out_dir)
        return path
