"""The no-op fast path: answer "nothing changed" without loading anything.

A fully cached build through the normal path imports pydantic, networkx,
rich and every plugin just to conclude that every key is unchanged. After a
successful full build, this module records a *stamp*: the stat signature of
every file the keys were computed from (recipe, lock file, data files,
plugin and core sources, cached objects, materialized outputs), the mtimes of
the ``sys.path`` folders (a ``pip install`` changes them), and the values of
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
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

FORMAT = 1
ENV_DISABLE = "TINYBUILD_NO_FASTPATH"
RACY_NS = 50_000_000
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


def stamp_path(recipe: Path, cache_dir: str | None, out: str | None, disabled: Iterable[str],
               environ: Mapping[str, str], lock: str | None = None) -> Path:
    identity = json.dumps({
        "recipe": str(recipe.resolve()), "cache": cache_dir, "out": out, "lock": lock, "disabled": sorted(disabled),
        "env": {k: environ.get(k) for k in _CONTROL_ENV}, "python": sys.executable, "version": sys.version,
    }, sort_keys=True)
    return cache_root(recipe, cache_dir, environ) / "stamps" / (_sha(identity.encode())[:32] + ".json")


def env_refs(recipe_text: str, environ: Mapping[str, str]) -> dict[str, str | None]:
    return {name: environ.get(name) for name in sorted(set(_ENV_REF.findall(recipe_text)))}


# -- checking -----------------------------------------------------------------


def _file_ok(entry: list[Any], stamped_ns: int) -> bool:
    path, ino, mtime, size, digest = entry
    try:
        st = os.stat(path)
    except OSError:
        return False
    if [st.st_ino, st.st_mtime_ns, st.st_size] != [ino, mtime, size]:
        return False
    if stamped_ns - mtime > RACY_NS:
        return True
    with open(path, "rb") as f:  # racy: trust content only
        return _sha(f.read()) == digest


def check(stamp: Path, recipe_text: str, environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The stamp's summary if nothing it depends on changed, else None."""
    try:
        data = json.loads(stamp.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("format") != FORMAT or data.get("env") != env_refs(recipe_text, environ):
        return None
    stamped = data["stamped_ns"]
    for folder, mtime in data["folders"]:
        try:
            if os.stat(folder).st_mtime_ns != mtime:
                return None
        except OSError:
            return None
    if not all(_file_ok(entry, stamped) for entry in data["files"]):
        return None
    return data["summary"]


def try_noop(recipe: Path, cache_dir: str | None, out: str | None, disabled: Iterable[str],
             environ: Mapping[str, str] | None = None, lock: str | None = None) -> dict[str, Any] | None:
    env = os.environ if environ is None else environ
    if env.get(ENV_DISABLE):
        return None
    try:
        text = recipe.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return check(stamp_path(recipe, cache_dir, out, disabled, env, lock), text, env)


def invalidate(stamp: Path) -> None:
    stamp.unlink(missing_ok=True)


# -- recording ----------------------------------------------------------------


def _module_files(prefixes: set[str]) -> list[str]:
    files = []
    for name, module in list(sys.modules.items()):
        top = name.split(".")[0]
        file = getattr(module, "__file__", None)
        if top in prefixes and file and os.path.isfile(file):
            files.append(file)
    return sorted(set(files))


def record(stamp: Path, *, recipe_text: str, files: Iterable[Path], digest_of: Any, plugin_modules: Iterable[str],
           summary: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Write a stamp; ``digest_of(path)`` gives content digests (the stat memo)."""
    from .cache import atomic_write_json

    env = os.environ if environ is None else environ
    prefixes = {"tinybuild"} | {m.split(".")[0] for m in plugin_modules}
    entries = []
    for path in [*map(str, files), *_module_files(prefixes)]:
        st = os.stat(path)
        entries.append([path, st.st_ino, st.st_mtime_ns, st.st_size, digest_of(Path(path))])
    folders = []
    for folder in sys.path:
        try:
            folders.append([folder, os.stat(folder or ".").st_mtime_ns])
        except OSError:
            continue
    atomic_write_json(stamp, {
        "format": FORMAT, "stamped_ns": time.time_ns(), "env": env_refs(recipe_text, env),
        "folders": folders, "files": entries, "summary": dict(summary),
    })


LIFECYCLE_HOOKS = (
    "tinybuild_build_started", "tinybuild_build_finished", "tinybuild_step_started", "tinybuild_step_progress",
    "tinybuild_step_log", "tinybuild_step_cached", "tinybuild_step_finished", "tinybuild_step_failed",
)


def has_observers(pm: Any, ignore: Iterable[str]) -> bool:
    """Whether a plugin besides ``ignore`` implements a lifecycle hook."""
    ignored = set(ignore)
    return any(impl.plugin_name not in ignored
               for hook in LIFECYCLE_HOOKS for impl in getattr(pm.hook, hook).get_hookimpls())


def record_build(project: Any, result: Any, stamp: Path, reporter_name: str) -> bool:
    """Stamp a successful, fully cached-or-stored build; False when not eligible."""
    from .keys import input_file_fields
    from .lockfile import read_lock

    if result.exit_code != 0 or result.uncached or has_observers(project.pm, [reporter_name]):
        return False
    lock = read_lock(project.lock_path)
    order = project.order
    if sorted(lock) != sorted(order):
        return False
    cache = project.cache
    files: list[Path] = [project.recipe.path, project.lock_path]
    for name in order:
        step = project.steps[name]
        for value in input_file_fields(step.params).values():
            if value is not None:
                files.extend(Path(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        if step.step_type.input_files:
            files.extend(Path(p) for p in step.step_type.input_files(step.params).values())
        entry = lock[name]
        files.append(cache.action_path(entry["key"]))
        for rel, digest in entry["output"]["files"].items():
            files.append(cache.object_path(digest))
            files.append(project.step_out_dir(name) / rel)
    summary = {"steps": [[n, lock[n]["output"]["digest"]] for n in order], "out": str(project.out_dir)}
    record(stamp, recipe_text=project.recipe.path.read_text("utf-8"), files=files, digest_of=cache.memo.digest,
           plugin_modules=[p.module for p in project.registry.plugins.values()], summary=summary)
    cache.memo.save()
    return True
