"""A remote cache shared between machines: two caches and a folder URL, or a real
S3 API (moto) on loopback; tampering with the remote, with and without a key."""

from __future__ import annotations

import hashlib
import io
import json as _json
import time
from pathlib import Path

import pytest

from toyenv import TOY_RECIPE, built_steps


def test_second_machine_pulls_everything(ws, tmp_path):
    remote = tmp_path / "remote"
    url = remote.as_uri()
    first = ws.build("--remote-cache", url)
    assert first.code == 0 and len(built_steps(first)) == 6
    assert len(list((remote / "actions").rglob("*"))) >= 6
    # another machine: fresh local cache, fresh build folder
    other = ws.build("--remote-cache", url, "--cache-dir", str(tmp_path / "cache2"), "--out", str(tmp_path / "out2"))
    assert other.code == 0
    assert built_steps(other) == []
    assert (tmp_path / "out2" / "toy" / "report" / "report.md").exists()


def test_corrupt_remote_object_is_rejected(ws, tmp_path):
    remote = tmp_path / "remote"
    ws.build("--remote-cache", remote.as_uri())
    report_object = next(p for p in (remote / "objects").rglob("*") if p.is_file() and p.read_bytes().startswith(b"fp32:"))
    report_object.write_bytes(b"fp32: forged")
    run = ws.build("--remote-cache", remote.as_uri(), "--cache-dir", str(tmp_path / "cache2"), "--out", str(tmp_path / "out2"))
    assert run.code == 0
    assert "ignoring action" in run.err and "object for report.md" in run.err
    assert built_steps(run) == ["report"]
    assert (tmp_path / "out2" / "toy" / "report" / "report.md").read_text().startswith("fp32: tflite")


def test_no_push_leaves_the_remote_untouched(ws, tmp_path):
    remote = tmp_path / "remote"
    run = ws.build("--remote-cache", remote.as_uri(), "--no-push")
    assert run.code == 0
    assert not remote.exists() or not any(Path(remote).rglob("*"))


def test_plan_sees_remote_entries(ws, tmp_path):
    remote = tmp_path / "remote"
    ws.build("--remote-cache", remote.as_uri())
    run = ws.run("plan", str(ws.recipe), "--json", "--remote-cache", remote.as_uri(), "--cache-dir", str(tmp_path / "c2"))
    import json

    plan = json.loads(run.out)
    assert {p["status"] for p in plan} == {"cached"}
    assert plan[0]["reasons"] == ["in remote cache"]


def test_unreachable_remote_only_warns(ws, tmp_path):
    bad = tmp_path / "file-not-dir"
    bad.write_text("x")
    run = ws.build("--remote-cache", bad.as_uri())
    assert run.code == 0
    assert "warning: remote cache" in run.err


def _tamper(remote, mutate):
    import json

    for action in (remote / "actions").rglob("*"):
        if action.is_file():
            entry = json.loads(action.read_text())
            if entry["kind"] == "dataset":
                mutate(entry)
                action.write_text(json.dumps(entry))
                return
    raise AssertionError("no dataset action found")


