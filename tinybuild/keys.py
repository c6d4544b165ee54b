"""A step's cache key: a digest over everything that can change its output.

The key material (a JSON-able dict, also stored in the lock file so that
``plan`` can say *why* a key changed) holds:

* ``step_type`` and ``version`` -- the step type's declared name and version;
* ``plugin`` and ``fingerprint`` -- the plugin's name and a digest of the
  source of the module defining ``run`` plus its declared helper modules;
* ``params`` -- validated params with defaults filled in; ``InputFile``
  fields appear as the file's *content* digest, never its path;
* ``files`` -- content digests of further files the step reads;
* ``inputs`` -- content digests of the input artifacts, in order;
* ``dataset`` -- digest of the dataset artifact, for steps that read it;
* ``toolchain`` -- installed versions of the declared distributions, read
  from package metadata (nothing is imported);
* ``seed`` and ``salt`` from the recipe; ``extras`` from the step type;
* ``names`` -- the step's own name and its inputs' names, only for step types
  whose output may depend on them (``StepType.uses_names``, e.g. a C array
  named after its step); content-only steps leave them out, so renaming a
  training step reruns nothing;
* ``target`` -- the recipe's ``[target]`` budgets, for step types that read
  them (``StepType.uses_target``: the report's gates);
* ``input_metrics`` -- digests of the inputs' metrics, for step types whose
  output depends on them (``StepType.uses_input_metrics``), without the
  metrics their producers declare volatile (``StepType.volatile_metrics``:
  timings that change every run and must not defeat early cutoff).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

if typing.TYPE_CHECKING:
    from pydantic import BaseModel

    from .api import GraphPass, Params
    from .resolve import ResolvedStep

from . import configcache
from .api import INPUT_FILE
from .configcache import RecordedParams
from .errors import TinybuildError
from .hashing import bytes_digest, json_digest, stat_signature
from .plugins import module_file, name_and_version
from .safeio import BadPath, NotRegularFile

Digester = Callable[[Path], str]


#: dist -> installed version, looked up once per process; the configuration
#: cache fills it from its record (valid while the import path is unchanged)
VERSIONS: dict[str, str] = {}


def package_version(dist: str) -> str:
    if dist not in VERSIONS:
        from importlib import metadata  # ~15 ms: not needed when the versions are recorded

        try:
            VERSIONS[dist] = name_and_version(metadata.distribution(dist))[1]
        except metadata.PackageNotFoundError:
            VERSIONS[dist] = "not installed"
    return VERSIONS[dist]


def _is_input_file(annotation: Any) -> bool:
    if INPUT_FILE in getattr(annotation, "__metadata__", ()):
        return True
    return any(_is_input_file(a) for a in typing.get_args(annotation))


@lru_cache(maxsize=None)
def _input_file_names(cls: type) -> tuple[str, ...]:
    """The ``InputFile`` fields of a params class (annotations never change
    once a class exists, so this is looked up once per class, not per step)."""
    return tuple(name for name, info in cls.model_fields.items()
                 if (info.metadata and INPUT_FILE in info.metadata) or _is_input_file(info.annotation))


def input_file_fields(params: BaseModel) -> dict[str, Any]:
    """``{field: value}`` for every field typed (optionally, or as a list) ``InputFile``."""
    if isinstance(params, RecordedParams):  # from the configuration cache: the paths as validated then
        return params.file_fields()
    return {name: getattr(params, name) for name in _input_file_names(type(params))}


def step_input_paths(step: ResolvedStep) -> list[Path]:
    """Every file a step reads besides its input artifacts: ``InputFile``
    params (single or lists) and the step type's ``input_files``."""
    paths: list[Path] = []
    for value in input_file_fields(step.params).values():
        if value is not None:
            paths.extend(Path(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    if step.step_type.input_files:
        paths.extend(Path(p) for p in step.step_type.input_files(step.params).values())
    return paths


def _digest_paths(value: Any, digest: Digester, where: str) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_digest_paths(v, digest, f"{where}[{i}]") for i, v in enumerate(value)]
    return {"sha256": digest(Path(value))}


class MissingInputFile(Exception):
    """A file the recipe names cannot be read (missing, a folder, no permission)."""

    def __init__(self, field: str, path: Path, problem: str = "file not found"):
        self.field, self.path, self.problem = field, path, problem
        super().__init__(f"{field}: {problem}: {path}")


def _unreadable(field: str, path: Path, exc: OSError) -> MissingInputFile:
    if isinstance(exc, FileNotFoundError):
        return MissingInputFile(field, path)
    if isinstance(exc, (NotRegularFile, BadPath)):  # a FIFO, a device, a NUL byte...
        return MissingInputFile(field, path, exc.strerror)
    if isinstance(exc, IsADirectoryError):
        return MissingInputFile(field, path, "is a folder, not a file")
    return MissingInputFile(field, path, f"cannot read the file ({exc.strerror or exc})")


def params_material(params: Params, digest: Digester) -> tuple[dict[str, Any], dict[str, str]]:
    """(params as JSON with file fields replaced by digests, {field: path})."""
    dumped = params.model_dump(mode="json")
    paths = {}
    for name, value in input_file_fields(params).items():
        try:
            dumped[name] = _digest_paths(value, digest, name)
        except OSError as exc:
            raise _unreadable(name, Path(exc.filename or str(value)), exc) from None
        if value is not None:
            paths[name] = str(value)
    return dumped, paths


_SOURCES: dict[tuple[str, int, int], str] = {}
#: path -> (stat signature, digest, when read) of every source file a key used
SOURCE_READS: dict[str, tuple[list[int], str, int]] = {}


class SourceChanged(TinybuildError):
    """A source changed after this process imported it (see ``configcache.imported_sources``)."""


def _source_digest(path: str) -> str:
    """Digest of a source file, memoized on (path, mtime, size)."""
    st = os.stat(path)
    if configcache.imported_sources is not None:
        imported = configcache.imported_sources.get(path)
        if imported is not None and imported != stat_signature(st):
            raise SourceChanged(f"{path} changed after this process imported it: no key is computed from a "
                                f"source that is not the code that runs (the watch restarts to read it)")
    memo = (path, st.st_mtime_ns, st.st_size)
    if memo not in _SOURCES:
        with open(path, "rb") as f:
            _SOURCES[memo] = bytes_digest(f.read())
        SOURCE_READS[path] = (stat_signature(st), _SOURCES[memo], time.time_ns())
    return _SOURCES[memo]


def fingerprint(modules: tuple[str, ...]) -> str:
    """Digest of the source files of ``modules`` (order-independent)."""
    parts = {}
    for name in sorted(set(modules)):
        file = module_file(name)
        parts[name] = _source_digest(file) if file else "builtin"
    return json_digest(parts)


def defining_module(fn: Any) -> str:
    """Module that holds a callable's code (through partials and decorators)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(fn)
    return getattr(fn, "__module__", None) or type(fn).__module__


def step_modules(step: ResolvedStep) -> tuple[str, ...]:
    st = step.step_type
    return (defining_module(st.run), *st.fingerprint_modules)


def pass_modules(graph_pass: GraphPass) -> tuple[str, ...]:
    return (defining_module(graph_pass.apply), *graph_pass.fingerprint_modules)


def step_fingerprint(step: ResolvedStep) -> str:
    recorded = getattr(step, "recorded_fingerprint", None)  # a configuration-cache step: its sources are stamped
    return recorded if recorded is not None else fingerprint(step_modules(step))


def source_files(steps: Any, registry: Any) -> list[str]:
    """Every source file a key of these steps can depend on: fingerprinted
    modules, graph passes, and the plugins' registration modules (which hold
    versions and params defaults). The no-op fast path stamps exactly these.
    Steps from the configuration cache come with the list the full load made."""
    recorded = getattr(registry, "recorded_sources", None)
    if recorded is not None:
        return list(recorded)
    modules = {m for step in steps for m in step_modules(step)}
    modules |= {m for gp in registry.passes.values() for m in pass_modules(gp)}
    modules |= {info.module for info in registry.plugins.values()}
    files = {module_file(m) for m in modules}
    return sorted(f for f in files if f and os.path.isfile(f))


def key_material(
    step: ResolvedStep,
    input_digests: Mapping[str, str],
    dataset_digest: str | None,
    seed: int,
    salt: str,
    digest: Digester,
    passes: Mapping[str, GraphPass],
    recipe_name: str = "",
    target: Mapping[str, Any] | None = None,
    input_metrics: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything that enters ``step``'s key (see module docstring)."""
    st = step.step_type
    params, _ = params_material(step.params, digest)
    files = {}
    if st.input_files is not None:
        for label, path in sorted(st.input_files(step.params).items()):
            try:
                files[label] = digest(Path(path))
            except OSError as exc:
                raise _unreadable(label, Path(path), exc) from None
    extras = dict(st.key_extras(step.params, passes)) if st.key_extras else {}
    return {
        "step_type": st.name,
        "version": st.version,
        "plugin": step.plugin,
        "fingerprint": step_fingerprint(step),
        "params": params,
        "files": files,
        "inputs": [input_digests[name] for name in step.inputs],
        "dataset": dataset_digest,
        "toolchain": {dist: package_version(dist) for dist in sorted(st.toolchain)},
        "seed": seed,
        "salt": salt,
        "extras": extras,
        "names": {"recipe": recipe_name, "step": step.name, "inputs": list(step.inputs)} if st.uses_names else None,
        "target": target_for(st.uses_target, target),
        "input_metrics": ([json_digest(dict((input_metrics or {}).get(name, {}))) for name in step.inputs]
                          if st.uses_input_metrics else None),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def target_for(uses_target: bool | tuple[str, ...], target: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of the recipe's ``[target]`` a step type reads (and that
    enters its key): all of it, the keys it names, or None."""
    if not uses_target:
        return None
    if uses_target is True:
        return dict(target or {})
    return {k: v for k, v in (target or {}).items() if k in uses_target}


def stable_metrics(metrics: Mapping[str, Any], volatile: tuple[str, ...]) -> dict[str, Any]:
    """A step's metrics without the names its step type declares volatile:
    what may enter a downstream key."""
    return {k: v for k, v in metrics.items() if k not in volatile}


def step_key(material: Mapping[str, Any]) -> str:
    return json_digest(dict(material))


class KeyMemo:
    """Each step's key material and key, computed once per build.

    A build keys every step twice: the plan (its plan-time checks) and then
    the executor as it reaches the step. Both see the same dependency digests
    for a cached step, so the second time is a lookup here. An entry is keyed
    by the step and its dependencies' digests (and input metrics, for step
    types keyed on them); it also remembers the digests of the files the step
    reads and is only reused while those still match, so a data file edited
    while earlier steps ran is keyed by its new content, as before.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[dict[str, Any], str, tuple[tuple[Path, str], ...] | None]] = {}
        self.computed = 0  # how many materials were computed (not looked up): tests count it

    def lookup(self, ident: tuple[Any, ...], digest: Digester) -> tuple[dict[str, Any], str] | None:
        hit = self._entries.get(ident)
        if hit is None:
            return None
        material, key, files = hit
        if files is None:
            return None
        try:
            if all(digest(path) == seen for path, seen in files):
                return material, key
        except OSError:
            pass  # gone or unreadable now: recomputing says so properly
        return None

    def store(self, ident: tuple[Any, ...], material: dict[str, Any], files: tuple[tuple[Path, str], ...] | None) -> str:
        """Remember ``material`` (and return its key); ``files``: (path, digest) of
        each file the step reads, as the material used them (None: never reuse)."""
        key = step_key(material)
        self._entries[ident] = (material, key, files)
        self.computed += 1
        return key
