"""A remote cache shared between machines (here: two caches and a folder URL)."""

from __future__ import annotations

from pathlib import Path

from toyenv import built_steps


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
