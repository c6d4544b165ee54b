"""Hostile model sources. A user's builder runs in a child process: an early
exit or a crash is a failed step naming the builder, and the artifact is
byte-identical to what building in tinybuild's own process gives. A model
file that is a zip bomb, a FIFO or a folder is refused before loading."""

from __future__ import annotations

import os
import textwrap

import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins.keras import model_file, models
from tinybuild_plugins.keras.models import KERAS

MODEL = """
    import os, sys
    import tf_keras as keras

    def build(input_shape, num_classes, width=8):
        return keras.Sequential([
            keras.layers.InputLayer(input_shape=input_shape),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(num_classes),
        ])

    def quits(input_shape, num_classes):
        os._exit(0)

    def exits(input_shape, num_classes):
        sys.exit(3)

    def crashes(input_shape, num_classes):
        import ctypes
        ctypes.string_at(0)

    def hangs(input_shape, num_classes):
        import time
        while True:
            time.sleep(1)
"""


@pytest.fixture
def builder_dir(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text(textwrap.dedent(MODEL))
    return tmp_path


@pytest.mark.parametrize("function,words", [
    ("quits", ["ended the process with exit code 0", "nothing was built"]),
    ("exits", ["called sys.exit(3)"]),
    ("crashes", ["killed by SIGSEGV"]),
], ids=["os._exit(0)", "sys.exit(3)", "segfault"])
def test_a_builder_that_ends_the_process_is_a_failed_step(mnist_dataset, builder_dir, function, words):
    with pytest.raises(StepError) as info:
        run_step(KERAS, [], {"builder": f"models/net.py:{function}"}, dataset=mnist_dataset,
                 out_dir=builder_dir / "out", recipe_dir=builder_dir, step="model")
    message = str(info.value)
    for word in ["model 'model'", f"net.py:{function}", *words]:
        assert word in message, message


def test_a_builder_that_never_returns_is_stopped_after_the_timeout(mnist_dataset, builder_dir, monkeypatch):
    import time

    monkeypatch.setenv("TINYBUILD_BUILDER_TIMEOUT", "3")
    started = time.monotonic()
    with pytest.raises(StepError) as info:
        run_step(KERAS, [], {"builder": "models/net.py:hangs"}, dataset=mnist_dataset,
                 out_dir=builder_dir / "out", recipe_dir=builder_dir, step="model")
    assert time.monotonic() - started < 60
    message = str(info.value)
    for word in ["net.py:hangs", "within 3 s", "TINYBUILD_BUILDER_TIMEOUT"]:
        assert word in message, message


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_builder_timeout_is_a_clear_error(mnist_dataset, builder_dir, monkeypatch, value):
    monkeypatch.setenv("TINYBUILD_BUILDER_TIMEOUT", value)
    with pytest.raises(StepError) as info:
        run_step(KERAS, [], {"builder": "models/net.py:build"}, dataset=mnist_dataset,
                 out_dir=builder_dir / "out", recipe_dir=builder_dir, step="model")
    assert "TINYBUILD_BUILDER_TIMEOUT" in str(info.value) and "positive number of seconds" in str(info.value)


def test_child_build_is_byte_identical_to_an_in_process_build(mnist_dataset, builder_dir):
    options = {"width": 6}
    child = run_step(KERAS, [], {"builder": "models/net.py:build", "options": options}, dataset=mnist_dataset,
                     out_dir=builder_dir / "child", recipe_dir=builder_dir, seed=7)
    # the same model built here, in this process, the way the step did before it used a child
    from tinybuild.testing import artifact_from_dir

    out = builder_dir / "here"
    out.mkdir()
    models.prepare_session(7)
    where = "model 'model'"
    model = models.from_builder(builder_dir / "models" / "net.py", "build", options, [28, 28, 1], 10, where)
    metrics = models.finish(model, out, where, [28, 28, 1], 10, {"builder": "net.py:build", "options": options})
    here = artifact_from_dir("model", child.kind, out, metrics)
    assert child.files == here.files and child.digest == here.digest
    assert "builder.py" not in child.files  # no custom or Lambda layer: the plain layout, as before
    assert dict(child.metrics) == metrics


def test_a_builder_path_that_is_a_fifo_is_refused_at_load(tmp_path):
    os.mkfifo(tmp_path / "net.py")
    with pytest.raises(ValidationError, match="builder file is a FIFO"):
        KERAS.params.model_validate({"builder": "net.py:build"}, context={"base_dir": tmp_path})


def test_a_builder_reference_with_a_trailing_newline_is_refused():
    with pytest.raises(ValidationError, match="must look like"):
        KERAS.params.model_validate({"builder": "net.py:build\n"})


def test_keras_file_that_is_a_zip_bomb_is_refused_before_loading(tmp_path, monkeypatch):
    import zipfile

    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", bytes(4 << 20))  # 4 MiB of zeros in a few KiB
    assert path.stat().st_size < 64 << 10
    monkeypatch.setattr(model_file, "MAX_MODEL_BYTES", 1 << 20)
    with pytest.raises(StepError, match=r"bomb\.keras unpacks to 4,194,304 bytes, over the limit"):
        models.from_file(path, "model 'model'")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_keras_file_that_is_not_a_regular_file(tmp_path, kind):
    path = tmp_path / "m.keras"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with pytest.raises(ValidationError, match="FIFO" if kind == "fifo" else "folder"):
        KERAS.params.model_validate({"file": "m.keras"}, context={"base_dir": tmp_path})
    with pytest.raises(StepError, match="m.keras"):
        models.from_file(path, "model 'model'")


def test_keras_file_with_bzip2_members_is_refused_before_loading(tmp_path):
    import zipfile

    path = tmp_path / "odd.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("config.json", b"{}")
    with pytest.raises(StepError, match="odd.keras uses zip compression method 12"):
        models.from_file(path, "model 'model'")


def test_modules_beside_the_builder_enter_its_key(tmp_path):
    """A builder that imports a helper from its own folder, a package below it, or a plain subfolder it
    puts on sys.path: editing any of them (or adding a module) changes the model's key, as editing the
    builder does. Virtual environments, caches and hidden folders are not searched."""
    from tinybuild.testing import params_problems, step_key

    folder = tmp_path / "nets"
    for sub in ("parts", "plain", ".git", "__pycache__", "venv"):
        (folder / sub).mkdir(parents=True)
    (folder / "net.py").write_text("from helper import HIDDEN\n\ndef build(input_shape, num_classes):\n    ...\n")
    (folder / "helper.py").write_text("HIDDEN = 8\n")
    (folder / "parts" / "__init__.py").write_text("")
    (folder / "parts" / "blocks.py").write_text("WIDTH = 4\n")
    (folder / "plain" / "h2.py").write_text("DEPTH = 2\n")  # no __init__.py: imported via sys.path
    (folder / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    for ignored in (folder / "venv" / "big.py", folder / ".git" / "hook.py", folder / "__pycache__" / "x.py"):
        ignored.write_text("X = 1\n")
    params = {"builder": "nets/net.py:build"}
    first = step_key(KERAS, params, recipe_dir=tmp_path)
    for ignored in (folder / "venv" / "big.py", folder / ".git" / "hook.py", folder / "__pycache__" / "x.py"):
        ignored.write_text("X = 2\n")
    assert step_key(KERAS, params, recipe_dir=tmp_path) == first
    keys = {first}
    for path, text in [(folder / "helper.py", "HIDDEN = 64\n"), (folder / "parts" / "blocks.py", "WIDTH = 5\n"),
                       (folder / "plain" / "h2.py", "DEPTH = 3\n"), (folder / "extra.py", "Y = 1\n")]:
        path.write_text(text)
        keys.add(step_key(KERAS, params, recipe_dir=tmp_path))
    assert len(keys) == 5
    folders = models.builder_input_folders(KERAS.params.model_validate(params, context={"base_dir": tmp_path}))
    assert folders == [folder, folder / "parts", folder / "plain"]
    assert params_problems(KERAS, params, recipe_dir=tmp_path, registry=object()) == []


def test_a_builder_in_a_folder_of_thousands_of_modules_is_refused_at_plan(tmp_path, monkeypatch):
    from tinybuild.testing import params_problems

    monkeypatch.setattr(models, "MAX_BUILDER_SOURCES", 3)
    for i in range(4):
        (tmp_path / f"m{i}.py").write_text("")
    (tmp_path / "net.py").write_text("def build(input_shape, num_classes): ...\n")
    problems = params_problems(KERAS, {"builder": "net.py:build"}, recipe_dir=tmp_path, registry=object())
    assert len(problems) == 1 and "more than 3 Python files" in problems[0].message
    assert problems[0].key == "steps.test.builder"
