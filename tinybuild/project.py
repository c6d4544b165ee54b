"""A loaded recipe, ready to plan or build: steps bound to plugins, the DAG,
and where its cache, outputs and lock file live."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .cache import ENV_CACHE_DIR, Cache
from .keys import KeyMemo
from .graph import build_dag, checked_order, with_upstream
from .errors import UsageError, did_you_mean
from .safeio import not_regular_message

if TYPE_CHECKING:
    import networkx as nx
    import pluggy

    from .plugins import Registry
    from .recipe import Recipe
    from .resolve import ResolvedStep

ENV_OUT_DIR = "TINYBUILD_OUT"


@dataclass
class Project:
    recipe: Recipe
    registry: Registry
    pm: pluggy.PluginManager
    steps: dict[str, ResolvedStep]
    cache: Cache
    out_dir: Path
    order: list[str] = field(default_factory=list)
    lock_file: Path | None = None
    remote: Any = None  # a tinybuild.remote.RemoteCache when configured
    keys: KeyMemo = field(default_factory=KeyMemo)  # each step keyed once per build (plan, then executor)
    _dag: Any = field(default=None, repr=False)

    @property
    def dag(self) -> nx.DiGraph:
        """The recipe's networkx DAG, built on first use: a build or ``plan``
        that only runs steps in :attr:`order` never imports networkx."""
        if self._dag is None:
            self._dag = build_dag(self.steps, str(self.recipe.path))
        return self._dag

    @property
    def lock_path(self) -> Path:
        return self.lock_file or self.recipe.lock_path

    def step_out_dir(self, name: str) -> Path:
        return self.out_dir / name

    def select(self, only: Sequence[str] = ()) -> list[str]:
        """Run order of the steps to build: all, or ``only`` with their upstream."""
        self.check_names(only, "--only")
        if not only:
            return list(self.order)
        chosen = with_upstream(self.dag, only)
        return [n for n in self.order if n in chosen]

    def check_names(self, names: Iterable[str], flag: str) -> None:
        for name in names:
            if name not in self.steps:
                members = [n for n, s in self.steps.items() if s.spec.table == name]
                if members:  # a swept table's name: say which steps it became
                    raise UsageError(f"{flag} {name}: '{name}' is a sweep in {self.recipe.path.name}; name one of its "
                                     f"steps: {', '.join(members)}")
                hint = did_you_mean(name, self.steps)
                raise UsageError(f"{flag} {name}: no step named '{name}' in {self.recipe.path.name}; "
                                 + (hint or f"steps: {', '.join(self.order)}"))


def default_cache_dir(recipe: Recipe) -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser().resolve() if env else recipe.dir / ".tinybuild"


def default_out_dir(recipe: Recipe) -> Path:
    env = os.environ.get(ENV_OUT_DIR)
    base = Path(env).expanduser().resolve() if env else recipe.dir / "build"
    return base / recipe.meta.name


def load_project(recipe_path: str | Path, *, cache_dir: str | Path | None = None, out_dir: str | Path | None = None,
                 lock: str | Path | None = None, disabled: Iterable[str] = (),
                 extra_plugins: Sequence[tuple[str, Any]] = ()) -> Project:
    from .plugins import load_plugins  # pydantic and the plugins: only for a full load
    from .recipe import load_recipe
    from .resolve import resolve_recipe

    recipe = load_recipe(recipe_path)
    pm, registry = load_plugins(disabled=disabled, extra=extra_plugins)
    steps = resolve_recipe(recipe, registry)
    order = checked_order(steps, str(recipe.path))  # cycles and artifact kinds, before anything else
    return assemble(recipe, registry, pm, steps, order, cache_dir=cache_dir, out_dir=out_dir, lock=lock)


def assemble(recipe: Any, registry: Any, pm: Any, steps: dict[str, Any], order: list[str], *,
             cache_dir: str | Path | None = None, out_dir: str | Path | None = None,
             lock: str | Path | None = None) -> Project:
    """A :class:`Project` from a resolved recipe, after the checks of the
    folders it will write: shared by the full load and the configuration
    cache (:mod:`tinybuild.configcache`), whose recipe and steps are records."""
    cache = Cache(Path(cache_dir).expanduser().resolve() if cache_dir else default_cache_dir(recipe))
    out = Path(out_dir).expanduser().resolve() / recipe.meta.name if out_dir else default_out_dir(recipe)
    lock_file = Path(lock).expanduser().resolve() if lock else None
    _check_folder(cache.root, "--cache-dir (or $TINYBUILD_CACHE_DIR)")
    _check_folder(out.parent, "--out (or $TINYBUILD_OUT)")
    _check_separate(cache.root, out, recipe.path)
    if lock_file is not None and lock_file.is_dir():
        raise UsageError(f"--lock {lock_file}: is a folder; give a file path, e.g. {lock_file / 'recipe.lock.json'}")
    _check_lock_file(lock_file or recipe.lock_path, "--lock" if lock_file else "lock file")
    return Project(recipe=recipe, registry=registry, pm=pm, steps=steps, cache=cache, out_dir=out,
                   order=order, lock_file=lock_file)


def _check_lock_file(path: Path, option: str) -> None:
    """The lock file is replaced on every build: in place of a FIFO or a
    device (``--lock /dev/zero``) that would replace the device node."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # absent (created by the build) or unreadable (reported when read)
    if not stat.S_ISREG(mode):
        raise UsageError(f"{option} {path}: {not_regular_message(mode)}; give the path of a .lock.json file")


def _check_folder(path: Path, option: str) -> None:
    """A folder tinybuild will write into must be a folder (or not exist yet)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise UsageError(f"{option}: {candidate} is a file, not a folder; choose another location")
            return


def _check_separate(cache_root: Path, build_folder: Path, recipe_path: Path) -> None:
    """``clean`` removes the build folder and ``build`` rewrites it: it must
    not overlap the cache (a recipe named ``objects`` with ``--out`` equal to
    ``--cache-dir`` would clean away the object store), nor hold the recipe."""
    cache, out = cache_root.resolve(), build_folder.parent.resolve()
    if cache == out or cache.is_relative_to(out) or out.is_relative_to(cache):
        where = "are the same folder" if cache == out else "overlap (one is inside the other)"
        raise UsageError(f"--out {build_folder.parent} and --cache-dir {cache_root} {where}: tinybuild removes and "
                         f"rewrites build folders, so they must be separate; e.g. --out {cache.parent / 'build'} "
                         f"(also check $TINYBUILD_OUT and $TINYBUILD_CACHE_DIR)")
    if recipe_path.resolve().is_relative_to(build_folder.resolve()):
        raise UsageError(f"--out {build_folder.parent}: the build folder {build_folder} would contain the recipe "
                         f"{recipe_path} (and `tinybuild clean` would delete it); choose another --out")
