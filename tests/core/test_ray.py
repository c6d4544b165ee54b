"""``--executor ray`` against a real Ray cluster started here (127.0.0.1),
not a mock: outputs bit-identical to a serial build, through a shared cache
folder or through the remote cache; a killed Ray worker; a bad address."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from raycluster import RayCluster
from toyenv import HERE, TOY_RECIPE, Workspace

pytest.importorskip("ray")  # the `ray` extra; installed in the dev environment

PLUGINS = "toy=toy_plugin,toyp=toy_parallel"
#: Ray >= 2.5x turns on token auth when ~/.ray/auth_token exists (another Ray
#: user of this account may have made one): the test cluster and its drivers
#: say explicitly that they use none, so they agree whatever the home holds
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    worker_cache = tmp_path_factory.mktemp("ray-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYBUILD_", "RAY_"))}
    env.update({"PYTHONPATH": str(HERE), "TINYBUILD_WORKER_CACHE": str(worker_cache), **NO_AUTH})
    c = RayCluster(env, num_cpus=2)
    c.worker_cache = worker_cache
    yield c
    c.stop()


def lock_outputs(lock: Path) -> dict[str, dict]:
    return {name: step["output"] for name, step in json.loads(lock.read_text())["steps"].items()}


def toy_workspace(root: Path, capsys, recipe: str = TOY_RECIPE) -> Workspace:
    root.mkdir()
    w = Workspace(root, capsys)
    (root / "numbers.txt").write_text("1 2 3\n")
    w.write(recipe)
    return w


@pytest.fixture
def ray_env(toy_env, monkeypatch):
    monkeypatch.setenv("TINYBUILD_PLUGINS", PLUGINS)
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def test_toy_recipe_on_ray_matches_a_serial_build(cluster, tmp_path, capsys, ray_env):
    serial = toy_workspace(tmp_path / "serial", capsys)
    assert serial.build().code == 0
    on_ray = toy_workspace(tmp_path / "ray", capsys)
    run = on_ray.build("--executor", "ray", "--ray-address", cluster.address)
    assert run.code == 0, run.err
    assert "6 built" in run.err
    assert lock_outputs(on_ray.recipe.with_name("recipe.lock.json")) == lock_outputs(serial.recipe.with_name("recipe.lock.json"))
    assert not any((on_ray.cache / "tmp").iterdir())
    again = on_ray.build("--executor", "ray", "--ray-address", cluster.address)
    assert again.code == 0 and "0 built, 6 cached" in again.err


def test_without_an_address_a_ray_instance_is_started_for_the_build(tmp_path, capsys, ray_env, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))  # for its workers
    serial = toy_workspace(tmp_path / "serial", capsys)
    assert serial.build().code == 0
    w = toy_workspace(tmp_path / "ray", capsys)
    run = w.build("--executor", "ray", "-j2")
    assert run.code == 0, run.err
    assert lock_outputs(w.recipe.with_name("recipe.lock.json")) == lock_outputs(serial.recipe.with_name("recipe.lock.json"))
    import ray

    assert not ray.is_initialized()  # shut down after the build


def test_remote_cache_is_the_data_plane(cluster, tmp_path, capsys, ray_env):
    """Workers use their own cache folder (TINYBUILD_WORKER_CACHE): every
    input and output travels through the remote cache, by digest."""
    serial = toy_workspace(tmp_path / "serial", capsys)
    assert serial.build().code == 0
    w = toy_workspace(tmp_path / "ray", capsys)
    remote = tmp_path / "remote"
    run = w.build("--executor", "ray", "--ray-address", cluster.address, "--remote-cache", f"file://{remote}")
    assert run.code == 0, run.err
    assert lock_outputs(w.recipe.with_name("recipe.lock.json")) == lock_outputs(serial.recipe.with_name("recipe.lock.json"))
    worker_objects = {p.name for p in (cluster.worker_cache / "cache" / "objects").rglob("*") if p.is_file()}
    outputs = {d[2:] for out in lock_outputs(w.recipe.with_name("recipe.lock.json")).values() for d in out["files"].values()}
    assert outputs <= worker_objects  # made on the worker side, in its own cache
    assert w.run("verify", "--cache-dir", str(w.cache)).code == 0


def test_a_killed_ray_worker_is_retried_once(cluster, tmp_path, capsys, ray_env):
    marker = tmp_path / "hanging.pid"
    w = toy_workspace(tmp_path / "w", capsys, TOY_RECIPE + f"""
