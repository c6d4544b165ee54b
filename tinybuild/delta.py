"""The delta rebuild: an edit of a few step tables costs those steps, not the recipe.

After ``recipe.toml`` is edited, neither the no-op stamp (:mod:`tinybuild.fastpath`)
nor the configuration cache's entry (:mod:`tinybuild.configcache`) holds,
since both cover the recipe's bytes. Without this module the build then loads
every plugin, validates every step, keys it and looks it up: half a second
at 1,000 steps for one changed leaf. Yet the two records still say
everything about the steps the edit did not touch:

* the entry holds, for every top-level table and every ``[steps.<name>]``, a
  digest of the table as parsed and one of its core keys (``use``,
  ``input``, ``inputs``, ``matrix``), with each step's resolution;
* the stamp holds the signature of every file each step's key and outputs
  depend on, and the lock file it checks holds each step's key and outputs.

So a build after an edit parses the recipe, compares table digests, and
takes this path only for an edit a step's own params absorb: the same
tables in the same order; ``[recipe]``, ``[target]`` and any other top-level
table unchanged; in each edited step table the core keys unchanged and no
sweep (one table, one step); the variables the recipe interpolates
unchanged. The *touched* steps are the edited ones and everything
downstream of them. Every other step's key material is unchanged (its
table, its inputs' outputs, seed, salt, name, target, code, data: each
checked by the entry or the stamp), so its lock entry still names its
cached result, and its outputs are in place when the stamp holds.

The touched steps are resolved the full way (their plugin's params model,
``check``, ``check_inputs``) and planned, keyed and run by the ordinary
executor; the others are reported cached from the lock file without being
keyed or looked up (``Executor(known=...)``). The stamp is checked under the
build folder's lock, before anything is trusted. After a successful build
the stamp and the entry are written as after a full one, so the next edit
is a delta too. Anything else, or any doubt, falls back to the normal path
(always correct on its own, and the one that reports errors).
``TINYBUILD_NO_CONFIG_CACHE=1`` or ``TINYBUILD_NO_FASTPATH=1`` turn it off.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import configcache, fastpath
from .configcache import NeedsFullLoad

REPORTER = "tinybuild.console"  # cli.REPORTER


class Delta:
    """A prepared delta rebuild: the project (touched steps resolved, the
    others recorded) and what the build must check and write around it."""

    def __init__(self, project: Any, *, entry_path: Path, entry: dict[str, Any], text: str,
                 tables: list[list[str]], touched: list[str], environ: Mapping[str, str]):
        self.project = project
        self.entry_path = entry_path
        self.entry = entry
        self.text = text
        self.tables = tables
        self.touched = touched
        self.environ = environ
        self.previous: dict[str, list[Any]] | None = None  # the checked stamp's entries, by path

    def executor(self, stamp: Path) -> Any:
        """The executor of this build, made under the build folder's lock:
        only once the stamp still holds (every file but the recipe) are the
        untouched steps trusted; the stamp is dropped before anything runs."""
        from .executor import Executor
        from .lockfile import read_lock
        from .plugins import Hooks

        project = self.project
        checked = fastpath.check_edited(stamp, project.recipe.path, self.text, self.environ)
        if checked is None:
            raise NeedsFullLoad("the no-op stamp does not hold")
        summary, recipe_digest, self.previous = checked
        if recipe_digest != self.entry["recipe_sha"] or summary.get("out") != str(project.out_dir):
            raise NeedsFullLoad("the stamp and the configuration entry are of different builds")
        if [name for name, _ in summary["steps"]] != list(project.order):
            raise NeedsFullLoad("the stamp lists other steps")
        fastpath.invalidate(stamp)
        try:
            known = self._known(dict(summary["steps"]), read_lock(project.lock_path))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a lock file of the wrong shape
            raise NeedsFullLoad(f"the lock file: {exc}") from None
        return Executor(project, Hooks(project.pm), None, known=known)

    def _known(self, digests: Mapping[str, str], lock: Mapping[str, Any]) -> dict[str, tuple[Any, dict[str, Any]]]:
        """(artifact, lock entry) of every untouched step, from the lock file the stamp vouched for;
        metrics only for the inputs of touched steps (the only readers)."""
        from .api import Artifact
        from .keys import step_input_paths

        project = self.project
        touched = set(self.touched)
        needed = {d for name in touched for d in project.steps[name].dependencies} - touched
        recipe = os.path.realpath(project.recipe.path)
        known: dict[str, tuple[Any, dict[str, Any]]] = {}
        for name in project.order:
            if name in touched:
                continue
            if any(os.path.realpath(p) == recipe for p in step_input_paths(project.steps[name])):
                # the stamp's entry for the recipe stands for the recipe as a recipe, not as this
                # step's input: its edit is this step's change too
                raise NeedsFullLoad(f"step {name} reads the recipe file")
            entry = lock.get(name)
            output = entry.get("output") if isinstance(entry, dict) else None
            if not isinstance(output, dict) or output.get("digest") != digests[name]:
                raise NeedsFullLoad(f"step {name}: the lock file disagrees with the stamp")
            metrics: Mapping[str, Any] = {}
            if name in needed:  # a touched step reads its inputs' metrics (keys, report)
                action = project.cache.get_action(entry["key"], output["kind"])
                if action is None or action.digest != output["digest"]:
                    raise NeedsFullLoad(f"step {name}: its cache entry is gone")
                metrics = action.metrics
            artifact = Artifact(step=name, kind=output["kind"], path=project.step_out_dir(name),
                                files=dict(output["files"]), digest=output["digest"], metrics=metrics)
            known[name] = (artifact, entry)
        return known

    def record(self) -> bool:
        """Write the configuration entry of the edited recipe: the old one with
        the touched steps' records and the new table digests. Never raises."""
        try:
            return self._record()
        except Exception:  # noqa: BLE001 - only the next build's speed-up is lost
            return False

    def _record(self) -> bool:
        from .hashing import canonical_json
        from .safefs import atomic_write

        project = self.project
        data_files: dict[str, Any] = {}
        folders: dict[str, int] = {}
        records = {}
        for name in self.touched:
            rec = configcache.step_record(project.steps[name], project.registry.passes, data_files, folders)
            if rec is None or configcache.encoded(rec) is None:
                return False
            records[name] = rec
        now = time.time_ns()
        if any(now - mtime <= fastpath.RACY_NS for mtime in folders.values()):
            return False
        entry = dict(self.entry)
        entry["recipe_sha"] = project.recipe.origin[1]
        entry["env"] = fastpath.env_refs(self.text, self.environ)
        entry["tables"] = self.tables
        entry["steps"] = [records.get(rec["name"], rec) for rec in entry["steps"]]
        old_data = {row[0]: row for row in entry["data"]}
        old_data.update({p: [p, list(sig), digest, seen] for p, (sig, digest, seen) in data_files.items()})
        entry["data"] = [old_data[p] for p in sorted(old_data)]
        listed = dict(entry["listed"]) | folders
        entry["listed"] = sorted([f, m] for f, m in listed.items())
        atomic_write(self.entry_path, canonical_json(entry).encode("utf-8"), project.cache.root)
        return True


