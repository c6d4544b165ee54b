"""The no-op fast path: answer "nothing changed" without loading anything.

A fully cached build through the normal path imports pydantic, networkx,
rich and every plugin just to conclude that every key is unchanged. After a
successful full build, this module records a *stamp*: the stat signature of
every file the keys were computed from (recipe, lock file, data files,
plugin and core sources, cached objects, materialized outputs), the mtimes of
the ``sys.path`` folders (a ``pip install`` changes them; the current folder,
which ``python -m`` and ``python -c`` put on the path, is stamped by the
module names it holds instead, see :func:`module_names`) and of the data
folders steps list (``StepType.input_folders``: a new file changes them), and the values of
the environment variables the recipe interpolates. The next ``build`` with
the same arguments checks those with ``stat`` alone; any difference, or any
doubt, falls back to the normal path, which is always correct on its own.

Racy files (modified within one filesystem tick of the stamp) are verified
by content, as git does for its index. The fast path is never used when a
plugin other than the console observes lifecycle hooks (it would miss
events), with ``--only``/``--force``, or when ``TINYBUILD_NO_FASTPATH`` is set.

Only the standard library is imported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
import time
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the fast path
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping

from .hashing import stat_signature

FORMAT = 4
ENV_DISABLE = "TINYBUILD_NO_FASTPATH"
RACY_NS = 50_000_000
STAMP_LIMIT = 64 << 20
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
#: environment variables that change how a build resolves, beyond the recipe's own
_CONTROL_ENV = ("TINYBUILD_CACHE_DIR", "TINYBUILD_OUT", "TINYBUILD_PLUGINS", "TINYBUILD_DISABLE_PLUGINS")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_root(recipe: Path, cache_dir: str | None, environ: Mapping[str, str]) -> Path:
    """The cache folder, computed as :func:`project.default_cache_dir` does."""
    if cache_dir:
        return Path(cache_dir).expanduser().resolve()
    if environ.get("TINYBUILD_CACHE_DIR"):
        return Path(environ["TINYBUILD_CACHE_DIR"]).expanduser().resolve()
    return recipe.resolve().parent / ".tinybuild"


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def stamp_path(recipe: Path, cache_dir: str | None, out: str | None, disabled: Iterable[str],
               environ: Mapping[str, str], lock: str | None = None) -> Path:
    """Where the stamp of this exact invocation lives: every input to path
    resolution (made absolute, so the same words from another folder differ)
    and the import path are part of its name."""
    env = {k: environ.get(k) for k in _CONTROL_ENV}
    for k in ("TINYBUILD_CACHE_DIR", "TINYBUILD_OUT"):
        env[k] = _absolute(env[k])
    identity = json.dumps({
        "recipe": str(recipe.resolve()), "cache": _absolute(cache_dir), "out": _absolute(out), "lock": _absolute(lock),
        "disabled": sorted(disabled), "env": env, "python": sys.executable, "version": sys.version,
        "sys_path": [str(Path(p or ".").resolve()) for p in sys.path],
    }, sort_keys=True)
    return cache_root(recipe, cache_dir, environ) / "stamps" / (_sha(identity.encode())[:32] + ".json")


def env_refs(recipe_text: str, environ: Mapping[str, str]) -> dict[str, str | None]:
    return {name: environ.get(name) for name in sorted(set(_ENV_REF.findall(recipe_text)))}


# -- checking -----------------------------------------------------------------
#
# A stamp entry is [path, stat signature, digest, observed_ns]: the signature
# and digest of the content a key was computed from (inputs: as they were when
# the build read them; products: as written), and when that was observed.


def _file_ok(entry: list[Any]) -> bool:
    path, sig, digest, observed_ns = entry
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or stat_signature(st) != sig:  # never read a FIFO or a device
        return False
    if observed_ns - sig[2] > RACY_NS:
        return True
    # Racy: modified within a filesystem tick of being read, so a later edit of
    # the same size could share this signature. Only the content can tell.
    with open(path, "rb") as f:
        return _sha(f.read()) == digest


#: the stamp this process last parsed: (path, identity, data). A build that
#: misses the no-op (an edited recipe) reads the same stamp again for a delta
#: rebuild; at thousands of steps each parse costs tens of milliseconds.
_parsed: list[Any] = [None, None, None]


def _read_stamp(stamp: Path) -> Any:
    """The parsed stamp; None unless it is a regular file (not a link, FIFO or
    device) of sane size. Shared with later calls while the file is unchanged
    (same inode, times and size): never mutate it."""
    from .safeio import read_own_json

    try:
        identity = stat_signature(os.lstat(stamp))
    except OSError:
        return None
    if _parsed[0] == str(stamp) and _parsed[1] == identity:
        return _parsed[2]
    data = read_own_json(stamp, STAMP_LIMIT)
    _parsed[:] = [str(stamp), identity, data]
    return data


def check(stamp: Path, recipe_text: str, environ: Mapping[str, str], first: str | None = None) -> dict[str, Any] | None:
    """The stamp's summary if nothing it depends on changed, else None (also
    when the stamp is damaged or of the wrong shape: it is never trusted).
    ``first``: the file to check before all others (the recipe: the likeliest
    to have changed, so an edit is found with one ``stat``, not thousands); a
    stamp that does not cover it is not this recipe's (a symlinked recipe
    retargeted) and never holds."""
    data = _read_stamp(stamp)
    try:
        if first is not None and isinstance(data, dict):
            entry = next((e for e in data["files"] if e[0] == first), None)
            if entry is None or not _file_ok(entry):
                return None
        return _check(data, recipe_text, environ)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return None


def _check(data: Any, recipe_text: str, environ: Mapping[str, str], edited: str | None = None) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        return None
    if data.get("format") != FORMAT or data.get("env") != env_refs(recipe_text, environ):
        return None
    if not folders_unchanged(data["folders"], data.get("modules") or {}):
        return None
    if not all(_file_ok(entry) for entry in data["files"] if entry[0] != edited):
        return None
    summary = data["summary"]
    steps = summary["steps"]
    if not (isinstance(steps, list) and isinstance(summary.get("out", ""), str)
            and all(isinstance(n, str) and isinstance(d, str) for n, d in steps)):
        return None
    return summary


def check_edited(stamp: Path, recipe: Path, recipe_text: str, environ: Mapping[str, str]
                 ) -> tuple[dict[str, Any], str, dict[str, list[Any]]] | None:
    """For a delta rebuild (:mod:`tinybuild.delta`): the stamp's summary, the
    digest of the recipe it was recorded with and its entries by path, if
    everything it depends on but the recipe is unchanged (``recipe_text``, the
    edited recipe, must interpolate the same variables with the same values),
    else None."""
    data = _read_stamp(stamp)
    path = str(recipe.resolve())
    try:
        entries = {entry[0]: entry for entry in data["files"]}
        summary = _check(data, recipe_text, environ, edited=path)
        if summary is None or len(entries) != len(data["files"]) or not isinstance(entries[path][2], str):
            return None
        return summary, entries[path][2], entries
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return None


def stamped_signatures(stamp: Path) -> tuple[dict[str, list[int]], list[list[Any]]] | None:
    """The files a stamp covers with their signatures as the build read or
    wrote them, and its folders with their mtimes (``build --watch`` measures
    changes against them); None without a readable stamp."""
    data = _read_stamp(stamp)
    try:
        return {entry[0]: entry[1] for entry in data["files"]}, [[f, m] for f, m in data["folders"]]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return None


def try_noop(recipe: Path, cache_dir: str | None, out: str | None, disabled: Iterable[str],
             environ: Mapping[str, str] | None = None, lock: str | None = None) -> dict[str, Any] | None:
    env = os.environ if environ is None else environ
    if env.get(ENV_DISABLE):
        return None
    try:
        text = recipe.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return check(stamp_path(recipe, cache_dir, out, disabled, env, lock), text, env, first=str(recipe.resolve()))


def invalidate(stamp: Path) -> None:
    """Drop a stamp before a real build (a bad cache location is reported later, by the build).
    Never through a symlinked ``stamps`` folder: it would unlink a file elsewhere."""
    try:
        if not stamp.parent.is_symlink():
            stamp.unlink(missing_ok=True)
    except OSError:
        pass


def _is_cwd(folder: str) -> bool:
    try:
        return os.path.samefile(folder or ".", ".")
    except OSError:
        return False


def import_path_state() -> tuple[list[list[Any]], dict[str, list[str]]]:
    """What the import path looks like now: ``[folder, mtime]`` for each
    ``sys.path`` folder (``pip install`` changes them), with the current
    folder recorded by the module names it holds instead (mtime None; see
    :func:`module_names`), and those names by folder."""
    folders: list[list[Any]] = []
    modules: dict[str, list[str]] = {}
    for folder in sys.path:
        try:
            if _is_cwd(folder):
                modules[folder] = module_names(folder)
                folders.append([folder, None])
            else:
                folders.append([folder, os.stat(folder or ".").st_mtime_ns])
        except OSError:
            continue
    return folders, modules


def folders_unchanged(folders: Iterable[Any], modules: Mapping[str, Any]) -> bool:
    """Whether every folder recorded by :func:`import_path_state` (or a data
    folder, ``[folder, mtime]``) is as it was."""
    for folder, mtime in folders:
        try:
            if mtime is None:  # the current folder: only what could be imported from it counts
                if modules.get(folder) != module_names(folder):
                    return False
            elif os.stat(folder or ".").st_mtime_ns != mtime:  # "" (python -c) is the current folder, as recorded
                return False
        except OSError:
            return False
    return True


def module_names(folder: str) -> list[str]:
    """What in ``folder`` an import could find: files with an importable
    suffix (``.py``, ``.pyc``, extension modules) after a module name, and
    such folders holding an ``__init__`` (a plain folder is at most a
    namespace portion, which never shadows a module found later on the
    path).

    Why: ``python -m tinybuild`` and ``python -c`` put the current folder on
    ``sys.path``. Its mtime changes whenever any file is created there (a log,
    an editor's backup, the build folder), which cost the fast path for no
    reason; only a new module there can change what a build imports."""
    from importlib.machinery import all_suffixes

    suffixes = tuple(all_suffixes())
    names = []
    with os.scandir(folder or ".") as entries:
        for entry in entries:
            suffix = next((x for x in suffixes if entry.name.endswith(x)), None)
            if suffix is not None:
                if entry.name[:-len(suffix)].isidentifier():  # not an editor's `.#x.py` lock or `x.py~`
                    names.append(entry.name)
            elif (entry.name.isidentifier() and entry.is_dir()
                  and any(os.path.exists(os.path.join(entry.path, "__init__" + s)) for s in suffixes)):
                names.append(entry.name + "/")
    return sorted(names)


# -- recording ----------------------------------------------------------------

Observation = tuple[list[int], str, int]


def observe(path: Path | str, digest: str | None = None) -> Observation:
    """Signature and digest of a file as it is now (for the build's products)."""
    st = os.stat(path)
    if digest is None:
        with open(path, "rb") as f:
            digest = _sha(f.read())
    return stat_signature(st), digest, time.time_ns()


def record(stamp: Path, *, recipe_text: str, observations: Mapping[str, Observation], summary: Mapping[str, Any],
           environ: Mapping[str, str] | None = None, root: Path | None = None,
           listed: Mapping[str, int] | None = None) -> None:
    """Write a stamp: ``observations`` maps every file the build depends on
    or produced to the (signature, digest, time) it was observed with. With
    ``root`` (the cache), never through a link below it. Builds of one build
    folder hold its lock, so one stamp has one writer at a time; the write
    is atomic, so a reader sees a whole stamp or none."""
    from .cache import atomic_write_json

    env = os.environ if environ is None else environ
    entries = [[path, list(sig), digest, seen] for path, (sig, digest, seen) in sorted(observations.items())]
    folders, modules = import_path_state()
    folders.extend([folder, mtime] for folder, mtime in sorted((listed or {}).items()))  # data folders steps list
    atomic_write_json(stamp, {"format": FORMAT, "env": env_refs(recipe_text, env), "folders": folders,
                              "modules": modules, "files": entries, "summary": dict(summary)}, root=root)


LIFECYCLE_HOOKS = (
    "tinybuild_build_started", "tinybuild_build_finished", "tinybuild_step_started", "tinybuild_step_progress",
    "tinybuild_step_log", "tinybuild_step_cached", "tinybuild_step_finished", "tinybuild_step_failed",
)


def has_observers(pm: Any, ignore: Iterable[str]) -> bool:
    """Whether a plugin besides ``ignore`` implements a lifecycle hook."""
    ignored = set(ignore)
    return any(impl.plugin_name not in ignored
               for hook in LIFECYCLE_HOOKS for impl in getattr(pm.hook, hook).get_hookimpls())


def _core_sources() -> list[str]:
    return sorted(m.__file__ for name, m in list(sys.modules.items())
                  if (name == "tinybuild" or name.startswith("tinybuild.")) and getattr(m, "__file__", None))


def listed_folders(project: Any) -> dict[str, int] | None:
    """mtime of every folder a step declares it lists (``StepType.input_folders``),
    taken *before* the build lists them; None when one cannot be read (the
    build reports it; no stamp is recorded)."""
    folders: dict[str, int] = {}
    for step in project.steps.values():
        declared = step.step_type.input_folders
        if declared is None:
            continue
        try:
            for folder in declared(step.params):
                folders[str(folder)] = os.stat(folder).st_mtime_ns
        except OSError:
            return None
    return folders


def _folders_unchanged(before: Mapping[str, int]) -> bool:
    """Whether the listed folders are as before the build and not racy (an
    entry created within one tick of the stamp could leave the mtime as is)."""
    now = time.time_ns()
    for folder, mtime in before.items():
        try:
            if os.stat(folder).st_mtime_ns != mtime or now - mtime <= RACY_NS:
                return False
        except OSError:
            return False
    return True


def record_build(project: Any, result: Any, stamp: Path, reporter_name: str,
                 listed: Mapping[str, int] | None = None, previous: Mapping[str, list[Any]] | None = None,
                 touched: Iterable[str] = ()) -> bool:
    """Stamp a successful, fully cached-or-stored build; False when not eligible.

    Inputs are stamped as the build *read* them (the recipe's bytes, the stat
    memo's entries for data files, the fingerprinted sources), not as they are
    now: an edit made while the build ran then fails the next check.

    ``previous``: the entries of the stamp this build checked before it ran
    (a delta rebuild, :mod:`tinybuild.delta`), by path. The files of steps
    not ``touched`` keep their entries instead of being observed again: each
    was checked under the build folder's lock, and an entry that went stale
    since only makes the next check fail, never pass.
    """
    from .keys import SOURCE_READS, source_files, step_input_paths
    from .lockfile import read_lock

    if result.exit_code != 0 or result.uncached or has_observers(project.pm, [reporter_name]):
        return False
    if listed is None:
        listed = listed_folders(project)
    if listed is None or not _folders_unchanged(listed):
        return False  # a listed folder changed during the build (or is unreadable): the next build checks it
    lock = read_lock(project.lock_path)
    order = project.order
    if sorted(lock) != sorted(order) or project.recipe.origin is None:
        return False
    cache = project.cache
    seen: dict[str, Observation] = {str(project.recipe.path): project.recipe.origin}
    old = previous or {}
    out_root = str(project.out_dir)
    fresh = set(touched) if previous is not None else None

    def observed(path: str, digest: str | None, reuse: bool) -> Observation:
        """The previous entry when ``reuse`` allows it and it has the same content, else observed now."""
        entry = old.get(path) if reuse else None
        if entry is not None and (digest is None or entry[2] == digest):
            return entry[1], entry[2], entry[3]
        return observe(path, digest)

    for name in order:
        for path in step_input_paths(project.steps[name]):
            found = cache.memo.observation(path)
            if found is None:
                return False
            seen[str(path)] = found
        entry = lock[name]
        reuse = fresh is not None and name not in fresh  # an untouched step of a delta
        action = cache.action_file(entry["key"])  # strings, not Paths: thousands of steps, three files each
        seen[action] = observed(action, None, reuse)
        out_dir = f"{out_root}/{name}"  # project.step_out_dir(name)
        for rel, digest in entry["output"]["files"].items():
            stored = cache.object_file(digest)
            if not reuse or stored not in seen:  # an object untouched steps share: once
                seen[stored] = observed(stored, digest, reuse)
            product = os.path.join(out_dir, rel)  # rel is a normalized relative path (list_files)
            seen[product] = observed(product, digest, reuse)
    delta = fresh is not None
    for source in source_files(project.steps.values(), project.registry):
        # as fingerprinted; else (a delta's untouched steps) as checked before the build ran, so
        # an edit made while it ran fails the next check
        seen[source] = SOURCE_READS.get(source) or observed(source, None, delta)
    for source in _core_sources():
        seen.setdefault(source, observed(source, None, delta))
    from .configcache import code_files

    for source in code_files():  # every module imported: a plugin's helpers decide its params' defaults too
        seen.setdefault(source, observed(source, None, delta))
    seen[str(project.lock_path)] = observe(project.lock_path)
    summary = {"steps": [[n, lock[n]["output"]["digest"]] for n in order], "out": str(project.out_dir)}
    record(stamp, recipe_text=project.recipe.path.read_text("utf-8"), observations=seen, summary=summary,
           root=cache.root, listed=listed)
    cache.memo.save()
    return True