def test_tampered_remote_entries_never_write_outside_the_build_folder(ws, tmp_path):
    remote = tmp_path / "remote"
    ws.build("--remote-cache", remote.as_uri())

    def escape(entry):
        (digest,) = entry["files"].values()
        (size,) = entry["sizes"].values()
        entry["files"] = {"../../../../PWNED.txt": digest}
        entry["sizes"] = {"../../../../PWNED.txt": size}

    _tamper(remote, escape)
    run = ws.build("--remote-cache", remote.as_uri(), "--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "o2"))
    assert run.code == 0
    assert "inconsistent" in run.err
    assert not list(tmp_path.rglob("PWNED.txt"))
    assert "dataset" in built_steps(run)
    assert (tmp_path / "o2" / "toy" / "dataset" / "data.json").exists()


def test_remote_entry_with_a_forged_digest_is_ignored(ws, tmp_path):
    remote = tmp_path / "remote"
    ws.build("--remote-cache", remote.as_uri())
    _tamper(remote, lambda entry: entry.update(digest="0" * 64))
    run = ws.build("--remote-cache", remote.as_uri(), "--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "o2"))
    assert run.code == 0 and "dataset" in built_steps(run)


# -- integrity and trust ---------------------------------------------------------


def _second(tmp_path, remote, name="2"):
    return ("--remote-cache", remote.as_uri(), "--cache-dir", str(tmp_path / f"cache{name}"), "--out", str(tmp_path / f"out{name}"))


def _outputs(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".logs" not in p.parts}


def _lock(ws):
    return _json.loads((ws.root / "recipe.lock.json").read_text())["steps"]


def _remote_action(ws, remote, step):
    key = _lock(ws)[step]["key"]
    return remote / "actions" / key[:2] / key[2:]


def _remote_object(ws, remote, step, rel):
    digest = _lock(ws)[step]["output"]["files"][rel]
    return remote / "objects" / digest[:2] / digest[2:], digest


def _edit_entry(path, mutate):
    entry = _json.loads(path.read_text())
    mutate(entry)
    path.write_text(_json.dumps(entry))


def _repoint(entry, files):
    """What an attacker with write access but no key can do: any files, digest recomputed."""
    from tinybuild.hashing import artifact_digest

    entry["files"] = {rel: d for rel, (d, _) in files.items()}
    entry["sizes"] = {rel: n for rel, (_, n) in files.items()}
    entry["digest"] = artifact_digest(entry["kind"], entry["files"])


@pytest.fixture
def first(ws, tmp_path):
    """Runner 1 built and pushed everything; returns (remote, its outputs)."""
    remote = tmp_path / "remote"
    run = ws.build("--remote-cache", remote.as_uri())
    assert run.code == 0, run.err
    return remote, _outputs(ws.root / "build" / "toy")


def test_pulled_steps_say_pulled_and_the_summary_counts_them(ws, tmp_path):
    remote = tmp_path / "remote"
    run = ws.build("--remote-cache", remote.as_uri())
    assert "6 built, 0 cached, 0 pulled, 6 pushed" in run.err
    other = ws.build(*_second(tmp_path, remote), "-v")
    assert other.code == 0
    assert "0 built, 0 cached, 6 pulled, 0 pushed" in other.err
    pulled = [line for line in other.err.splitlines() if " pulled " in line and line.startswith("[")]
    assert len(pulled) == 6 and all(" B in " in line for line in pulled)  # -v: bytes and time per step
    assert "B down" in other.err and "entries unsigned" in other.err
    again = ws.build(*_second(tmp_path, remote))  # now local hits: cached, not pulled
    assert "0 built, 6 cached, 0 pulled, 0 pushed" in again.err or "6 cached" in again.err


def _flip(path):
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-2])


def _longer(path):
    path.write_bytes(path.read_bytes() + b"trailing bytes")


def _directory(path):
    path.unlink()
    (path / "x").mkdir(parents=True)


def _huge(path):
    path.unlink()
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: costs no disk


def _symlink(path):
    """A link to another file (on a shared folder): read through, rejected by
    digest, and replaced by the push without writing through it."""
    other = path.parent.parent.parent / "planted.txt"
    other.write_bytes(b"planted by someone else\n")
    path.unlink()
    path.symlink_to(other)


REMOTE_TAMPERS = [_flip, _truncate, _longer, _directory, _huge, _symlink]


@pytest.mark.parametrize("tamper", REMOTE_TAMPERS, ids=[t.__name__.strip("_") for t in REMOTE_TAMPERS])
def test_damaged_remote_object_is_ignored_and_the_push_repairs_it(ws, tmp_path, first, tamper):
    remote, good = first
    obj, digest = _remote_object(ws, remote, "train", "model.txt")
    tamper(obj)
    started = time.perf_counter()
    run = ws.build(*_second(tmp_path, remote))
    assert time.perf_counter() - started < 10  # the 1 GiB object is not read
    assert run.code == 0, run.err
    assert "ignoring action" in run.err and "object for model.txt" in run.err
    assert built_steps(run) == ["train"]
    assert _outputs(tmp_path / "out2" / "toy") == good
    assert obj.is_file() and hashlib.sha256(obj.read_bytes()).hexdigest() == digest  # overwritten by the push
    third = ws.build(*_second(tmp_path, remote, "3"))
    assert third.code == 0 and built_steps(third) == [] and "warning" not in third.err
    planted = remote / "planted.txt"
    assert not planted.exists() or planted.read_bytes() == b"planted by someone else\n"


