"""The ``tinybuild`` command line: the only place errors become exit codes.

Exit codes: 0 built · 1 a step failed · 2 recipe or usage error · 3 a budget
gate failed · 130 interrupted (2 also when `--no-wait` finds the build folder
or the cache busy). Recipe and plugin errors are printed as
messages, never tracebacks (``--debug`` shows them).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on the fast path
if TYPE_CHECKING:
    from typing import Any, Sequence

from . import __version__
from .errors import TinybuildError, UsageError

DEFAULT_RECIPE = "recipe.toml"
#: when this command started (before it imported any plugin): `build --watch` trusts no source changed since
STARTED_NS = time.time_ns()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR", help="cache location (default: .tinybuild beside the recipe, or $TINYBUILD_CACHE_DIR)")
    p.add_argument("--out", metavar="DIR", help="build folder (default: build/ beside the recipe, or $TINYBUILD_OUT); outputs go to DIR/<recipe name>/<step>/")
    p.add_argument("--remote-cache", metavar="URL", help="shared cache on any fsspec URL (s3://, gs://, file://...; also $TINYBUILD_REMOTE_CACHE)")
    p.add_argument("--no-push", action="store_true", help="read from the remote cache but never write to it")
    p.add_argument("--lock", metavar="FILE", help="lock file (default: <recipe>.lock.json beside the recipe)")
    p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME", help="do not load this plugin (repeatable; also $TINYBUILD_DISABLE_PLUGINS=a,b)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def _no_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--no-wait", action="store_true",
                   help=f"fail at once (exit 2) instead of waiting when {what}")


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized to the terminal without importing
    ``shutil`` (and with it ``bz2``/``lzma``) on every run: argparse sizes a
    formatter each time an argument is added, help or not."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                columns = 80
        kwargs.setdefault("width", max(columns - 2, 20))
        super().__init__(prog, **kwargs)


def make_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line. ``only``: build just that subcommand's parser (the
    no-op fast path parses ``build`` alone: the other ten cost more than the
    rest of the check); the full parser otherwise (``--help``, errors)."""
    parser = argparse.ArgumentParser(prog="tinybuild", description="Declarative, cached builds for small ML models.",
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"tinybuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    if only in (None, "build"):
        p = sub.add_parser("build", formatter_class=_Formatter, help="build a recipe (only what changed)")
        p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE)
        p.add_argument("--only", action="append", default=[], metavar="STEP", help="build only STEP and its upstream (repeatable)")
        p.add_argument("--force", action="append", default=[], metavar="STEP", help="rerun STEP even if cached (repeatable)")
        p.add_argument("--keep-going", action="store_true", help="after a failure, keep building independent branches")
        p.add_argument("--plain", action="store_true", help="plain log lines even on a terminal")
        p.add_argument("--watch", action="store_true",
                       help="after the build, rebuild whenever a file it depends on changes (Ctrl-C to stop)")
        p.add_argument("-v", "--verbose", action="store_true", help="also list cached steps, and the bytes and time of remote-cache transfers")
        _no_wait(p, "another build of the same build folder, or gc, is running")
        p.add_argument("-j", "--jobs", type=_jobs, default=None, metavar="N",
                       help="run up to N ready steps at once, each in a worker process (default 1: in this process; also $TINYBUILD_JOBS)")
        p.add_argument("--executor", choices=["local", "ray"], default=None,
                       help="where steps run: local (this machine, see -j) or ray (tasks on a Ray cluster; also $TINYBUILD_EXECUTOR)")
        p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to use with --executor ray, e.g. 10.0.0.5:6379 (default: $RAY_ADDRESS, else a local Ray started for the build)")
        _common(p)

    if only in (None, "plan"):
        p = sub.add_parser("plan", formatter_class=_Formatter, help="show what a build would run, and why")
        p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE)
        p.add_argument("--only", action="append", default=[], metavar="STEP")
        p.add_argument("--force", action="append", default=[], metavar="STEP")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        _common(p)

    if only in (None, "graph"):
        p = sub.add_parser("graph", formatter_class=_Formatter, help="print the recipe's step graph")
        p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE)
        p.add_argument("--format", choices=["text", "dot", "mermaid"], default="text")
        _common(p)

    if only in (None, "show"):
        p = sub.add_parser("show", formatter_class=_Formatter, help="print a built step's files and metrics")
        p.add_argument("args", nargs="+", metavar="[RECIPE] STEP")
        _common(p)

    if only in (None, "clean"):
        p = sub.add_parser("clean", formatter_class=_Formatter, help="remove a recipe's build folder (not the cache)")
        p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE)
        _no_wait(p, "a build of this recipe is running")
        _common(p)

    if only in (None, "gc"):
        p = sub.add_parser("gc", formatter_class=_Formatter, help="drop cache entries that no lock file references")
        p.add_argument("recipe", nargs="?", default=None, help="a recipe whose cache to collect (default: --cache-dir, else $TINYBUILD_CACHE_DIR, else recipe.toml)")
        p.add_argument("--dry-run", action="store_true", help="only report what would be removed")
        _no_wait(p, "builds are using the cache")
        _common(p)

    if only in (None, "verify"):
        p = sub.add_parser("verify", formatter_class=_Formatter, help="check every object and action entry of a cache (exit 1 on damage)")
        p.add_argument("recipe", nargs="?", default=None, help="a recipe whose cache to check (default: --cache-dir, else $TINYBUILD_CACHE_DIR, else recipe.toml)")
        p.add_argument("--repair", action="store_true", help="move damaged objects and broken entries to the cache's quarantine/ folder")
        _common(p)

    if only in (None, "plugins"):
        p = sub.add_parser("plugins", formatter_class=_Formatter, help="list installed plugins, their step types and passes")
        p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME")
        p.add_argument("--debug", action="store_true")

    if only in (None, "schema"):
        p = sub.add_parser("schema", formatter_class=_Formatter, help="print the JSON Schema of recipes (with every plugin's params)")
        p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME")
        p.add_argument("--debug", action="store_true")

    if only in (None, "new-plugin"):
        p = sub.add_parser("new-plugin", formatter_class=_Formatter, help="write a plugin package (a step type, a graph pass, their tests) to start from")
        p.add_argument("name", help="plugin name: lowercase letters, digits, dashes (also the package's distribution name)")
        p.add_argument("--dir", default=".", metavar="DIR", help="folder to create the package in (default: .); writes DIR/NAME/")
        p.add_argument("--debug", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    only = words[0] if words and words[0] == "build" and not {"-h", "--help"} & set(words) else None
    parser = make_parser(only)
    args = parser.parse_args(words)
    args.restartable = argv is None  # `build --watch` restarts as this same command line when code changes
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _terminate)
    # The cycle collector is off for the CLI's own work. A build's bookkeeping
    # is acyclic data parsed from JSON and TOML (lock file, no-op stamp,
    # configuration entry: 2 MB at 1,000 steps) that reference counting frees,
    # yet every few thousand allocations the collector walks all of it again:
    # 25-30 ms of a 1,000-step delta rebuild went to that in the loop over
    # the cached steps alone. It stays on where other code runs long in this
    # process: a step's own code (executor.collecting: training builds
    # reference cycles), the driver of -j and Ray builds (observers replaying
    # every forwarded event), and a remote cache's clients (fsspec's asyncio).
    collecting = gc.isenabled()
    if not _remote_url(args):
        gc.disable()
    try:
        if os.environ.get("TINYBUILD_WATCH_RESTARTED"):  # watch.RESTARTED, without importing it here
            from .watch import after_restart

            after_restart()
        _check_paths(args)
        return int(COMMANDS[args.command](args) or 0)
    except TinybuildError as exc:
        if getattr(args, "debug", False):
            raise
        return _report(exc)
    except KeyboardInterrupt:
        print("interrupted: nothing partial was cached", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _reader_gone():
            raise
        return _quiet_exit()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if collecting:
            gc.enable()


#: exit status of a command whose reader went away (128 + SIGPIPE, as git and the shell give)
EXIT_PIPE_CLOSED = 141


def _reader_gone() -> bool:
    """Whether our stdout or stderr is a pipe whose reader has closed it
    (``tinybuild plan | head -3``); a broken pipe of anything else (a worker's)
    is a real error and is raised."""
    import select

    for stream in (sys.stdout, sys.stderr):
        try:
            poller = select.poll()
            poller.register(stream.fileno(), select.POLLOUT)
            if any(events & select.POLLERR for _, events in poller.poll(0)):
                return True
        except (AttributeError, OSError, ValueError):  # no file descriptor (captured output)
            continue
    return False


def _quiet_exit() -> int:
    """Stop as other Unix tools do when their reader goes away: no traceback,
    and nothing more written (the interpreter's final flush would fail again)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass
    return EXIT_PIPE_CLOSED


_PATH_OPTIONS = (("recipe", "recipe"), ("cache_dir", "--cache-dir"), ("out", "--out"), ("lock", "--lock"))


def _check_paths(args: argparse.Namespace) -> None:
    """Paths that cannot name a file (a NUL byte, a name over 255 bytes) are
    usage errors here, not ``ValueError``/``ENAMETOOLONG`` tracebacks later."""
    from .safeio import path_problem

    for attr, option in _PATH_OPTIONS:
        value = getattr(args, attr, None)
        problem = path_problem(value) if isinstance(value, str) else None
        if problem:
            shown = value.replace("\x00", "\\0")
            shown = shown if len(shown) <= 80 else shown[:60] + "..."
            raise UsageError(f"{option} {shown}: {problem}; give a shorter or valid path")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _report(exc: TinybuildError) -> int:
    """Print an error as a message (no traceback); its exit code."""
    print(_error_text(exc), file=sys.stderr, flush=True)
    return exc.exit_code


def _error_text(exc: TinybuildError) -> str:
    from .errors import RecipeError

    text = str(exc)
    return text if isinstance(exc, RecipeError) else f"error: {text}"


# -- commands -----------------------------------------------------------------


def _project(args: argparse.Namespace, extra: Sequence[tuple[str, Any]] = (), record: bool = False):
    """The full load (plugins, pydantic); with ``record``, its resolution is
    kept in the configuration cache for the next ``plan``/``build``."""
    from .project import load_project

    project = load_project(args.recipe, cache_dir=args.cache_dir, out_dir=args.out, lock=args.lock,
                           disabled=args.disable_plugin, extra_plugins=extra)
    if record:
        from . import configcache

        if configcache.enabled(os.environ):
            configcache.record(project, configcache.entry_path(Path(args.recipe), args.cache_dir, args.out,
                                                               args.disable_plugin, os.environ, args.lock))
    url = _remote_url(args)
    if url:
        from .remote import RemoteCache, secret_from_env

        try:
            project.remote = RemoteCache(url, push=not args.no_push, warn=lambda m: print(f"warning: {m}", file=sys.stderr),
                                         secret=secret_from_env())
        except (ImportError, ValueError) as exc:
            raise UsageError(f"--remote-cache {url}: {exc}; use a URL fsspec understands (file://, s3://, gs://, ...)") from None
    return project


def cmd_build(args: argparse.Namespace) -> int:
    if not args.watch:
        return _build_command(args)
    from . import watch

    return watch.watch(Path(args.recipe), lambda: _stamp(args), lambda: _watched_build(args),
                       can_restart=args.restartable, started_ns=STARTED_NS, note=_note)


def _watched_build(args: argparse.Namespace) -> int:
    """One build of a watch: its errors are printed, and the watch goes on."""
    try:
        return _build_command(args)
    except TinybuildError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        return _report(exc)


def _stamp(args: argparse.Namespace) -> Path:
    from . import fastpath

    return fastpath.stamp_path(Path(args.recipe), args.cache_dir, args.out, args.disable_plugin, _environ(), args.lock)


def _build_command(args: argparse.Namespace) -> int:
    """``tinybuild build``: the no-op fast path, a delta rebuild, the
    configuration cache or the full load, the first that applies."""
    from . import fastpath

    recipe = Path(args.recipe)
    stamp = _stamp(args)
    eligible = not (args.only or args.force or _remote_url(args))
    eligible = eligible and _is_regular_file(recipe)  # else loading the recipe says why
    if eligible and not args.verbose:
        summary = fastpath.try_noop(recipe, args.cache_dir, args.out, args.disable_plugin, lock=args.lock)
        if summary is not None:
            _print_noop(summary)
            return 0

    if eligible and _replayable(args):  # an edit of a few step tables: rerun those, trust the rest
        code = _delta_build(args, stamp)
        if code is not None:
            return code
    fastpath.invalidate(stamp)
    recorded = _recorded_project(args, build=True) if _replayable(args) else None
    if recorded is not None:  # the configuration cache: replay the cache hits without loading plugins
        from . import configcache

        try:
            executor = configcache.recorded_executor(recorded, _reporter(args))
            return _build(args, recorded, lambda: executor, stamp, eligible)
        except Exception:  # noqa: BLE001 - NeedsFullLoad, an error to report, any doubt
            pass  # the full load runs what must run and reports errors, as always

    from .executor import Executor
    from .plugins import Hooks

    project = _project(args, extra=[(REPORTER, _reporter(args))], record=recorded is None)
    return _build(args, project, lambda: Executor(project, Hooks(project.pm), _scheduler(args, project)), stamp, eligible)


def _reporter(args: argparse.Namespace) -> Any:
    """A fresh console for one attempt at the build (a path that falls back
    to the next one leaves nothing half-printed in it)."""
    from .console import ConsoleReporter

    return ConsoleReporter(live=False if args.plain else None, verbose=args.verbose)


def _delta_build(args: argparse.Namespace, stamp: Path) -> int | None:
    """A delta rebuild (:mod:`tinybuild.delta`), or None when it does not apply
    (nothing has been run or printed then; the normal path builds)."""
    from . import delta
    from .configcache import NeedsFullLoad

    prepared = delta.prepare(Path(args.recipe), cache_dir=args.cache_dir, out=args.out, lock=args.lock,
                             disabled=args.disable_plugin, reporter=_reporter(args))
    if prepared is None:
        return None
    try:
        code = _build(args, prepared.project, lambda: prepared.executor(stamp), stamp, True, delta=prepared)
    except NeedsFullLoad:
        return None
    if code == 0:
        prepared.record()
    return code


def _build(args: argparse.Namespace, project: Any, make_executor: Any, stamp: Path, eligible: bool,
           delta: Any = None) -> int:
    """Build under the build folder's and the cache's locks, then stamp a
    successful build for the no-op fast path (a ``delta`` rebuild's stamp
    keeps the entries of the steps it did not touch)."""
    from . import buildfolder, fastpath, locks
    from .executor import BuildOptions

    _check_build_folder(project.out_dir)
    buildfolder.check_inputs_outside(project)
    # The build folder's lock serializes builds of one folder (outputs, logs,
    # stamp); the shared cache lock keeps gc out until this build's lock file
    # is written and registered.
    with locks.build_folder(project.out_dir, wait=not args.no_wait, notify=_note), \
            locks.cache_access(project.cache.root, exclusive=False, wait=not args.no_wait, notify=_note, warn=_warn):
        from .lockfile import read_lock

        buildfolder.claim(project.out_dir, read_lock(project.lock_path))  # never write into a folder tinybuild did not create
        listed = fastpath.listed_folders(project) if eligible else None  # before the build lists them
        result = make_executor().build(BuildOptions(only=args.only, force=args.force, keep_going=args.keep_going))
        if result.exit_code == 0:
            print(f"outputs: {project.out_dir}", file=sys.stderr)
            if eligible:
                try:
                    fastpath.record_build(project, result, stamp, REPORTER, listed,
                                          previous=delta.previous if delta else None,
                                          touched=delta.touched if delta else ())
                except OSError as exc:  # e.g. a read-only cache: the next build takes the normal path
                    _warn(f"could not record the no-op stamp ({exc.strerror or exc}); the next build takes the normal path")
    return result.exit_code


def _replayable(args: argparse.Namespace) -> bool:
    """Whether a build may be replayed from the configuration cache: only cache
    hits are, so nothing that forces a run, selects steps or runs elsewhere."""
    env = os.environ
    jobs = args.jobs if args.jobs is not None else env.get("TINYBUILD_JOBS") or 1
    return (not (args.only or args.force or args.ray_address) and str(jobs) == "1"
            and (args.executor or env.get("TINYBUILD_EXECUTOR") or "local") == "local")


def _recorded_project(args: argparse.Namespace, build: bool = False) -> Any:
    """The project from the configuration cache, or None (a miss, a remote cache, any doubt)."""
    from . import configcache

    if _remote_url(args) or not configcache.enabled(os.environ):
        return None
    return configcache.load(Path(args.recipe), cache_dir=args.cache_dir, out=args.out, lock=args.lock,
                            disabled=args.disable_plugin, build=build)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _check_build_folder(folder: Path) -> None:
    """The build folder is rewritten and cleaned: never through a link."""
    if folder.is_symlink():
        raise UsageError(f"the build folder {folder} is a symbolic link (to {os.readlink(folder)}); tinybuild never "
                         f"writes or deletes through links. Remove the link (`tinybuild clean` does) or choose another --out")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"the build folder {folder} is a file, not a folder; remove it or choose another --out")


REPORTER = "tinybuild.console"


def _is_regular_file(path: Path) -> bool:
    """Whether the no-op fast path may read ``path`` (a FIFO would hang it)."""
    from .safeio import MAX_RECIPE_BYTES, check_regular  # not from .recipe: that imports pydantic

    try:
        return check_regular(path).st_size <= MAX_RECIPE_BYTES
    except OSError:
        return False


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"-j {text}: give a whole number of jobs, 1 or more (e.g. -j2)")
    return n


def _scheduler(args: argparse.Namespace, project: Any):
    """None (serial, in this process), local worker processes, or Ray."""
    executor = args.executor or os.environ.get("TINYBUILD_EXECUTOR") or "local"
    if executor not in ("local", "ray"):
        raise UsageError(f"$TINYBUILD_EXECUTOR={executor}: choose local or ray")
    jobs = args.jobs
    if jobs is None and os.environ.get("TINYBUILD_JOBS"):
        try:
            jobs = _jobs(os.environ["TINYBUILD_JOBS"])
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"$TINYBUILD_JOBS: {exc}") from None
    if executor == "ray":
        from .ray_executor import ray_scheduler

        return ray_scheduler(project, args.ray_address or os.environ.get("RAY_ADDRESS"), jobs)
    if args.ray_address:
        raise UsageError(f"--ray-address {args.ray_address}: only used with --executor ray")
    if not jobs or jobs == 1:
        return None
    from .scheduler import local_scheduler

    return local_scheduler(project.cache.tmp, jobs)


def _remote_url(args: argparse.Namespace) -> str | None:
    """The remote cache's URL: ``--remote-cache``, else ``$TINYBUILD_REMOTE_CACHE``; None for none."""
    return getattr(args, "remote_cache", None) or os.environ.get("TINYBUILD_REMOTE_CACHE") or None


def _environ() -> dict[str, str]:
    return dict(os.environ)


def _print_noop(summary: dict[str, Any]) -> None:
    """The summary only: listing every cached step is what ``-v`` is for (and
    ``-v`` takes the normal path, which lists them)."""
    steps = summary["steps"]
    if steps:  # one line, as the normal path prints a run of cached steps (-v lists each)
        first, last = steps[0][0], steps[-1][0]
        print(f"[1-{len(steps)}/{len(steps)}] {len(steps)} steps cached ({first} … {last}; -v lists each)"
              if len(steps) > 1 else f"[1/1] {first} cached {steps[0][1][:12]}", file=sys.stderr)
    print(f"ok: 0 built, {len(steps)} cached (nothing changed since the last build)", file=sys.stderr)
    print(f"outputs: {summary.get('out', '')}", file=sys.stderr)


def cmd_plan(args: argparse.Namespace) -> int:
    from .lockfile import read_lock
    from .plan import make_plan, plan_lines

    def planned(project: Any) -> Any:
        project.check_names(args.force, "--force")
        return make_plan(project, project.select(args.only), read_lock(project.lock_path), args.force)

    project = _recorded_project(args)
    plan = None
    if project is not None:  # the configuration cache: no plugin, no pydantic
        try:
            plan = planned(project)
        except Exception:  # noqa: BLE001 - an error, or any doubt about the records
            plan = None  # the full load answers (and reports errors) exactly as it always has
    if plan is None:
        project = _project(args, record=project is None)
        plan = planned(project)
    project.cache.memo.save()
    if args.json:
        print(json.dumps([{"step": i.name, "step_type": i.step_type, "status": i.status, "reasons": i.reasons, "key": i.key,
                           **_sweep_json(project.steps[i.name].spec)} for i in plan], indent=2))
    else:
        from .matrix import sweep_lines

        for line in sweep_lines(project.steps[i.name].spec for i in plan):
            print(line)
        for line in plan_lines(plan):
            print(line)
        todo = sum(1 for i in plan if i.status != "cached")
        print(f"{len(plan) - todo} cached, {todo} to run")
    return 0


def _sweep_json(spec: Any) -> dict[str, Any]:
    """A sweep member's table and coordinates, for ``plan --json``."""
    return {"sweep": {"table": spec.table, "coordinates": dict(spec.coordinates)}} if spec.table else {}


def cmd_graph(args: argparse.Namespace) -> int:
    from .graph import render_dot, render_mermaid, render_text

    project = _project(args)
    if args.format == "dot":
        print(render_dot(project.dag, project.recipe.meta.name))
    elif args.format == "mermaid":
        print(render_mermaid(project.dag))
    else:
        print(render_text(project.dag))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .lockfile import read_lock

    if len(args.args) > 2:
        raise UsageError("usage: tinybuild show [RECIPE] STEP")
    if len(args.args) == 1 and args.args[0].endswith(".toml"):
        raise UsageError(f"name the step to show: tinybuild show {args.args[0]} STEP "
                         f"(`tinybuild plan {args.args[0]}` lists the steps)")
    args.recipe, step = (args.args if len(args.args) == 2 else (DEFAULT_RECIPE, args.args[0]))
    project = _project(args)
    project.check_names([step], "show")
    entry = read_lock(project.lock_path).get(step)
    if entry is None:
        raise UsageError(f"step '{step}' has not been built yet; run: tinybuild build {args.recipe}")
    out = entry["output"]
    action = project.cache.get_action(entry["key"])
    folder = project.step_out_dir(step)
    print(f"{step}  [{project.steps[step].step_type.name} → {out['kind']}]  digest {out['digest'][:16]}")
    print(f"folder: {folder}")
    for rel, digest in sorted(out["files"].items()):
        path = folder / rel
        size = f"{path.stat().st_size:>10,} B" if path.exists() else "   (not materialized)"
        print(f"  {rel:<32} {size}  {digest[:12]}")
    metrics = action.metrics if action else None
    if metrics:
        print("metrics:")
        print(json.dumps(metrics, indent=2, sort_keys=True))
    elif action is None:
        print("(cache entry missing: metrics unavailable until the next build)")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from . import buildfolder, locks
    from .housekeeping import clean_outputs
    from .lockfile import read_lock

    project = _project(args)
    folder = project.out_dir
    buildfolder.check_inputs_outside(project)  # the data would go with the folder
    with locks.build_folder(folder, wait=not args.no_wait, notify=_note):
        link = folder.is_symlink()
        removed = clean_outputs(folder, project.recipe.meta.name, read_lock(project.lock_path))
    if link:
        print(f"removed the symbolic link {folder} (what it pointed to was left alone)", file=sys.stderr)
    else:
        print(f"removed {folder}" if removed else f"nothing to clean at {folder}", file=sys.stderr)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from . import locks
    from .housekeeping import QUARANTINE_DAYS, collect_garbage

    cache = _standalone_cache(args)
    with locks.cache_access(cache.root, exclusive=True, wait=not args.no_wait, notify=_note):
        report = collect_garbage(cache, dry_run=args.dry_run)
    for skipped in report.skipped:
        _warn(f"left alone: {skipped}; gc never follows links or leaves the cache")
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {report.objects} objects ({report.object_bytes:,} B), {report.actions} action entries, "
          f"{report.scratch} scratch folders, {report.quarantined} quarantined items over {QUARANTINE_DAYS} days old; kept {report.kept_objects} objects referenced by {report.locks} lock {'file' if report.locks == 1 else 'files'}")
    return 0


