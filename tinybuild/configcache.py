"""The configuration cache: plan and replay a cached build without loading plugins.

Loading a recipe the full way (:func:`tinybuild.project.load_project`)
imports pydantic, scans entry points, imports every plugin and builds their
params classes: about 0.3 s before the first key is computed, most of a
fully cached build's time. Resolution is a pure function of the recipe's
bytes, the environment variables it interpolates, the code of the core and
of the plugins, the installed distributions and the options that choose
plugins and folders. So after a full load succeeds, this module records
what the keys, ``plan`` and the cached build path need from each resolved
step (its step type's declared fields, the plugin and fingerprint, the
validated params as JSON, the paths of its ``InputFile`` fields, what
``input_files``/``input_folders``/``key_extras`` returned) in an *entry*,
``<cache>/config/<id>.json``, with an *environment signature* that says when
it holds:

* the sha256 of the recipe's bytes and the values of the variables it
  interpolates (and ``$HOME``, for ``~`` in paths): any edit is a miss;
* the stat signature of every Python source file the full load had imported
  (core, plugins, their helpers, pydantic...), none of them modified after
  the process that recorded it started; the mtimes of the ``sys.path``
  folders (``pip install`` changes them; the current folder by the module
  names it holds, as :mod:`tinybuild.fastpath` does);
* for steps whose ``input_files`` reads data (a CSV naming clips, a listed
  folder), the signatures of their ``InputFile`` files and of the folders
  they list;
* in the entry's name: the recipe's path, ``--cache-dir``/``--out``/``--lock``,
  disabled plugins, the ``TINYBUILD_*`` variables that choose plugins and
  folders, the interpreter and the import path.

``plan`` and ``build`` then read the entry and, when everything matches,
build the project from :class:`RecordedStep` records instead of plugins.
The keys are computed exactly as before (:mod:`tinybuild.keys`: the recorded
params, paths and extras stand in for the plugin's answers; file contents
are always hashed afresh). A build from records only replays cache hits: the
first step that would have to run (or any doubt: a plugin already imported
in this process, lifecycle-hook plugins, ``--only``/``--force``, a remote
cache, ``-j``, Ray, an error) falls back to the full load, which is always
correct on its own and reports every error as it always has. Any damaged,
oversized, linked or unreadable entry is a miss. ``TINYBUILD_NO_CONFIG_CACHE=1``
turns it off.

Only the standard library is imported here (the rest of the core, and tomli for a
recipe's table digests, lazily).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from .hashing import path_signature
from .shapes import BOM, CORE_STEP_KEYS, TOP_LEVEL_KEYS, RecipeLocation, StepDependencies

FORMAT = 2
ENV_DISABLE = "TINYBUILD_NO_CONFIG_CACHE"
ENTRY_LIMIT = 64 << 20
#: a source file modified this close before this process started (or later)
#: is not recorded: the code imported may not be the code on disk
SETTLE_NS = 20_000_000
#: when this process began importing tinybuild's modules (the keys import this module early)
STARTED_NS = time.time_ns()


class NeedsFullLoad(Exception):
    """A build from records reached something only the full load can do (a
    step to run, a warning to print): the caller starts over the full way."""


# -- records standing in for resolved steps -------------------------------------


class RecordedParams:
    """A step's validated params as recorded: what :mod:`tinybuild.keys` reads."""

    def __init__(self, dump: Mapping[str, Any], file_fields: Mapping[str, Any]):
        self._dump = dict(dump)
        self._file_fields = dict(file_fields)

    def model_dump(self, mode: str = "python", **_: Any) -> dict[str, Any]:
        return dict(self._dump)  # a fresh top level: keys.params_material replaces file fields in it

    def file_fields(self) -> dict[str, Any]:
        """``{field: Path | [Path, ...] | None}``, as ``keys.input_file_fields`` gives them."""
        return {name: _as_paths(value) for name, value in self._file_fields.items()}