def prepare(recipe: Path, *, cache_dir: str | None, out: str | None, lock: str | None, disabled: Iterable[str],
            reporter: Any, environ: Mapping[str, str] | None = None) -> Delta | None:
    """A delta rebuild of the edited ``recipe``, or None (not edited, an edit
    of another kind, no records, any doubt: the normal path builds)."""
    env = os.environ if environ is None else environ
    if not configcache.enabled(env) or env.get(fastpath.ENV_DISABLE):
        return None
    read = configcache.read_recipe_bytes(recipe)
    if read is None:
        return None
    raw, st = read
    entry_path = configcache.entry_path(recipe, cache_dir, out, disabled, env, lock)
    data = configcache.read_entry(entry_path)
    try:
        text = raw.decode("utf-8")
        if (not isinstance(data, dict) or data.get("recipe_sha") == configcache.sha(raw) or data["observers"]
                or not configcache.environment_holds(data, text, env)):
            return None  # unedited (the configuration cache replays it), observed, or stale
        parsed = configcache.parse_tables(text)
        tables = configcache.table_digests(text, parsed)
        plan = _touched(data, tables)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, RecursionError, UnicodeDecodeError):
        return None
    if plan is None:
        return None
    edited, touched = plan
    try:
        project = _resolve(recipe, data, parsed, edited, touched, st, raw, cache_dir=cache_dir, out=out, lock=lock,
                           disabled=disabled, reporter=reporter, environ=env)
    except Exception:  # noqa: BLE001 - a plugin failing to load, a folder check...: the full load says it
        return None
    if project is None:
        return None
    return Delta(project, entry_path=entry_path, entry=data, text=text, tables=tables, touched=touched, environ=env)