[steps.victim]
use = "toy-crash"
input = "train"
how = "hang-once"
marker = "{marker}"
""")

    def killer():
        deadline = time.monotonic() + 120
        while not marker.exists() or not marker.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(int(marker.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    run = w.build("--executor", "ray", "--ray-address", cluster.address)
    thread.join()
    assert marker.exists()
    assert run.code == 0, run.err
    stored = {p.read_bytes() for p in (w.cache / "objects").rglob("*") if p.is_file()}
    assert b"whole" in stored and b"partial" not in stored
    assert not any((w.cache / "tmp").iterdir())


def test_unreachable_ray_address_is_exit_2_quickly(tmp_path, capsys, ray_env):
    from raycluster import free_port

    w = toy_workspace(tmp_path / "w", capsys)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    run = w.build("--executor", "ray", "--ray-address", address)
    assert run.code == 2
    assert time.monotonic() - started < 10
    assert f"--ray-address {address}: no Ray cluster answers there" in run.err
    assert "Traceback" not in run.err
    os.environ["RAY_ADDRESS"] = address
    try:
        run = w.build("--executor", "ray")
    finally:
        del os.environ["RAY_ADDRESS"]
    assert run.code == 2 and address in run.err


REAL_RECIPE = f"""\
[recipe]
name = "tiny-branches"
seed = 0

[dataset]
use = "idx"
images = "{REPO}/data/mnist/t10k-images-idx3-ubyte.gz"
labels = "{REPO}/data/mnist/t10k-labels-idx1-ubyte.gz"
limit = 300
split = {{ train = 0.7, val = 0.15, test = 0.15 }}

[model]
use = "keras"
architecture = "basic-cnn"

[steps.train]
use = "train"
epochs = 1
batch_size = 32

[steps.pruned]
use = "prune"
input = "train"
final_sparsity = 0.5
epochs = 1
batch_size = 32

[steps.fp32]
use = "tflite"
input = "train"
quantize = "float32"

[steps.int8]
use = "tflite"
input = "pruned"
quantize = "int8"

[steps.eval_fp32]
use = "evaluate"
input = "fp32"

[steps.eval]
use = "evaluate"
input = "int8"
"""


def test_real_tensorflow_recipe_same_bytes_serial_jobs_and_ray(cluster, tmp_path, capsys, monkeypatch):
    """The one real-TensorFlow check: every digest of a small branching recipe
    is the same built serially, with -j2 (one thread per step) and on Ray."""
    for var in ("TINYBUILD_PLUGINS", "TINYBUILD_DISABLE_PLUGINS", "TINYBUILD_CACHE_DIR", "TINYBUILD_OUT", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TINYBUILD_NO_FASTPATH", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    outputs = {}
    for name, extra in (("serial", ()), ("j2", ("-j2",)), ("ray", ("--executor", "ray", "--ray-address", cluster.address))):
        root = tmp_path / name
        root.mkdir()
        w = Workspace(root, capsys)
        w.write(REAL_RECIPE)
        run = w.build(*extra)
        assert run.code == 0, run.err
        outputs[name] = lock_outputs(w.recipe.with_name("recipe.lock.json"))
    assert len(outputs["serial"]) == 8
    assert outputs["j2"] == outputs["serial"]
    assert outputs["ray"] == outputs["serial"]


def test_interrupting_a_ray_build_cancels_its_tasks(cluster, tmp_path, capsys, ray_env):
    import subprocess
    import sys

    from toyenv import BUILTIN_PLUGINS

    marker = tmp_path / "hanging.pid"
    w = toy_workspace(tmp_path / "w", capsys, TOY_RECIPE + f"""
[steps.victim]
use = "toy-crash"
input = "train"
how = "hang-once"
marker = "{marker}"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYBUILD_", "RAY_"))}
    env.update({"TINYBUILD_PLUGINS": PLUGINS, "PYTHONPATH": str(HERE), "TINYBUILD_NO_FASTPATH": "1",
                "TINYBUILD_DISABLE_PLUGINS": ",".join(BUILTIN_PLUGINS), **NO_AUTH})
    proc = subprocess.Popen([sys.executable, "-m", "tinybuild", "build", str(w.recipe), "--plain", "--executor", "ray",
                             "--ray-address", cluster.address, "--cache-dir", str(w.cache)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    # interrupt once the victim hangs and every other step is done, so that only a running task is cancelled
    while not (marker.exists() and marker.read_text() and any(b"report  built" in line for line in lines)):
        assert proc.poll() is None, b"".join(lines).decode()
        assert time.monotonic() < deadline, "the steps never got there:\n" + b"".join(lines).decode()
        time.sleep(0.05)
    worker = int(marker.read_text())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == 130, b"".join(lines).decode()
    gone = time.monotonic() + 15
    while time.monotonic() < gone:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the Ray worker running the step was not stopped")
    assert not any((w.cache / "tmp").iterdir())
    stored = {p.read_bytes() for p in (w.cache / "objects").rglob("*") if p.is_file()}
    assert b"partial" not in stored
    assert w.run("verify", "--cache-dir", str(w.cache)).code == 0