def _as_paths(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [Path(v) for v in value]
    return Path(value)


def _path_text(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


class RecordedStepType:
    """The declarative fields of a step type; what would run is not here."""

    run = None
    key_extras = None
    check = None

    def __init__(self, data: Mapping[str, Any]):
        self.name: str = data["name"]
        self.version: str = data["version"]
        self.produces: str = data["produces"]
        self.consumes: tuple[str, ...] = tuple(data["consumes"])
        self.input_names: tuple[str, ...] = tuple(data["input_names"])
        self.uses_dataset: bool = bool(data["uses_dataset"])
        self.dataset_optional: bool = bool(data["dataset_optional"])
        self.toolchain: tuple[str, ...] = tuple(data["toolchain"])
        self.fingerprint_modules: tuple[str, ...] = tuple(data["fingerprint_modules"])
        self.uses_names: bool = bool(data["uses_names"])
        uses_target = data["uses_target"]
        self.uses_target: bool | tuple[str, ...] = (tuple(uses_target) if isinstance(uses_target, list)
                                                    else bool(uses_target))
        self.uses_input_metrics: bool = bool(data["uses_input_metrics"])
        self.volatile_metrics: tuple[str, ...] = tuple(data["volatile_metrics"])
        self.heavy: bool = bool(data["heavy"])
        self.gpus: float = float(data["gpus"])
        self.description: str = data["description"]
        self.input_files: Any = None
        self.input_folders: Any = None


class RecordedSpec:
    """What the core reads of a step's table once it is resolved (sweeps, errors)."""

    def __init__(self, data: Mapping[str, Any]):
        self.name: str = data["name"]
        self.key: str = data["key"]
        self.use: str = data["use"]
        self.inputs_key: str = data["inputs_key"]
        self.table: str | None = data["table"]
        self.coordinates = tuple((str(p), v) for p, v in data["coordinates"])
        self.combination = tuple((str(p), int(i)) for p, i in data["combination"])


class RecordedStep(StepDependencies):
    """A :class:`tinybuild.resolve.ResolvedStep` as recorded (same attributes)."""

    def __init__(self, data: Mapping[str, Any], step_type: RecordedStepType):
        self.name: str = data["name"]
        self.key: str = data["key"]
        self.spec = RecordedSpec(data["spec"])
        self.plugin: str = data["plugin"]
        self.inputs: tuple[str, ...] = tuple(data["inputs"])
        self.dataset: str | None = data["dataset"]
        self.params = RecordedParams(data["params"], data["file_fields"])
        self.recorded_fingerprint: str = data["fingerprint"]
        # per step, since they answer for this step's params (shared when there is nothing to answer)
        answers = data["input_files"] is not None or data["input_folders"] is not None or data["extras"] is not None
        self.step_type = copy.copy(step_type) if answers else step_type
        if data["input_files"] is not None:
            listed = {str(k): Path(v) for k, v in data["input_files"].items()}
            self.step_type.input_files = lambda params, listed=listed: dict(listed)
        if data["input_folders"] is not None:
            folders = [Path(f) for f in data["input_folders"]]
            self.step_type.input_folders = lambda params, folders=folders: list(folders)
        if data["extras"] is not None:
            extras = data["extras"]
            self.step_type.key_extras = lambda params, passes, extras=extras: copy.deepcopy(extras)


class _Meta:
    def __init__(self, data: Mapping[str, Any]):
        self.name: str = data["name"]
        self.seed: int = int(data["seed"])
        self.salt: str = data["salt"]
        self.description: str = data["description"]


class _Target:
    def __init__(self, data: Mapping[str, Any]):
        self._data = dict(data)

    def model_dump(self, exclude_none: bool = False, **_: Any) -> dict[str, Any]:
        return copy.deepcopy(self._data)  # recorded with exclude_none=True, the only way the core asks


class RecordedRecipe(RecipeLocation):
    """A :class:`tinybuild.recipe.Recipe` as recorded (same attributes)."""

    def __init__(self, path: Path, data: Mapping[str, Any], origin: tuple[list[int], str, int]):
        self.path = path
        self.meta = _Meta(data)
        self.target = _Target(data["target"])
        self.origin = origin
        self.steps: dict[str, Any] = {}


class RecordedRegistry:
    """The registry's parts the core reads once steps are resolved."""

    def __init__(self, sources: Iterable[str]):
        self.passes: dict[str, Any] = {}
        self.plugins: dict[str, Any] = {}
        self.step_types: dict[str, Any] = {}
        self.recorded_sources = list(sources)  # keys.source_files answers with these


# -- where entries live ---------------------------------------------------------


def enabled(environ: Mapping[str, str]) -> bool:
    return not environ.get(ENV_DISABLE)


def entry_path(recipe: Path, cache_dir: str | None, out: str | None, disabled: Iterable[str],
               environ: Mapping[str, str], lock: str | None = None) -> Path:
    """``<cache>/config/<id>.json``: the id covers what :func:`fastpath.stamp_path`
    covers (recipe path, folders, plugin choices, interpreter, import path)."""
    from .fastpath import stamp_path

    return entry_beside(stamp_path(recipe, cache_dir, out, disabled, environ, lock))


def entry_beside(stamp: Path) -> Path:
    """The configuration entry of the invocation whose no-op stamp is ``stamp`` (same cache, same id)."""
    return stamp.parent.parent / "config" / stamp.name


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_recipe_bytes(path: Path) -> tuple[bytes, os.stat_result] | None:
    from .safeio import MAX_RECIPE_BYTES, open_regular, stat_of

    try:
        with open_regular(path, MAX_RECIPE_BYTES) as f:
            st = stat_of(f)
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except (OSError, ValueError):
        return None
    return (raw, st) if len(raw) <= MAX_RECIPE_BYTES else None


# -- the environment signature ----------------------------------------------------


def _stdlib_dir() -> str:
    return os.path.dirname(os.__file__) + os.sep


def code_files() -> list[str]:
    """Every Python source file imported so far, but the standard library's
    (it changes only with the interpreter, which is in the entry's name)."""
    stdlib = _stdlib_dir()
    files = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not file:
            continue
        if file.startswith(stdlib) and "-packages" not in file[len(stdlib):]:
            continue
        files.add(file)
    return sorted(files)


def _control_env(environ: Mapping[str, str]) -> dict[str, str | None]:
    return {"HOME": environ.get("HOME")}


# -- recording ---------------------------------------------------------------------


def _step_type_record(st: Any) -> dict[str, Any]:
    return {"name": st.name, "version": st.version, "produces": st.produces, "consumes": list(st.consumes),
            "input_names": list(st.input_names), "uses_dataset": st.uses_dataset,
            "dataset_optional": st.dataset_optional, "toolchain": list(st.toolchain),
            "fingerprint_modules": list(st.fingerprint_modules), "uses_names": st.uses_names,
            "uses_target": list(st.uses_target) if isinstance(st.uses_target, tuple) else bool(st.uses_target),
            "uses_input_metrics": st.uses_input_metrics,
            "volatile_metrics": list(st.volatile_metrics), "heavy": st.heavy, "gpus": st.gpus,
            "description": st.description}


def encoded(value: Any) -> str | None:
    """``value`` as canonical JSON if it reads back as the same value, else
    None: a tuple becomes a list (the same key material), but an int dict key
    would come back as a string and sort differently, and a set or a NaN
    cannot be written at all. Checked once for the whole entry."""
    from .hashing import canonical_json

    try:
        text = canonical_json(value)
        return text if canonical_json(json.loads(text)) == text else None
    except (TypeError, ValueError, RecursionError):
        return None


def step_record(step: Any, passes: Mapping[str, Any], data_files: dict[str, Any],
                 folders: dict[str, int]) -> dict[str, Any] | None:
    """What the keys need from one resolved step; None when it cannot be recorded."""
    from .fastpath import observe
    from .keys import input_file_fields, step_fingerprint

    st = step.step_type
    file_fields = {name: _path_text(value) for name, value in input_file_fields(step.params).items()}
    if st.input_files is not None or st.input_folders is not None:
        # what input_files returns may depend on these files' contents and these
        # folders' listings: observed *before* asking, so a change in between is a miss
        for value in file_fields.values():
            for path in value if isinstance(value, list) else [value] if value is not None else []:
                try:
                    data_files[path] = observe(path)
                except OSError:
                    return None
    input_folders = None
    if st.input_folders is not None:
        input_folders = [str(f) for f in st.input_folders(step.params)]
        for folder in input_folders:
            try:
                folders[folder] = os.stat(folder).st_mtime_ns
            except OSError:
                return None
    input_files = None
    if st.input_files is not None:
        input_files = {str(k): str(v) for k, v in st.input_files(step.params).items()}
    extras = dict(st.key_extras(step.params, passes)) if st.key_extras else None
    spec = step.spec
    record = {
        "name": step.name, "key": step.key, "plugin": step.plugin, "inputs": list(step.inputs),
        "dataset": step.dataset, "type": st.name,
        "spec": {"name": spec.name, "key": spec.key, "use": spec.use, "inputs_key": spec.inputs_key,
                 "table": spec.table, "coordinates": [list(c) for c in spec.coordinates],
                 "combination": [list(c) for c in spec.combination]},
        "params": step.params.model_dump(mode="json"), "file_fields": file_fields,
        "input_files": input_files, "input_folders": input_folders, "extras": extras,
        "fingerprint": step_fingerprint(step),
    }
    return record


def record(project: Any, entry: Path, environ: Mapping[str, str] | None = None) -> bool:
    """Record the configuration entry of a project the full load just made;
    False (and nothing written) when something in it cannot be trusted later:
    a source file modified since this process started, a listed folder
    modified just now, a value that does not survive JSON. Never raises: a
    build must not fail for want of a speed-up."""
    try:
        return _record(project, entry, environ)
    except Exception:  # noqa: BLE001
        return False


def _record(project: Any, entry: Path, environ: Mapping[str, str] | None) -> bool:
    from .fastpath import RACY_NS, env_refs
    from .keys import package_version, source_files

    env = os.environ if environ is None else environ
    if not enabled(env) or project.recipe.origin is None:
        return False
    try:
        recipe_text = project.recipe.path.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if sha(recipe_text.encode("utf-8")) != project.recipe.origin[1]:
        return False  # edited since it was loaded
    types: dict[str, dict[str, Any]] = {}
    steps: list[dict[str, Any]] = []
    data_files: dict[str, Any] = {}
    folders: dict[str, int] = {}
    try:
        for name, step in project.steps.items():
            rec = step_record(step, project.registry.passes, data_files, folders)
            if rec is None:
                return False
            steps.append(rec)
            types.setdefault(step.step_type.name, _step_type_record(step.step_type))
        sources = source_files(project.steps.values(), project.registry)
        versions = {dist: package_version(dist) for t in types.values() for dist in t["toolchain"]}
    except Exception:  # a plugin's input_files/key_extras failing: the key computation reports it
        return False
    code = []
    limit = STARTED_NS - SETTLE_NS
    for path in sorted(set(code_files()) | set(sources)):
        sig = path_signature(path)
        if sig is None or sig[2] >= limit:
            return False  # changed while (or just before) this process ran: the next full load records
        code.append([path, sig])
    now = time.time_ns()
    if any(now - mtime <= RACY_NS for mtime in folders.values()):
        return False
    from .fastpath import has_observers, import_path_state

    path_folders, cwd_modules = import_path_state()

    # a process that already imported one of these (tests, notebooks) may hold patched
    # step types: it never answers from records
    run_modules = {getattr(st.run, "__module__", None) for st in project.registry.step_types.values()}
    plugin_modules = sorted(({info.module for info in project.registry.plugins.values()} | run_modules) - {None})
    value = {
        "format": FORMAT,
        "recipe_sha": project.recipe.origin[1],
        "env": env_refs(recipe_text, env),
        "control": _control_env(env),
        "folders": path_folders, "modules": cwd_modules,
        "code": code,
        "data": [[p, list(sig), digest, seen] for p, (sig, digest, seen) in sorted(data_files.items())],
        "listed": sorted([f, m] for f, m in folders.items()),
        "plugin_modules": plugin_modules,
        "observers": project.pm is not None and has_observers(project.pm, [_REPORTER]),
        "sources": sources,
        "recipe": {"name": project.recipe.meta.name, "seed": project.recipe.meta.seed,
                   "salt": project.recipe.meta.salt, "description": project.recipe.meta.description,
                   "target": project.recipe.target.model_dump(exclude_none=True)},
        "order": list(project.order),
        "types": types,
        "versions": versions,
        "steps": steps,
    }
    value["tables"] = table_digests(recipe_text)
    text = encoded(value)
    if text is None:
        return False
    from .safefs import atomic_write

    try:
        atomic_write(entry, text.encode("utf-8"), project.cache.root)
    except Exception:  # a read-only or odd cache folder: only this speed-up is lost
        return False
    return True


_REPORTER = "tinybuild.console"  # cli.REPORTER: the console observes builds without needing plugins


def parse_tables(recipe_text: str) -> dict[str, Any]:
    """The recipe's TOML as parsed (no interpolation, no checks: the full load
    that recorded the entry did those); raises ``ValueError`` or ``RecursionError``."""
    from .tomlparse import loads

    return loads(recipe_text.removeprefix(BOM))


def table_digests(recipe_text: str, parsed: Mapping[str, Any] | None = None) -> list[list[str]]:
    """``[table, digest of the table, digest of its core keys]`` for every
    top-level table and every ``[steps.<name>]``, in the recipe's order: what
    :mod:`tinybuild.delta` compares to find the steps an edit touched. A
    digest of ``repr`` (TOML dates are not JSON), stable for one interpreter,
    which is in the entry's name."""
    data = parse_tables(recipe_text) if parsed is None else parsed
    out = []
    for top, value in data.items():
        # a section tinybuild does not know (``["steps.c"]`` included) gets a name no table can have
        row = top if top in TOP_LEVEL_KEYS else f"?{top}"
        tables = ([(f"steps.{k}", v) for k, v in value.items()] if top == "steps" and isinstance(value, dict)
                  else [(row, value)])
        for key, table in tables:
            core = {k: table.get(k) for k in CORE_STEP_KEYS} if isinstance(table, dict) else None
            out.append([key, sha(repr(table).encode()), sha(repr(core).encode())])
    return out


# -- answering from an entry ----------------------------------------------------------


def recorded_inputs(entry: Path) -> tuple[list[str], list[str]]:
    """The data files (file params, declared input files) and listed folders
    an entry records: what the last full load resolved, also when its build
    then failed. Empty when unreadable."""
    data = read_entry(entry)
    files: list[str] = []
    folders: list[str] = []
    try:
        for rec in data["steps"]:
            for value in [*rec["file_fields"].values(), *(rec["input_files"] or {}).values()]:
                files.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
            folders.extend(str(f) for f in rec["input_folders"] or [])
        files.extend(str(row[0]) for row in data["data"])
        folders.extend(str(row[0]) for row in data["listed"])
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return [], []
    return files, folders


def read_entry(path: Path) -> Any:
    from .safeio import read_own_json

    return read_own_json(path, ENTRY_LIMIT)


def _holds(data: Any, raw: bytes, environ: Mapping[str, str]) -> bool:
    """Whether the entry's environment signature matches this process and disk."""
    if not isinstance(data, dict) or data.get("recipe_sha") != sha(raw):
        return False
    return environment_holds(data, raw.decode("utf-8"), environ)


#: under ``build --watch``: each imported module's source signature as this
#: process imported it (``watch.Sources``, which checks every source against it
#: before each build and restarts the process when one differs); None otherwise.
#: While set, records are replayed although the plugins are already imported
#: (the CLI's own process: nothing patches them), and ``keys`` refuses to key a
#: step from a source that differs (it would name code that is not what runs).
#: Unset, a process that has the plugins (a test that patched one) takes the full load.
imported_sources: dict[str, list[int] | None] | None = None


def environment_holds(data: Any, recipe_text: str, environ: Mapping[str, str]) -> bool:
    """Everything :func:`_holds` checks but the recipe's bytes: the variables
    ``recipe_text`` interpolates, the code, the import path, the data files and
    listed folders (what a delta rebuild needs to hold besides the edited tables)."""
    from .fastpath import _file_ok, env_refs, folders_unchanged

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return False
    if data["env"] != env_refs(recipe_text, environ) or data["control"] != _control_env(environ):
        return False
    if imported_sources is None and any(m in sys.modules for m in data["plugin_modules"]):
        return False  # this process already has the plugins (and maybe patched them): use them
    if not folders_unchanged(data["folders"], data.get("modules") or {}):
        return False
    for path, sig in data["code"]:
        if path_signature(path) != sig:
            return False
    if not all(_file_ok(entry) for entry in data["data"]):
        return False
    return folders_unchanged(data["listed"], {})  # [folder, mtime] of each folder a step lists


def load(recipe: Path, *, cache_dir: str | None, out: str | None, lock: str | None, disabled: Iterable[str],
         environ: Mapping[str, str] | None = None, build: bool = False) -> Any:
    """A :class:`tinybuild.project.Project` made of records, or None on a miss
    (or any doubt); ``build``: also None when plugins observe builds."""
    from .hashing import bytes_digest, stat_signature

    env = os.environ if environ is None else environ
    if not enabled(env):
        return None
    read = read_recipe_bytes(recipe)
    if read is None:
        return None
    raw, st = read
    entry = entry_path(recipe, cache_dir, out, disabled, env, lock)
    data = read_entry(entry)
    try:
        if not _holds(data, raw, env) or (build and data["observers"]):
            return None
        origin = (stat_signature(st), bytes_digest(raw), time.time_ns())
        return recorded_project(data, recipe.resolve(), origin, cache_dir=cache_dir, out=out, lock=lock)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, UnicodeDecodeError):
        return None  # an entry of the wrong shape is a miss, never an error
    except Exception as exc:  # the project's own checks (a folder that became a file...): the full load says it
        from .errors import TinybuildError

        if isinstance(exc, TinybuildError):
            return None
        raise


def recorded_project(data: Mapping[str, Any], path: Path, origin: tuple[list[int], str, int], *, cache_dir: str | None,
             out: str | None, lock: str | None) -> Any:
    from .project import assemble

    recipe = RecordedRecipe(path, data["recipe"], origin)
    types = {name: RecordedStepType(t) for name, t in data["types"].items()}
    steps = {}
    for rec in data["steps"]:
        steps[rec["name"]] = RecordedStep(rec, types[rec["type"]])
    order = [str(n) for n in data["order"]]
    if sorted(order) != sorted(steps):
        raise ValueError("order and steps disagree")
    # the no-op stamp a build from records writes covers what a full build's
    # would: the plugins' sources and every module the full load imported
    registry = RecordedRegistry(sorted({str(s) for s in data["sources"]} | {str(p) for p, _ in data["code"]}))
    versions = {str(k): str(v) for k, v in data["versions"].items()}
    project = assemble(recipe, registry, None, steps, order, cache_dir=cache_dir, out_dir=out, lock=lock)
    from .keys import VERSIONS

    for dist, version in versions.items():  # as installed when recorded: the import path is unchanged
        VERSIONS.setdefault(dist, version)
    return project


# -- building from records ----------------------------------------------------------------


def recorded_executor(project: Any, reporter: Any) -> Any:
    """An executor that replays cache hits of a project made of records and
    raises :class:`NeedsFullLoad` at the first step it would have to run (or
    warn about), before it prints or runs anything for it."""
    import pluggy

    from . import hookspecs
    from .executor import Executor
    from .plugins import ENTRY_POINT_GROUP, Hooks

    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(reporter, name=_REPORTER)
    project.pm = pm

    class RecordedHooks(Hooks):
        def step_log(self, step: str, message: str) -> None:
            raise NeedsFullLoad(f"step {step}: {message}")

        def step_started(self, step: str, step_type: str, reasons: Any) -> None:
            raise NeedsFullLoad(f"step {step} must run")

    class RecordedExecutor(Executor):
        def lookup(self, step: Any, result: Any, lock: Any, forced: bool) -> Any:
            found = super().lookup(step, result, lock, forced)
            if found[0] is None:
                raise NeedsFullLoad(f"step {step.name} must run")
            return found

    return RecordedExecutor(project, RecordedHooks(pm))