def test_push_overwrites_a_damaged_remote_object_it_did_not_pull(ws, tmp_path, first):
    remote, good = first
    obj, digest = _remote_object(ws, remote, "train", "model.txt")
    _flip(obj)  # same size: only its digest shows the damage
    run = ws.build("--remote-cache", remote.as_uri(), "--force", "train")
    assert run.code == 0 and "1 pushed" in run.err
    assert hashlib.sha256(obj.read_bytes()).hexdigest() == digest


def test_huge_remote_object_is_never_read_past_its_announced_size(ws, tmp_path, first):
    """Even where the store cannot tell an object's size up front, reading
    stops one byte past the size the entry announced."""
    from tinybuild.cache import Cache
    from tinybuild.remote import RemoteCache

    remote, _ = first
    obj, digest = _remote_object(ws, remote, "train", "model.txt")
    _huge(obj)
    rc = RemoteCache(remote.as_uri())
    real_open = rc.fs.open
    rc.fs.open = lambda path, mode="rb", **kw: io.BufferedReader(io.FileIO(path, "r"))  # no .size attribute
    key = _lock(ws)["train"]["key"]
    announced = _json.loads(_remote_action(ws, remote, "train").read_text())["sizes"]["model.txt"]
    assert rc.pull(key, Cache(tmp_path / "fresh"), "keras-model") is None
    entry_bytes = _remote_action(ws, remote, "train").stat().st_size
    assert rc.bytes_down <= entry_bytes + announced + 1
    rc.fs.open = real_open


def test_entries_without_sizes_are_a_miss(ws, tmp_path, first):
    remote, good = first
    _edit_entry(_remote_action(ws, remote, "train"), lambda e: e.pop("sizes"))
    run = ws.build(*_second(tmp_path, remote))
    assert run.code == 0 and built_steps(run) == ["train"] and "no file sizes" in run.err
    assert _outputs(tmp_path / "out2" / "toy") == good


def _attacks(ws, remote):
    """Entry rewrites an attacker without the key can make, digest recomputed each time."""
    lock = _lock(ws)
    model_obj = lock["model"]["output"]["files"]["model.txt"]
    size = (remote / "objects" / model_obj[:2] / model_obj[2:]).stat().st_size
    train = _remote_action(ws, remote, "train")
    return {
        # train now "produces" the untrained model: another valid object
        "repointed": (train, lambda e: _repoint(e, {"model.txt": (model_obj, size)})),
        "extra_file": (train, lambda e: _repoint(e, {**{r: (d, e["sizes"][r]) for r, d in e["files"].items()},
                                                     "backdoor.txt": (model_obj, size)})),
    }


@pytest.mark.parametrize("attack", ["repointed", "extra_file"])
def test_without_a_key_whoever_writes_the_remote_chooses_what_readers_get(ws, tmp_path, first, attack):
    """The documented trust model: objects are checked against the entry, but
    an unsigned entry itself is believed."""
    remote, good = first
    path, mutate = _attacks(ws, remote)[attack]
    _edit_entry(path, mutate)
    run = ws.build(*_second(tmp_path, remote))
    assert run.code == 0 and "train" not in built_steps(run)
    got = _outputs(tmp_path / "out2" / "toy")
    if attack == "repointed":
        assert got["train/model.txt"] == good["model/model.txt"] != good["train/model.txt"]
    else:
        assert got["train/backdoor.txt"] == good["model/model.txt"]


@pytest.mark.parametrize("attack", ["repointed", "extra_file"])
def test_with_a_key_rewritten_entries_are_rejected(ws, tmp_path, monkeypatch, attack):
    monkeypatch.setenv("TINYBUILD_REMOTE_KEY", "fleet secret")
    remote = tmp_path / "remote"
    assert ws.build("--remote-cache", remote.as_uri()).code == 0
    good = _outputs(ws.root / "build" / "toy")
    path, mutate = _attacks(ws, remote)[attack]
    _edit_entry(path, mutate)
    run = ws.build(*_second(tmp_path, remote))
    assert run.code == 0
    assert "bad signature" in run.err and built_steps(run) == ["train"]
    assert _outputs(tmp_path / "out2" / "toy") == good


