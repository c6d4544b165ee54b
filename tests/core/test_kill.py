"""A build killed mid-step (SIGKILL or SIGTERM) leaves the cache consistent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from toyenv import HERE


def verify_cache(cache) -> int:
    """Every object matches its name; every action's objects exist. Returns #actions."""
    for obj in (cache / "objects").rglob("*"):
        if obj.is_file():
            assert not obj.name.startswith("."), f"stray temporary object {obj}"
            assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name
    count = 0
    for action in (cache / "actions").rglob("*"):
        if action.is_file():
            entry = json.loads(action.read_text())
            for digest in entry["files"].values():
                assert (cache / "objects" / digest[:2] / digest[2:]).is_file()
            count += 1
    return count


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_build_leaves_a_consistent_cache(ws, tmp_path, sig):
    ws.edit("epochs = 3", "epochs = 3\nhang = true")
    marker = tmp_path / "running"
    env = {k: v for k, v in os.environ.items()}
    env.update({"TOY_HANG_MARKER": str(marker), "PYTHONPATH": str(HERE), "TINYBUILD_NO_FASTPATH": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "tinybuild", "build", str(ws.recipe), "--plain", "--cache-dir", str(ws.cache)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    if sig == signal.SIGTERM:
        assert b"interrupted" in err
        assert not any((ws.cache / "tmp").iterdir())  # scratch cleaned up
    assert verify_cache(ws.cache) == 2  # dataset and model; nothing of train
    stored = {p.read_bytes() for p in (ws.cache / "objects").rglob("*") if p.is_file()}
    assert b"partial" not in stored
    # the next build (without the hang) completes and reuses what was stored
    ws.edit("hang = true", "hang = false")
    run = ws.build("-v")  # -v lists each cached step
    assert run.code == 0
    assert "dataset cached" in " ".join(run.err.split()) and "model cached" in " ".join(run.err.split())
    assert verify_cache(ws.cache) == 6
