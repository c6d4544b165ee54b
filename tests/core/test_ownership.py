"""``build`` and ``clean`` touch only build folders tinybuild created.

``<out>/<recipe>`` can name a user's folder (``--out ~`` with a recipe named
``Documents``); a recipe can also read data from inside its build folder or
cache. Neither command may delete the user's files in any of these cases.
"""

from __future__ import annotations

from pathlib import Path

from tinybuild.buildfolder import MARKER

THESIS = "my thesis\n"


def _documents(ws) -> Path:
    """A user's folder ``home/Documents`` with a step-named sub-folder, and a
    recipe named ``Documents`` so that ``--out home`` names it."""
    docs = ws.root / "home" / "Documents"
    (docs / "train").mkdir(parents=True)
    (docs / "thesis.txt").write_text(THESIS)
    (docs / "train" / "notes.txt").write_text("notes\n")
    ws.edit('name = "toy"', 'name = "Documents"')
    return docs


def test_clean_refuses_a_folder_tinybuild_did_not_create(ws):
    docs = _documents(ws)
    run = ws.run("clean", str(ws.recipe), "--out", str(ws.root / "home"))
    assert run.code == 2 and str(docs) in run.err and "did not create" in run.err and "Traceback" not in run.err
    assert (docs / "thesis.txt").read_text() == THESIS and (docs / "train" / "notes.txt").exists()


def test_build_refuses_to_write_into_a_folder_tinybuild_did_not_create(ws):
    docs = _documents(ws)
    run = ws.build("--out", str(ws.root / "home"))
    assert run.code == 2 and str(docs) in run.err and "did not create" in run.err and "rm -r" in run.err
    assert (docs / "train" / "notes.txt").read_text() == "notes\n" and not (docs / MARKER).exists()


def test_a_build_marks_its_folder_and_clean_removes_only_marked_folders(ws):
    assert ws.build().code == 0
    folder = ws.root / "build" / "toy"
    assert (folder / MARKER).is_file()
    assert ws.build().code == 0  # its own folder: accepted
    assert ws.run("clean", str(ws.recipe)).code == 0 and not folder.exists()
    folder.mkdir(parents=True)  # an empty folder not ours: clean leaves it...
    left = ws.run("clean", str(ws.recipe))
    assert left.code == 0 and "nothing to clean" in left.err and folder.is_dir()
    assert ws.build().code == 0 and (folder / MARKER).is_file()  # ...build claims it (nothing to lose)
    assert ws.run("clean", str(ws.recipe)).code == 0 and not folder.exists()
    assert ws.run("clean", str(ws.recipe)).code == 0  # a missing folder is fine


def test_an_old_build_folder_without_the_marker_is_adopted(ws):
    """A folder an older tinybuild built (no marker) holds only what the lock
    file records: build and clean adopt it, nothing is refused or lost."""
    assert ws.build().code == 0
    folder = ws.root / "build" / "toy"
    (folder / MARKER).unlink()  # as an older tinybuild left it
    assert ws.build().code == 0 and (folder / MARKER).is_file()  # adopted, and marked
    (folder / MARKER).unlink()
    assert ws.run("clean", str(ws.recipe)).code == 0 and not folder.exists()


def test_an_old_build_folder_with_a_foreign_file_is_refused(ws):
    assert ws.build().code == 0
    folder = ws.root / "build" / "toy"
    (folder / MARKER).unlink()
    (folder / "train" / "notes.txt").write_text("mine\n")  # not an output the lock file records
    run = ws.build()
    assert run.code == 2 and f"rm -r {folder}" in run.err and "did not create" in run.err
    assert ws.run("clean", str(ws.recipe)).code == 2 and (folder / "train" / "notes.txt").read_text() == "mine\n"


def test_a_data_file_inside_the_build_folder_is_refused(ws):
    """``--out`` at the data's grandparent: the build folder holds the data."""
    data = ws.root / "h" / "toy" / "numbers.txt"
    data.parent.mkdir(parents=True)
    data.write_text("1 2 3\n")
    ws.edit('file = "numbers.txt"', 'file = "h/toy/numbers.txt"')
    for command in ("clean", "build"):
        run = ws.run(command, str(ws.recipe), "--out", str(ws.root / "h"))
        assert run.code == 2 and "dataset.file" in run.err and str(data) in run.err and "build folder" in run.err, run.err
        assert data.read_text() == "1 2 3\n"


def test_a_data_file_inside_the_cache_is_refused(ws):
    data = ws.cache / "numbers.txt"
    data.parent.mkdir(parents=True)
    data.write_text("1 2 3\n")
    ws.edit('file = "numbers.txt"', f'file = "{data}"')
    run = ws.build()
    assert run.code == 2 and "dataset.file" in run.err and "the cache" in run.err, run.err
    assert data.exists()
