"""Time the locks a build takes: what concurrency safety costs a build.

Usage: python benchmarks/locks.py [--runs N]

In one process: taking and releasing the build-folder lock and the shared
cache lock (what every normal-path build does once; the no-op fast path
takes no lock), the first time (creating the lock files) and then N times;
and N locked metadata updates (register a lock file, save the stat memo),
which only builds that ran or registered something make. Prints a table
and exits 0.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinybuild import locks, metadata  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def build_locks(root: Path) -> None:
    with locks.build_folder(root / "out" / "toy"), locks.cache_access(root / "cache", exclusive=False):
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tinybuild-locks-"))
    try:
        first = timed(lambda: build_locks(root))
        again = [timed(lambda: build_locks(root)) for _ in range(args.runs)]
        import filelock  # noqa: F401  (imported once by the first metadata update of a build)

        index = root / "cache" / "locks.json"
        memo = root / "cache" / "statmemo.json"
        register = [timed(lambda i=i: metadata.register(index, root / f"r{i}.lock.json")) for i in range(args.runs)]
        save = [timed(lambda i=i: metadata.save_memo(memo, {str(index): [1, 2, 3, 4, 5, "a" * 64, i]}))
                for i in range(args.runs)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"runs: {args.runs}")
    print(f"{'what':<52} {'median ms':>10} {'min ms':>8}")
    print(f"{'build-folder + cache lock, first (creates lock files)':<52} {first:>10.3f} {first:>8.3f}")
    for label, values in (("build-folder + cache lock, again", again),
                          ("register a lock file in locks.json (locked merge)", register),
                          ("save the stat memo (locked merge)", save)):
        print(f"{label:<52} {statistics.median(values):>10.3f} {min(values):>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