def _standalone_cache(args: argparse.Namespace):
    """The cache a cache-only command works on: --cache-dir, else
    $TINYBUILD_CACHE_DIR when no recipe is named, else the recipe's."""
    from .cache import ENV_CACHE_DIR, Cache

    if args.cache_dir:
        return Cache(Path(args.cache_dir).expanduser().resolve())
    if args.recipe is None and os.environ.get(ENV_CACHE_DIR):
        return Cache(Path(os.environ[ENV_CACHE_DIR]).expanduser().resolve())
    args.recipe = args.recipe or DEFAULT_RECIPE
    return _project(args).cache


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify_cache

    cache = _standalone_cache(args)
    report = verify_cache(cache, repair=args.repair)
    for kind, found in (("object", report.bad_objects), ("action entry", report.bad_actions)):
        for damage in found:
            print(f"damaged {kind} {damage.path}: {damage.reason}")
    print(f"checked {report.objects} objects and {report.actions} action entries in {cache.root}: "
          f"{len(report.bad_objects)} damaged objects, {len(report.bad_actions)} broken action entries")
    if report.damaged:
        if args.repair:
            print(f"moved {report.quarantined} of them to {cache.root / 'quarantine'}; the next build rebuilds what needed them")
        else:
            print("run `tinybuild verify --repair` to quarantine them (the next build then rebuilds what needed them)")
    return 1 if report.damaged else 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .plugins import load_plugins

    # tolerant: a broken plugin is listed with its error instead of hiding every other one
    _, registry = load_plugins(disabled=args.disable_plugin, tolerant=True)
    console = Console(highlight=False)
    plugins = Table(title="plugins", title_justify="left")
    for col in ("plugin", "version", "module", "step types", "graph passes"):
        plugins.add_column(col)
    for info in registry.plugins.values():
        plugins.add_row(info.name, info.version, info.module, ", ".join(info.step_types) or "-", ", ".join(info.passes) or "-")
    for name in registry.broken:
        plugins.add_row(name, "BROKEN", "-", "-", "-")
    console.print(plugins)
    if registry.disabled:
        console.print(f"disabled: {', '.join(registry.disabled)}", markup=False)
    for name, error in registry.broken.items():
        print(f"broken plugin '{name}': {error}", file=sys.stderr)
    steps = Table(title="step types", title_justify="left")
    for col in ("step type", "version", "plugin", "consumes → produces", "description"):
        steps.add_column(col, overflow="fold")
    for name, st in sorted(registry.step_types.items()):
        consumes = " | ".join(st.consumes) if st.consumes else "-"
        steps.add_row(name, st.version, registry.step_plugin[name], f"{consumes} → {st.produces}", st.description)
    console.print(steps)
    if registry.passes:
        passes = Table(title="graph passes", title_justify="left")
        for col in ("pass", "version", "exact", "plugin", "description"):
            passes.add_column(col, overflow="fold")
        for name, gp in sorted(registry.passes.items()):
            passes.add_row(name, gp.version, "yes" if gp.exact else "no", registry.pass_plugin[name], gp.description)
        console.print(passes)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .plugins import load_plugins
    from .schema import recipe_schema

    _, registry = load_plugins(disabled=args.disable_plugin)
    print(json.dumps(recipe_schema(registry), indent=2, sort_keys=True))
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import names_for, write_plugin

    root = write_plugin(args.name, Path(args.dir))
    names = names_for(args.name)
    print(f"wrote {root}: step type {names['step']}, graph pass {names['graph_pass']}, tests", file=sys.stderr)
    print(f"next: cd {root} && pip install -e . && pytest   (guide: docs/plugins.md)", file=sys.stderr)
    return 0


COMMANDS = {
    "build": cmd_build, "plan": cmd_plan, "graph": cmd_graph, "show": cmd_show, "clean": cmd_clean,
    "gc": cmd_gc, "verify": cmd_verify, "plugins": cmd_plugins, "schema": cmd_schema, "new-plugin": cmd_new_plugin,
}