def test_with_a_key_a_signed_entry_cannot_be_replayed_under_another_key(ws, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYBUILD_REMOTE_KEY", "fleet secret")
    remote = tmp_path / "remote"
    assert ws.build("--remote-cache", remote.as_uri()).code == 0
    good = _outputs(ws.root / "build" / "toy")
    # fp32's validly signed entry (same kind) copied over int8's
    _remote_action(ws, remote, "int8").write_bytes(_remote_action(ws, remote, "fp32").read_bytes())
    run = ws.build(*_second(tmp_path, remote))
    assert "bad signature" in run.err and built_steps(run) == ["int8"]
    assert _outputs(tmp_path / "out2" / "toy") == good


def test_unsigned_or_foreign_entries_are_ignored_with_a_key_then_replaced(ws, tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    assert ws.build("--remote-cache", remote.as_uri()).code == 0  # no key: unsigned entries
    monkeypatch.setenv("TINYBUILD_REMOTE_KEY", "fleet secret")
    run = ws.build(*_second(tmp_path, remote))
    assert run.code == 0 and len(built_steps(run)) == 6
    assert run.err.count("unsigned, and TINYBUILD_REMOTE_KEY is set") == 6
    third = ws.build(*_second(tmp_path, remote, "3"))  # runner 2 pushed signed entries
    assert third.code == 0 and built_steps(third) == [] and "warning" not in third.err
    monkeypatch.setenv("TINYBUILD_REMOTE_KEY", "another fleet")
    foreign = ws.build(*_second(tmp_path, remote, "4"))
    assert foreign.code == 0 and foreign.err.count("bad signature") == 6


GATED = TOY_RECIPE.replace('inputs = ["fp32", "int8"]', 'inputs = ["fp32", "int8"]\nmax_size = 10')


@pytest.mark.parametrize("key", [None, "fleet secret"])
def test_forged_metrics_pass_a_gate_only_without_a_key(ws, tmp_path, monkeypatch, key):
    if key:
        monkeypatch.setenv("TINYBUILD_REMOTE_KEY", key)
    ws.write(GATED)
    remote = tmp_path / "remote"
    honest = ws.build("--remote-cache", remote.as_uri())
    assert honest.code == 3  # fp32 and int8 are larger than 10 B
    for step in ("fp32", "int8"):
        _edit_entry(_remote_action(ws, remote, step), lambda e: e["metrics"].update(size=0))
    run = ws.build(*_second(tmp_path, remote))
    if key:
        assert run.code == 3 and "bad signature" in run.err
        assert sorted(built_steps(run)) == ["fp32", "int8"]
    else:  # the README's warning, demonstrated: forged metrics are believed
        assert run.code == 0


# -- a real S3 API on loopback ---------------------------------------------------


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses instances across tests: never another test's endpoint
    yield monkeypatch
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def moto_s3(s3_env):
    """A real S3 API (moto's server) on 127.0.0.1, with a bucket; its endpoint
    comes from AWS_ENDPOINT_URL, as a CI job would set it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3_env.setenv("AWS_ENDPOINT_URL", endpoint)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="ci-cache")
    yield endpoint
    server.stop()


def test_two_runners_share_an_s3_cache(ws, tmp_path, moto_s3, monkeypatch):
    monkeypatch.setenv("TINYBUILD_REMOTE_KEY", "fleet secret")
    url = "s3://ci-cache/tinybuild"
    one = ws.build("--remote-cache", url, "--cache-dir", str(tmp_path / "runner1"), "--out", str(tmp_path / "out1"))
    assert one.code == 0, one.err
    assert "6 built, 0 cached, 0 pulled, 6 pushed" in one.err and "warning" not in one.err
    two = ws.build("--remote-cache", url, "--cache-dir", str(tmp_path / "runner2"), "--out", str(tmp_path / "out2"), "-v")
    assert two.code == 0, two.err
    assert built_steps(two) == [] and "6 pulled" in two.err and "warning" not in two.err
    assert _outputs(tmp_path / "out1" / "toy") == _outputs(tmp_path / "out2" / "toy")
    import boto3

    listed = boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket="ci-cache", Prefix="tinybuild/actions/")
    assert listed["KeyCount"] == 6
    assert all(".tmp" not in o["Key"] for o in listed["Contents"])  # staging names were moved away


def test_unreachable_endpoint_costs_one_warning_and_little_time(ws, tmp_path, s3_env):
    s3_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    started = time.perf_counter()
    run = ws.build("--remote-cache", "s3://ci-cache/tinybuild")
    elapsed = time.perf_counter() - started
    assert run.code == 0 and len(built_steps(run)) == 6
    warnings = [line for line in run.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "not using the remote for the rest of this build" in warnings[0], run.err
    assert elapsed < 10, elapsed  # one failed connection (with one retry), not one per step


def test_a_job_that_cannot_write_warns_once_and_still_pulls(ws, tmp_path, first, monkeypatch):
    from tinybuild.remote import RemoteCache

    remote, good = first

    def denied(self, target, fill):
        raise PermissionError("Access Denied")

    monkeypatch.setattr(RemoteCache, "_upload", denied)
    ws.edit("epochs = 3", "epochs = 4")  # train and its dependents rerun and try to push
    run = ws.build(*_second(tmp_path, remote))
    assert run.code == 0
    warnings = [line for line in run.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no permission to write" in warnings[0], run.err
    assert "2 pulled, 0 pushed" in run.err  # dataset and model still came from the remote


def test_s3_retries_are_bounded_unless_the_user_chose(monkeypatch):
    from tinybuild.remote import storage_options

    assert storage_options("s3://b/p", {}) == {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
    assert storage_options("s3://b/p", {"AWS_MAX_ATTEMPTS": "10"}) == {}
    assert storage_options("s3://b/p", {"AWS_RETRY_MODE": "adaptive"}) == {}
    assert storage_options("file:///tmp/x", {}) == {} and storage_options("gs://b/p", {}) == {}


def _sparse_gib(path):
    path.unlink()
    with open(path, "wb") as f:
        f.truncate(1 << 30)


REMOTE_BAD_ENTRIES = {
    "not_json": lambda p: p.write_bytes(b"{nope"),
    "a_list": lambda p: p.write_bytes(b"[]"),
    "nan_metrics": lambda p: _edit_entry(p, lambda e: e.update(metrics={"size": float("nan")})),
    "deep_nesting": lambda p: p.write_bytes(b"[" * 100_000 + b"]" * 100_000),
    "extra_field": lambda p: _edit_entry(p, lambda e: e.update(command="rm -rf /")),
    "negative_size": lambda p: _edit_entry(p, lambda e: e.update(sizes={r: -1 for r in e["sizes"]})),
    "one_gib": _sparse_gib,
    "folder": lambda p: (p.unlink(), p.mkdir()),
}


@pytest.mark.parametrize("case", REMOTE_BAD_ENTRIES)
def test_malformed_remote_entry_is_ignored(ws, tmp_path, first, case):
    remote, good = first
    REMOTE_BAD_ENTRIES[case](_remote_action(ws, remote, "train"))
    started = time.perf_counter()
    run = ws.build(*_second(tmp_path, remote))
    assert time.perf_counter() - started < 10
    assert run.code == 0 and "Traceback" not in run.err
    assert built_steps(run) == ["train"] and "ignoring action" in run.err
    assert _outputs(tmp_path / "out2" / "toy") == good


@pytest.mark.parametrize("url", ["s3://", "s3:///ci", "s3:/mybucket/ci", "gs://", "file://relative/path", "file:/tmp/x",
                                 "nosuchproto://bucket", "file:///", "file:////", "/"])
def test_a_malformed_remote_url_is_a_usage_error_not_a_local_folder(ws, url):
    for command in ("build", "plan"):
        run = ws.run(command, str(ws.recipe), "--remote-cache", url)
        assert run.code == 2, (command, run.err)
        assert f"--remote-cache {url}" in run.err and "Traceback" not in run.err
    assert not any(p.name.endswith(":") for p in ws.root.rglob("*"))  # no s3: folder appeared
    assert not (ws.root / "build").exists()


def test_a_planted_link_in_a_folder_remote_never_carries_pushes_outside(ws, tmp_path):
    remote = tmp_path / "remote"
    victim = tmp_path / "victim"
    victim.mkdir()
    first = ws.build("--remote-cache", remote.as_uri(), "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "o1"))
    assert first.code == 0
    shards = sorted(p for p in (remote / "objects").iterdir() if p.is_dir())
    for shard in shards:  # every shard becomes a link to the victim folder
        for item in shard.iterdir():
            item.unlink()
        shard.rmdir()
        shard.symlink_to(victim, target_is_directory=True)
    again = ws.build("--remote-cache", remote.as_uri(), "--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "o2"))
    assert again.code == 0, again.err
    assert not any(victim.iterdir())
    assert all(shard.is_dir() and not shard.is_symlink() for shard in shards)