def _touched(data: Mapping[str, Any], tables: list[list[str]]) -> tuple[set[str], list[str]] | None:
    """(edited steps, touched steps in build order) when the edit is one this
    path takes, else None."""
    old = data["tables"]
    if [row[0] for row in old] != [row[0] for row in tables]:
        return None  # a table added, removed, renamed or moved
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for rec in data["steps"]:
        by_key.setdefault(rec["key"], []).append(rec)
    edited: set[str] = set()
    for (key, digest, core), (_, old_digest, old_core) in zip(tables, old):
        if digest == old_digest:
            continue
        name = key.removeprefix("steps.")
        members = by_key.get(key, [])
        if (core != old_core or not (key.startswith("steps.") or key in ("dataset", "model"))
                or len(members) != 1 or members[0]["name"] != name or members[0]["spec"]["table"] is not None):
            return None  # core keys, [recipe]/[target], a sweep: the full load resolves it
        edited.add(name)
    records = {rec["name"]: rec for rec in data["steps"]}
    touched: list[str] = []
    dirty = set(edited)
    for name in data["order"]:
        rec = records[name]
        if name in dirty or any(d in dirty for d in [*rec["inputs"], rec["dataset"]] if d):
            dirty.add(name)
            touched.append(name)
            if len(by_key.get(rec["key"], [])) != 1:
                return None  # a sweep member downstream: resolved with its table by the full load
    return edited, touched


def _resolve(recipe: Path, data: Mapping[str, Any], parsed: Mapping[str, Any], edited: set[str], touched: list[str],
             st: os.stat_result, raw: bytes, *, cache_dir: str | None, out: str | None, lock: str | None,
             disabled: Iterable[str], reporter: Any, environ: Mapping[str, str]) -> Any:
    """The project: touched steps resolved by their plugins, the others from records."""
    from .hashing import bytes_digest, stat_signature

    origin = (stat_signature(st), bytes_digest(raw), time.time_ns())
    path = recipe.resolve()
    if not touched:
        project = configcache.recorded_project(data, path, origin, cache_dir=cache_dir, out=out, lock=lock)
        return _with_hooks(project, reporter)
    from .keys import step_fingerprint
    from .plugins import load_plugins
    from .steptables import edited_step_spec
    from .resolve import resolve_edited

    pm, registry = load_plugins(disabled=disabled, extra=[(REPORTER, reporter)])
    if fastpath.has_observers(pm, [REPORTER]):
        return None
    plain = configcache.recorded_project(data, path, origin, cache_dir=cache_dir, out=out, lock=lock)
    steps = plain.steps  # the records of the touched steps are replaced as they are resolved
    records = {rec["name"]: rec for rec in data["steps"]}
    empty: dict[str, list[str]] = {}
    for name in touched:
        rec = records[name]
        key = rec["key"]
        table = parsed[key] if key in ("dataset", "model") else parsed["steps"][name]
        problems: list[Any] = []
        spec = edited_step_spec(name, key, table, dict(environ), problems, empty)
        if spec is None or spec.use != rec["spec"]["use"] or registry.step_plugin.get(spec.use) != rec["plugin"]:
            return None
        step = resolve_edited(plain.recipe, registry, spec, tuple(rec["inputs"]), rec["dataset"], steps, problems)
        if step is None or problems or step_fingerprint(step) != rec["fingerprint"]:
            return None
        if name not in edited and step.params.model_dump(mode="json") != rec["params"]:
            return None  # an untouched table must resolve as recorded
        steps[name] = step
    plain.recipe.empty_vars = {k: tuple(v) for k, v in empty.items()}  # a missing file's error names them
    plain.registry.passes = dict(registry.passes)
    plain.pm = pm
    return plain


def _with_hooks(project: Any, reporter: Any) -> Any:
    """A plugin manager with only the console's hooks: nothing runs, nothing else observes."""
    import pluggy

    from . import hookspecs
    from .plugins import ENTRY_POINT_GROUP

    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(reporter, name=REPORTER)
    project.pm = pm
    return project
