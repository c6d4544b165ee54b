"""A real, small Ray cluster on 127.0.0.1 for the Ray executor tests.

``ray start --head --block`` in its own session, with every port chosen free
(other Ray clusters may run on this machine) and a private temp dir; stopped
by killing exactly the processes that name that temp dir (never ``ray stop``,
which would stop every cluster of this user).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, env: dict[str, str], num_cpus: int = 2):
        self.temp = tempfile.mkdtemp(prefix="tbray")  # short: Ray's socket paths must fit in 107 bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        ports = {flag: free_port() for flag in ("--ray-client-server-port", "--node-manager-port", "--object-manager-port",
                                                "--metrics-export-port", "--dashboard-agent-listen-port",
                                                "--dashboard-agent-grpc-port", "--runtime-env-agent-port")}
        args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={self.port}",
                "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false",
                "--object-store-memory=80000000", "--disable-usage-stats", f"--temp-dir={self.temp}",
                *(f"{flag}={port}" for flag, port in ports.items())]
        self.log = open(Path(self.temp) / "start.log", "wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("ray start failed:\n" + (Path(self.temp) / "start.log").read_text()[-3000:])
                time.sleep(0.3)

    def _own_pids(self) -> list[int]:
        """Processes of this cluster: those that name its private temp dir, and
        their descendants (workers rename themselves ``ray::...``)."""
        parents: dict[int, int] = {}
        own: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if self.temp.encode() in cmd:
                own.add(int(entry.name))
        grew = True
        while grew:
            children = {pid for pid, ppid in parents.items() if ppid in own} - own
            own |= children
            grew = bool(children)
        return sorted(own)

    def worker_pids(self) -> list[int]:
        """Ray worker processes (``ray::<task name>`` once they run a task)."""
        out = []
        for pid in self._own_pids():
            try:
                if (Path("/proc") / str(pid) / "cmdline").read_bytes().startswith(b"ray::"):
                    out.append(pid)
            except OSError:
                pass
        return out

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            pids = set(self._own_pids()) | ({self.proc.pid} if self.proc.poll() is None else set())
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.proc.poll() is None or self._own_pids()):
                time.sleep(0.2)
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)
