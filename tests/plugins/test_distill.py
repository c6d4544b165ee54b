"""The ``distill`` step: a student trained on a teacher's soft labels."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import artifact_from_dir, run_step
from tinybuild_plugins.keras.distill import DISTILL, DistillParams, make_distiller
from tinybuild_plugins.keras.fit import make_optimizer
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.dataset import load_dataset
from tinybuild_plugins.sdk.keras_model import load_keras_model, read_model_meta, save_keras_model

FAST = {"epochs": 2, "batch_size": 32}


@pytest.fixture(scope="module")
def small_student(mnist_dataset, tmp_path_factory):
    """The basic CNN with half the filters (6), untrained."""
    from tinybuild_plugins.keras.models import KERAS

    return run_step(KERAS, [], {"architecture": "basic-cnn", "options": {"filters": 6}}, dataset=mnist_dataset,
                    out_dir=tmp_path_factory.mktemp("student"), step="student")


def test_distill_trains_the_student_and_reports_both_models(trained_cnn, small_student, mnist_dataset, tmp_path):
    art = run_step(DISTILL, [trained_cnn, small_student], FAST, dataset=mnist_dataset, out_dir=tmp_path / "d")
    m = art.metrics
    student = load_keras_model(art.path)
    assert m["student_params"] == student.count_params() == load_keras_model(small_student.path).count_params()
    assert m["teacher_params"] == load_keras_model(trained_cnn.path).count_params() > m["student_params"]
    data = load_dataset(mnist_dataset.path)
    predicted = student.predict(data.x["val"], verbose=0).argmax(axis=1)
    assert m["student_val_accuracy"] == pytest.approx(float((predicted == data.y["val"]).mean()), abs=1e-6)
    assert 0 < m["teacher_val_accuracy"] <= 1
    assert {"loss", "soft_loss", "hard_loss", "accuracy", "val_loss", "val_accuracy"} <= set(m)
    assert m["epochs_run"] == 2
    assert read_model_meta(art.path)["history"] == ["distilled"]
    assert m["student_val_accuracy"] > 0.2  # two epochs on 210 digits: well above chance (0.1)


def test_the_teacher_never_changes_and_the_student_does(trained_cnn, small_student, mnist_dataset):
    teacher, student = load_keras_model(trained_cnn.path), load_keras_model(small_student.path)
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student_before = [w.copy() for w in student.get_weights()]
    params = DistillParams(**FAST)
    distiller = make_distiller(teacher, student, params, True, True)
    distiller.compile(optimizer=make_optimizer("adam", 1e-2), metrics=["accuracy"])
    data = load_dataset(mnist_dataset.path)
    distiller.fit(data.x["train"], data.y["train"], epochs=2, batch_size=32, verbose=0)
    for before, after in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(b, a) for b, a in zip(student_before, student.get_weights()))


def test_distillation_is_deterministic(trained_cnn, small_student, mnist_dataset, tmp_path):
    a = run_step(DISTILL, [trained_cnn, small_student], FAST, dataset=mnist_dataset, out_dir=tmp_path / "a")
    b = run_step(DISTILL, [trained_cnn, small_student], FAST, dataset=mnist_dataset, out_dir=tmp_path / "b")
    assert a.digest == b.digest


@pytest.mark.parametrize("params, message", [
    ({"temperature": 0}, "greater than 0"),
    ({"temperature": -1.5}, "greater than 0"),
    ({"alpha": 1.5}, "less than or equal to 1"),
])
def test_bad_params_are_validation_errors(params, message):
    with pytest.raises(ValidationError, match=message):
        DistillParams(**params)


def test_a_student_with_another_class_count_is_named(trained_cnn, mnist_dataset, tmp_path):
    keras = _tf.keras()
    other = keras.Sequential([keras.layers.InputLayer(input_shape=(28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    save_keras_model(other, tmp_path / "five")
    student = artifact_from_dir("five_classes", "keras-model", tmp_path / "five")
    with pytest.raises(StepError, match="student 'five_classes': the model has 5 outputs but the dataset has 10 classes"):
        run_step(DISTILL, [trained_cnn, student], FAST, dataset=mnist_dataset, out_dir=tmp_path / "d")


def test_a_teacher_with_another_input_shape_is_named(small_student, mnist_dataset, tmp_path):
    keras = _tf.keras()
    other = keras.Sequential([keras.layers.InputLayer(input_shape=(14, 14, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    save_keras_model(other, tmp_path / "small")
    teacher = artifact_from_dir("small_inputs", "keras-model", tmp_path / "small")
    with pytest.raises(StepError, match="teacher 'small_inputs': the model expects inputs of shape \\[14, 14, 1\\]"):
        run_step(DISTILL, [teacher, small_student], FAST, dataset=mnist_dataset, out_dir=tmp_path / "d")


RECIPE = """
[recipe]
name = "distill-errors"

[dataset]
use = "idx"
images = "{images}"
labels = "{labels}"

[model]
use = "keras"
architecture = "basic-cnn"

[steps.int8]
use = "tflite"
input = "model"
quantize = "float32"

[steps.distilled]
use = "distill"
{inputs}
"""


@pytest.mark.parametrize("inputs, message", [
    ('input = "model"', 'takes exactly 2 inputs .* got 1.*inputs = \\["<teacher>", "<student>"\\]'),
    ('inputs = ["model", "int8"]', "step 'int8' \\(the student\\) produces a tflite artifact"),
])
def test_plan_time_errors_name_teacher_and_student(tmp_path, capsys, inputs, message):
    from tinybuild.cli import main
    from tests.plugins.conftest import MNIST_IMAGES, MNIST_LABELS

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(images=MNIST_IMAGES, labels=MNIST_LABELS, inputs=inputs))
    assert main(["plan", str(recipe), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(message, err), err
