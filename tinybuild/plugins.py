"""Finding, loading and querying plugins.

Plugins come from the ``tinybuild`` entry-point group (the built-in ones are
registered there too) plus, for local experiments and tests, modules named in
``TINYBUILD_PLUGINS`` (comma-separated ``name=module`` or ``module``). A plugin
can be disabled by name (``--disable-plugin`` or ``TINYBUILD_DISABLE_PLUGINS``).

The core talks to pluggy only through :class:`Hooks`, a typed facade: core
code never spells a hook name, so a renamed hook breaks in one place.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import pluggy

from . import hookspecs
from .api import GraphPass, StepType
from .errors import PluginError, UsageError, did_you_mean

ENTRY_POINT_GROUP = "tinybuild"
ENV_DISABLE = "TINYBUILD_DISABLE_PLUGINS"
ENV_EXTRA = "TINYBUILD_PLUGINS"


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str
    dist: str
    step_types: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)


@dataclass
class Registry:
    """What the loaded plugins declare, with the plugin each thing came from."""

    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    step_types: dict[str, StepType] = field(default_factory=dict)
    step_plugin: dict[str, str] = field(default_factory=dict)
    passes: dict[str, GraphPass] = field(default_factory=dict)
    pass_plugin: dict[str, str] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    #: plugins that failed to load, by name -> the error (only filled when
    #: loading with ``tolerant=True``, as ``tinybuild plugins`` does)
    broken: dict[str, str] = field(default_factory=dict)
    #: how to import each disabled plugin, so an error can say which disabled
    #: plugin would have provided a missing step type or pass
    disabled_loaders: dict[str, Callable[[], Any]] = field(default_factory=dict, repr=False)

    def step_type(self, name: str) -> StepType | None:
        return self.step_types.get(name)

    def disabled_provider(self, label: str, name: str) -> str | None:
        """The disabled plugin that declares step type / graph pass ``name``.

        ``label`` is ``"step type"`` or ``"graph pass"``. Only called on an
        error path: it imports the disabled plugins (cheap, their modules
        import nothing heavy at top level) and asks their registry hooks.
        """
        hook = {"step type": "tinybuild_step_types", "graph pass": "tinybuild_graph_passes"}[label]
        for plugin, load in self.disabled_loaders.items():
            try:
                declared = getattr(load(), hook, None)
                names = [getattr(item, "name", None) for item in (declared() if declared else None) or ()]
            except Exception:  # a disabled plugin may well be broken: that is why it is off
                continue
            if name in names:
                return plugin
        return None

    def missing_hint(self, label: str, name: str, available: Iterable[str]) -> str:
        """Why ``name`` is not registered and what to do: a disabled plugin
        that provides it, else a "did you mean", else the list of names."""
        plugin = self.disabled_provider(label, name)
        if plugin is not None:
            return (f"{label} '{name}' is provided by plugin '{plugin}', which is disabled "
                    f"(--disable-plugin/{ENV_DISABLE}); enable it again")
        available = sorted(available)
        hint = did_you_mean(name, available)
        plural = label + ("es" if label.endswith("s") else "s")
        listing = f"installed {plural}: {', '.join(available) or 'none'}"
        return f"{hint} {listing}" if hint else f"{listing} (see `tinybuild plugins`)"


def disabled_from_env(environ: Mapping[str, str] | None = None) -> set[str]:
    env = os.environ if environ is None else environ
    return {n.strip() for n in env.get(ENV_DISABLE, "").split(",") if n.strip()}


def _extra_plugins(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    out = []
    for item in environ.get(ENV_EXTRA, "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, module = item.partition("=")
        out.append((name, module) if module else (item, item))
    return out


def name_and_version(dist: Any) -> tuple[Any, Any]:
    """A distribution's ``Name`` and ``Version``, as ``dist.name`` and
    ``dist.version`` give them, read from the header block of its METADATA
    alone: those properties parse the whole file with the email package each
    time, and a METADATA carries the project's README as its description
    (tinybuild's: 2,000 lines, 4 ms per property, on every full load)."""
    from email.parser import HeaderParser

    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    head = text.split("\n\n", 1)[0] if text else ""  # the headers end at the first blank line
    if not head or "\n " in head or "\n\t" in head:
        # an .egg-info file (no METADATA in it), folded headers (importlib repairs them): the slow way
        return dist.name, dist.version
    headers = HeaderParser().parsestr(head)
    return headers["Name"], headers["Version"]  # None where missing, as from the properties


def _candidates(environ: Mapping[str, str]) -> list[tuple[str, str, str, str, Callable[[], Any]]]:
    """(name, module, version, dist, loader) for every plugin we could load."""
    from importlib import metadata  # ~15 ms: only when plugins are loaded

    found = []
    dists: dict[int, tuple[str, str]] = {}  # name and version parse the METADATA file: once per distribution
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        if dist is None:
            name, version = "?", "?"
        else:
            if id(dist) not in dists:
                dists[id(dist)] = name_and_version(dist)
            name, version = dists[id(dist)]
        found.append((ep.name, ep.value, version, name, ep.load))
    for name, module in _extra_plugins(environ):
        found.append((name, module, "local", ENV_EXTRA, lambda m=module: importlib.import_module(m)))
    return found


def load_plugins(disabled: Iterable[str] = (), environ: Mapping[str, str] | None = None,
                 extra: Sequence[tuple[str, Any]] = (), tolerant: bool = False) -> tuple[pluggy.PluginManager, Registry]:
    """Import every enabled plugin, register it and collect its declarations.

    ``extra`` registers already-imported plugin objects (the console reporter,
    tests). Raises :class:`PluginError` naming the plugin for any failure --
    unless ``tolerant``: then a plugin that fails is left out and its error
    kept in ``Registry.broken``, so that ``tinybuild plugins`` can still list
    the others (a build must not silently run without a plugin it may need).
    """
    env = os.environ if environ is None else environ
    disabled_set = set(disabled) | disabled_from_env(env)
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()

    candidates = _candidates(env)
    known = {c[0] for c in candidates}
    unknown = disabled_set - known
    if unknown:
        name = sorted(unknown)[0]
        hint = did_you_mean(name, known) or f"installed plugins: {', '.join(sorted(known))}"
        raise UsageError(f"cannot disable plugin '{name}': no such plugin; {hint}")

    def fail(name: str, error: PluginError, cause: BaseException | None = None) -> None:
        if not tolerant:
            raise error from cause  # the cause is what --debug shows
        registry.broken[name] = str(error)

    for name, module_name, version, dist, load in candidates:
        if name in disabled_set:
            registry.disabled.append(name)
            registry.disabled_loaders.setdefault(name, load)
            continue
        if name in registry.plugins and registry.plugins[name].module == module_name:
            continue  # the same plugin twice (installed and named in TINYBUILD_PLUGINS): load it once
        if name in registry.plugins:
            fail(f"{name} ({module_name})", PluginError(
                f"two plugins are named '{name}' ({registry.plugins[name].module} and {module_name}); "
                f"uninstall one or disable it with --disable-plugin {name}"))
            continue
        try:
            module = load()
        except (Exception, SystemExit) as exc:  # any import-time failure is the plugin's; so is sys.exit()
            fail(name, PluginError(
                f"plugin '{name}' ({module_name}) failed to import: {_what_failed(exc)}\n"
                f"  fix: reinstall or fix the plugin, or skip it with --disable-plugin {name} (or {ENV_DISABLE}={name})"
            ), exc)
            continue
        try:
            pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            fail(name, PluginError(f"plugin '{name}' ({module_name}) implements an invalid hook: {exc}"), exc)
            continue
        registry.plugins[name] = PluginInfo(name=name, module=module_name, version=version, dist=dist)

    for name, obj in extra:
        pm.register(obj, name=name)

    _collect(pm, registry, fail)
    for name in registry.broken:  # a plugin that failed in a hook is listed as broken only
        if registry.plugins.pop(name, None) is not None:
            pm.unregister(name=name)
            for table, owners in ((registry.step_types, registry.step_plugin), (registry.passes, registry.pass_plugin)):
                for item in [n for n, owner in owners.items() if owner == name]:
                    del table[item], owners[item]
    return pm, registry


def _what_failed(exc: BaseException) -> str:
    """How plugin code failed, for a message: ``called sys.exit(0)`` or ``KeyError: 'x'``."""
    return f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"


def _call_registry_hook(pm: pluggy.PluginManager, hook_name: str,
                        fail: Callable[..., None]) -> list[tuple[str, list[Any]]]:
    results = []
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # registration order
        name = impl.plugin_name
        try:
            declared = impl.function()
        except (Exception, SystemExit) as exc:  # a plugin must not end the run (and choose its exit code)
            fail(name, PluginError(f"plugin '{name}' failed in hook {hook_name}: {_what_failed(exc)}"), exc)
            continue
        if declared is None:
            continue
        try:
            results.append((name, list(declared)))
        except TypeError:
            fail(name, PluginError(f"plugin '{name}': {hook_name} must return a list, got {type(declared).__name__}"))
    return results


def _collect(pm: pluggy.PluginManager, registry: Registry, fail: Callable[..., None]) -> None:
    _register(pm, "tinybuild_step_types", StepType, "step type", registry.step_types, registry.step_plugin,
              lambda info: info.step_types, registry, fail)
    _register(pm, "tinybuild_graph_passes", GraphPass, "graph pass", registry.passes, registry.pass_plugin,
              lambda info: info.passes, registry, fail)


def _register(pm: pluggy.PluginManager, hook: str, cls: type, label: str, table: dict[str, Any],
              owners: dict[str, str], listing: Callable[[PluginInfo], list[str]], registry: Registry,
              fail: Callable[..., None]) -> None:
    """Collect one registry hook's declarations, rejecting wrong types and duplicate names."""
    for plugin, declared in _call_registry_hook(pm, hook, fail):
        for item in declared:
            if not isinstance(item, cls):
                fail(plugin, PluginError(f"plugin '{plugin}': {hook} returned {item!r}, expected tinybuild.api.{cls.__name__}"))
                continue
            if item.name in table:
                if owners[item.name] == plugin:
                    fail(plugin, PluginError(f"plugin '{plugin}' declares {label} '{item.name}' twice in {hook}; "
                                             "remove one declaration (or give it another name)"))
                else:
                    fail(plugin, PluginError(f"plugins '{owners[item.name]}' and '{plugin}' both declare {label} "
                                             f"'{item.name}'; disable one with --disable-plugin"))
                continue
            table[item.name] = item
            owners[item.name] = plugin
            if plugin in registry.plugins:
                listing(registry.plugins[plugin]).append(item.name)


class Hooks:
    """Typed facade over the lifecycle hooks; the only caller of ``pm.hook``."""

    def __init__(self, pm: pluggy.PluginManager):
        self._pm = pm

    def _call(self, hook_name: str, **kwargs: Any) -> None:
        hook = getattr(self._pm.hook, hook_name)
        try:
            hook(**kwargs)
        except Exception as exc:
            raise PluginError(f"a plugin failed in hook {hook_name}: {type(exc).__name__}: {exc}") from exc

    def build_started(self, recipe: str, steps: Sequence[str]) -> None:
        self._call("tinybuild_build_started", recipe=recipe, steps=list(steps))

    def build_finished(self, recipe: str, summary: Mapping[str, Any]) -> None:
        self._call("tinybuild_build_finished", recipe=recipe, summary=dict(summary))

    def step_started(self, step: str, step_type: str, reasons: Sequence[str]) -> None:
        self._call("tinybuild_step_started", step=step, step_type=step_type, reasons=list(reasons))

    def step_progress(self, step: str, completed: float, total: float | None, description: str) -> None:
        self._call("tinybuild_step_progress", step=step, completed=completed, total=total, description=description)

    def step_log(self, step: str, message: str) -> None:
        self._call("tinybuild_step_log", step=step, message=message)

    def step_cached(self, step: str, step_type: str, digest: str, source: str = "local",
                    transfer: Mapping[str, Any] | None = None) -> None:
        self._call("tinybuild_step_cached", step=step, step_type=step_type, digest=digest, source=source,
                   transfer=dict(transfer) if transfer else None)

    def step_finished(self, step: str, step_type: str, digest: str, seconds: float, metrics: Mapping[str, Any]) -> None:
        self._call("tinybuild_step_finished", step=step, step_type=step_type, digest=digest, seconds=seconds, metrics=dict(metrics))

    def step_failed(self, step: str, step_type: str, error: str, skipped: Sequence[str]) -> None:
        self._call("tinybuild_step_failed", step=step, step_type=step_type, error=error, skipped=list(skipped))


def module_file(module_name: str) -> str | None:
    """Source file of a module, for fingerprints, without importing it (a
    plugin's helper modules may import numpy or worse at top level)."""
    module = sys.modules.get(module_name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise PluginError(f"module '{module_name}' (named in a plugin's fingerprint_modules) cannot be found")
    return spec.origin if spec.has_location else None
