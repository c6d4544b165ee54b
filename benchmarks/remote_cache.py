"""Remote cache and integrity costs: prints a table, exits 0.

* two CI runners sharing ``s3://`` on a real S3 API (moto's server on
  127.0.0.1), each a fresh ``tinybuild`` process with its own local cache;
* a build whose S3 endpoint is unreachable (a closed port on 127.0.0.1):
  the circuit breaker turns the remote off after the first failure;
* copying a 64 MB object out of the cache with its digest checked on the way
  (what every materialization now does) vs a plain copy.

Uses the toy plugin of the core tests (no TensorFlow), so it runs in seconds.
Run: .venv/bin/python benchmarks/remote_cache.py
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "core"))

from toyenv import BUILTIN_PLUGINS, TOY_RECIPE  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(work: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "tinybuild", "build", str(work / "recipe.toml"), "--plain", *args],
                         env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"build failed ({run.returncode}):\n{run.stderr}")
    return elapsed, run.stderr


def main() -> int:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "numbers.txt").write_text("1 2 3\n")
        (work / "recipe.toml").write_text(TOY_RECIPE)
        env = {**os.environ, "TINYBUILD_PLUGINS": "toy=toy_plugin", "TINYBUILD_DISABLE_PLUGINS": ",".join(BUILTIN_PLUGINS),
               "PYTHONPATH": str(ROOT / "tests" / "core"), "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1", "TINYBUILD_REMOTE_KEY": "bench key", "TINYBUILD_NO_FASTPATH": "1"}

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            import boto3

            endpoint = f"http://127.0.0.1:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                         aws_secret_access_key="bench").create_bucket(Bucket="bench")
            s3 = {**env, "AWS_ENDPOINT_URL": endpoint}
            local, _ = build(work, env, "--cache-dir", str(work / "c0"), "--out", str(work / "o0"))
            first, err1 = build(work, s3, "--remote-cache", "s3://bench/t", "--cache-dir", str(work / "c1"), "--out", str(work / "o1"))
            second, err2 = build(work, s3, "--remote-cache", "s3://bench/t", "--cache-dir", str(work / "c2"), "--out", str(work / "o2"))
            rows += [("6-step toy build, no remote", f"{local:.2f} s", ""),
                     ("runner 1: builds, signs and pushes to S3 (moto)", f"{first:.2f} s", err1.strip().splitlines()[-2]),
                     ("runner 2: pulls everything", f"{second:.2f} s", err2.strip().splitlines()[-2])]
        finally:
            server.stop()

        dead = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
        times = []
        for i in range(3):
            elapsed, err = build(work, dead, "--remote-cache", "s3://bench/t", "--cache-dir", str(work / f"d{i}"), "--out", str(work / f"do{i}"))
            times.append(elapsed)
        warnings = sum(line.startswith("warning:") for line in err.splitlines())
        rows.append(("unreachable endpoint (closed port), median of 3", f"{statistics.median(times):.2f} s",
                     f"max {max(times):.2f} s; {warnings} warning, 6 steps built locally; {err.strip().splitlines()[-2]}"))

        # botocore's own default (legacy mode, 5 attempts): naming the mode tells tinybuild the user chose
        legacy = []
        for i in range(3):
            elapsed, err = build(work, {**dead, "AWS_RETRY_MODE": "legacy"}, "--remote-cache", "s3://bench/t",
                                 "--cache-dir", str(work / f"dl{i}"), "--out", str(work / f"dlo{i}"))
            legacy.append(elapsed)
        rows.append(("unreachable endpoint, botocore's default retries, median of 3", f"{statistics.median(legacy):.2f} s",
                     f"max {max(legacy):.2f} s; {sum(line.startswith('warning:') for line in err.splitlines())} warning"))

        sys.path.insert(0, str(ROOT))
        from tinybuild.cache import Cache

        cache = Cache(work / "big")
        blob = work / "blob.bin"
        blob.write_bytes(os.urandom(64 << 20))
        digest = cache.put_file(blob)
        checked, plain = [], []
        for _ in range(5):
            started = time.perf_counter()
            with open(work / "out1.bin", "wb") as out:
                cache.copy_object(digest, out)
            checked.append(time.perf_counter() - started)
            started = time.perf_counter()
            shutil.copyfile(cache.object_path(digest), work / "out2.bin")
            plain.append(time.perf_counter() - started)
        rows.append(("copy a 64 MB object out, sha256 checked (median of 5)", f"{statistics.median(checked):.3f} s",
                     f"plain copy: {statistics.median(plain):.3f} s"))

    width = max(len(r[0]) for r in rows)
    print("time: wall clock of a fresh `tinybuild` process (Python start-up and imports included);")
    print("the build's own time is in its summary line (notes)\n")
    print(f"{'what':<{width}}  {'time':>8}  notes")
    for what, t, note in rows:
        print(f"{what:<{width}}  {t:>8}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
