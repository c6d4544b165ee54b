"""The train step type: learning, determinism, progress, early stopping, augmentation, errors."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.dataset import Dataset, load_dataset
from tinybuild_plugins.keras.fit import Augment, affine_transforms, augment_batch, augmented_train_split, model_outputs_logits
from tinybuild_plugins.sdk.keras_model import load_keras_model, read_model_meta
from tinybuild_plugins.data.datasets import NPZ
from tinybuild_plugins.keras.models import KERAS
from tinybuild_plugins.keras.prune import PRUNE
from tinybuild_plugins.keras.train import TRAIN

FAST = {"epochs": 1, "batch_size": 32}
AUGMENT = {"shift": 0.1, "rotation": 10, "zoom": 0.1}


def train(model, dataset, tmp_path, name="train", params=None, progress=None, seed=0):
    return run_step(TRAIN, [model], {**FAST, **(params or {})}, dataset=dataset, out_dir=tmp_path / name,
                    progress=progress, seed=seed)


def accuracy(artifact, dataset, split="val") -> float:
    data = load_dataset(dataset.path)
    logits = load_keras_model(artifact.path).predict(data.x[split], verbose=0)
    return float((logits.argmax(axis=1) == data.y[split]).mean())


def test_training_learns_and_reports_metrics(trained_cnn, basic_cnn, mnist_dataset):
    metrics = trained_cnn.metrics
    assert metrics["epochs_run"] == 3
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(metrics)
    before, after = accuracy(basic_cnn, mnist_dataset), accuracy(trained_cnn, mnist_dataset)
    assert after > 0.5 > before + 0.2  # chance is 0.1 on 10 digits
    assert metrics["val_accuracy"] == pytest.approx(after, abs=1e-6)  # reported = measured
    meta = read_model_meta(trained_cnn.path)
    assert meta["optimization"] == "trained" and meta["history"] == ["trained"]


def test_same_recipe_gives_the_same_weights(basic_cnn, mnist_dataset, tmp_path):
    first = train(basic_cnn, mnist_dataset, tmp_path, "a")
    second = train(basic_cnn, mnist_dataset, tmp_path, "b")
    other_seed = train(basic_cnn, mnist_dataset, tmp_path, "c", seed=1)
    assert first.digest == second.digest
    assert first.digest != other_seed.digest  # the seed also drives shuffling


def test_progress_is_reported_per_epoch(basic_cnn, mnist_dataset, tmp_path):
    events = []
    train(basic_cnn, mnist_dataset, tmp_path, params={"epochs": 2}, progress=events)
    assert [(done, total) for done, total, _ in events] == [(0, 2), (1, 2), (2, 2)]
    assert events[-1][2].startswith("train epoch 2/2 loss ")
    assert "val_acc " in events[-1][2]


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_other_optimizers_train(basic_cnn, mnist_dataset, tmp_path, optimizer):
    art = train(basic_cnn, mnist_dataset, tmp_path, params={"optimizer": optimizer, "learning_rate": 0.05
                                                            if optimizer == "sgd" else 0.001})
    assert art.metrics["loss"] < 2.3  # below the loss of a uniform guess, ln(10)


def test_early_stopping_stops_and_restores_the_best_epoch(basic_cnn, mnist_dataset, tmp_path):
    # A learning rate this large makes val loss erratic: it stops improving quickly.
    art = train(basic_cnn, mnist_dataset, tmp_path, params={"epochs": 8, "patience": 1, "learning_rate": 0.5})
    metrics = art.metrics
    assert metrics["epochs_run"] < 8 and metrics["stopped_early"] is True
    assert metrics["best_epoch"] < metrics["epochs_run"]
    # the reported metrics describe the restored weights, not the last epoch's
    assert metrics["val_accuracy"] == pytest.approx(accuracy(art, mnist_dataset), abs=1e-6)


def test_early_stopping_on_val_metric_without_val_split_is_a_step_error(basic_cnn, tmp_path):
    x = np.random.default_rng(0).random((20, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 10)
    no_val = run_step(NPZ, params={"file": "d.npz", "split": {"train": 0.8, "val": 0.0, "test": 0.2},
                                   "add_channel_axis": True},
                      recipe_dir=tmp_path, out_dir=tmp_path / "ds")
    with pytest.raises(StepError, match="monitors val_loss but the dataset has no val split"):
        train(basic_cnn, no_val, tmp_path, params={"patience": 2})
    art = train(basic_cnn, no_val, tmp_path, name="ok", params={"patience": 2, "monitor": "loss"})
    assert "val_accuracy" not in art.metrics


def test_model_that_does_not_fit_the_dataset_is_a_step_error(tmp_path, basic_cnn):
    np.savez(tmp_path / "d.npz", x=np.zeros((30, 8, 8), np.uint8), y=np.arange(30) % 3)
    small = run_step(NPZ, params={"file": "d.npz", "add_channel_axis": True}, recipe_dir=tmp_path,
                     out_dir=tmp_path / "ds")
    with pytest.raises(StepError, match=r"expects inputs of shape \[28, 28, 1\] but the dataset provides \[8, 8, 1\]"):
        train(basic_cnn, small, tmp_path)


def test_softmax_models_are_trained_with_a_probability_loss(mnist_dataset, tmp_path):
    (tmp_path / "m.py").write_text(
        "import tf_keras as k\n"
        "def build(input_shape, num_classes):\n"
        "    return k.Sequential([k.layers.InputLayer(input_shape=input_shape), k.layers.Flatten(),\n"
        "                         k.layers.Dense(num_classes, activation='softmax')])\n"
    )
    model = run_step(KERAS, [], {"builder": "m.py:build"}, dataset=mnist_dataset, recipe_dir=tmp_path,
                     out_dir=tmp_path / "m")
    assert model_outputs_logits(model) is False
    art = train(model, mnist_dataset, tmp_path, params={"epochs": 3, "learning_rate": 0.01})
    assert art.metrics["loss"] < 1.0
    assert read_model_meta(art.path)["output"] == "probabilities"  # carried over for evaluators


@pytest.mark.parametrize(
    "params, message",
    [
        ({"epochs": 0}, "greater than or equal to 1"),
        ({"optimizer": "adagrad"}, "adam"),
        ({"learning_rate": 0}, "greater than 0"),
        ({"monitor": "val_f1"}, "val_loss"),
        ({"epoch": 3}, "epoch"),
        ({"augment": {"shift": 0.6}}, r"augment\.shift\n.*less than or equal to 0\.5"),
        ({"augment": {"shift": -0.1}}, r"augment\.shift\n.*greater than or equal to 0"),
        ({"augment": {"rotation": 181}}, r"augment\.rotation\n.*less than or equal to 180"),
        ({"augment": {"zoom": 1.0}}, r"augment\.zoom\n.*less than 1"),
        ({"augment": {"fill_mode": "mirror"}}, r"augment\.fill_mode\n.*'nearest'"),
        ({"augment": {"rotate": 10}}, r"augment\.rotate\n.*not permitted"),
        ({"augment": {}}, "augment changes nothing: set shift, rotation or zoom"),
        ({"augment": {"shift": 0.1, "fill_value": 1.0}}, 'fill_value only applies to fill_mode = "constant"'),
    ],
)
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        TRAIN.params.model_validate(params)


def test_step_type_declaration():
    assert TRAIN.default_input == "model" and TRAIN.uses_dataset
    assert TRAIN.consumes == ("keras-model",) and TRAIN.produces == "keras-model"
    assert "tinybuild_plugins.keras.fit" in TRAIN.fingerprint_modules


# -- augmentation -----------------------------------------------------------------------


def test_augmentation_is_deterministic_and_changes_training(basic_cnn, mnist_dataset, tmp_path):
    plain = train(basic_cnn, mnist_dataset, tmp_path, "plain")
    first = train(basic_cnn, mnist_dataset, tmp_path, "a", params={"augment": AUGMENT})
    second = train(basic_cnn, mnist_dataset, tmp_path, "b", params={"augment": AUGMENT})
    other = train(basic_cnn, mnist_dataset, tmp_path, "c", params={"augment": {**AUGMENT, "rotation": 20}})
    assert first.digest == second.digest  # op determinism holds through the augmented pipeline
    assert len({plain.digest, first.digest, other.digest}) == 3
    assert TRAIN.params.model_validate({}).augment is None  # off unless asked for


def test_validation_sees_the_images_as_they_are(basic_cnn, mnist_dataset, tmp_path):
    # Augmentation this strong (half-image shifts, any rotation) would change the
    # val loss far beyond the tolerance below if it reached the val split.
    art = train(basic_cnn, mnist_dataset, tmp_path, params={"augment": {"shift": 0.5, "rotation": 180}})
    data = load_dataset(mnist_dataset.path)
    model = load_keras_model(art.path)
    model.compile(loss=_tf.keras().losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    loss, acc = model.evaluate(data.x["val"], data.y["val"], verbose=0)
    assert art.metrics["val_loss"] == pytest.approx(loss, abs=1e-5)
    assert art.metrics["val_accuracy"] == pytest.approx(acc, abs=1e-6)


def _indexed_train_split(dataset) -> Dataset:
    """The tiny dataset with each train label replaced by the sample's index,
    so an augmented batch says which original image each sample came from."""
    data = load_dataset(dataset.path)
    y = dict(data.y, train=np.arange(len(data.y["train"])))
    return Dataset(x=data.x, y=y, meta=data.meta)


def _centre_of_mass(images: np.ndarray) -> np.ndarray:
    """(x, y) centre of mass per image of a [n, h, w, 1] batch."""
    rows, cols = np.mgrid[: images.shape[1], : images.shape[2]]
    mass = images[..., 0].sum(axis=(1, 2))
    return np.stack([(images[..., 0] * cols).sum(axis=(1, 2)) / mass,
                     (images[..., 0] * rows).sum(axis=(1, 2)) / mass], axis=1)


def _epochs_of_batches(data: Dataset, augment: Augment, seed: int, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    batch_size = 32
    batches_per_epoch = -(-len(data.y["train"]) // batch_size)
    _tf.seed_everything(seed)
    pipeline = augmented_train_split(data, augment, batch_size, seed, "test")
    batches = [(x.numpy(), y.numpy()) for x, y in pipeline.take(epochs * batches_per_epoch)]
    return [(np.concatenate([x for x, _ in batches[e * batches_per_epoch:(e + 1) * batches_per_epoch]]),
             np.concatenate([y for _, y in batches[e * batches_per_epoch:(e + 1) * batches_per_epoch]]))
            for e in range(epochs)]


def test_augmented_train_split_shifts_each_image_within_range_and_keeps_its_label(mnist_dataset):
    data = _indexed_train_split(mnist_dataset)
    shift = 0.1
    augment = Augment(shift=shift)
    (x1, i1), (x2, i2) = _epochs_of_batches(data, augment, seed=0, epochs=2)
    n = len(data.y["train"])
    # every epoch is one full reshuffled pass over the train split
    assert sorted(i1) == sorted(i2) == list(range(n)) and not np.array_equal(i1, i2)
    # each sample is its own original image, moved: MNIST digits sit inside their
    # frame, so a shift keeps (nearly) all their ink, and digits differ in ink
    original = data.x["train"]
    assert np.allclose(x1.sum(axis=(1, 2, 3)), original[i1].sum(axis=(1, 2, 3)), rtol=0.05)
    # and the move is at most shift x size (plus a little for interpolation)
    moved = _centre_of_mass(x1) - _centre_of_mass(original[i1])
    assert np.abs(moved).max() <= shift * 28 + 0.5
    assert np.median(np.abs(moved)) > 0.5  # most images really move
    # a new epoch draws new shifts for the same image
    order = np.argsort(i2)
    moved_again = _centre_of_mass(x2[order]) - _centre_of_mass(original)
    assert not np.allclose(moved[np.argsort(i1)], moved_again, atol=0.05)
    # and the whole sequence is a function of the seed
    (y1, j1), _ = _epochs_of_batches(data, augment, seed=0, epochs=2)
    (z1, k1), _ = _epochs_of_batches(data, augment, seed=1, epochs=2)
    assert np.array_equal(x1, y1) and np.array_equal(i1, j1)
    assert not np.array_equal(x1, z1)


def test_transforms_move_the_content_as_documented():
    tf = _tf.tensorflow()
    image = np.zeros((1, 9, 9, 1), np.float32)
    image[0, 2, 4:7, 0] = [1.0, 2.0, 3.0]  # an asymmetric stroke off-centre

    def apply(augment: dict, draws: list[float]) -> np.ndarray:
        # draws in [-1, 1]: rotation, zoom, shift x, shift y (as the pipeline draws them)
        transforms = affine_transforms(Augment(**augment), tf.constant([draws], tf.float32), 9, 9)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=image, transforms=transforms, output_shape=[9, 9], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT").numpy()

    # a full draw of shift 2/9 moves the content 2 pixels right (x) or down (y)
    right = apply({"shift": 2 / 9}, [0, 0, 1, 0])
    assert np.allclose(right[0, 2, 6:9, 0], [1, 2, 3], atol=1e-5) and np.isclose(right.sum(), 6, atol=1e-5)
    down = apply({"shift": 2 / 9}, [0, 0, 0, 1])
    assert np.allclose(down[0, 4, 4:7, 0], [1, 2, 3], atol=1e-5)
    # a full draw of rotation 90 turns it a quarter about the centre (clockwise as displayed)
    assert np.allclose(apply({"rotation": 90}, [1, 0, 0, 0])[0, ..., 0], np.rot90(image[0, ..., 0], k=-1),
                       atol=1e-5)
    # a zoom draw of +1 with zoom 0.5 scales the content 1.5x about the centre
    zoomed = apply({"zoom": 0.5}, [0, 1, 0, 0])
    assert np.allclose(_centre_of_mass(zoomed) - 4, 1.5 * (_centre_of_mass(image) - 4), atol=0.05)
    # zero draws leave the image as it is
    assert np.array_equal(apply({"shift": 0.3, "rotation": 30, "zoom": 0.3}, [0, 0, 0, 0]), image)


def test_augment_batch_runs_under_op_determinism():
    tf = _tf.tensorflow()
    _tf.seed_everything(0)  # op determinism on: the ops used must not refuse to run
    images = tf.constant(np.random.default_rng(0).random((4, 12, 12, 3), dtype=np.float32))
    seed = tf.constant([7, 3], tf.int64)
    out = augment_batch(images, Augment(shift=0.2, rotation=30, zoom=0.2), seed)
    assert out.shape == images.shape and out.dtype == tf.float32
    assert np.array_equal(out.numpy(), augment_batch(images, Augment(shift=0.2, rotation=30, zoom=0.2), seed).numpy())


def test_augment_on_data_that_are_not_images_is_a_step_error(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 16), dtype=np.float32), y=np.arange(40) % 4)
    features = run_step(NPZ, params={"file": "d.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "ds")
    mlp = run_step(KERAS, [], {"architecture": "mlp"}, dataset=features, out_dir=tmp_path / "m")
    with pytest.raises(StepError, match=r"augment shifts, rotates and zooms images .* shape \[16\]"):
        train(mlp, features, tmp_path, params={"augment": {"shift": 0.1}})


def test_fine_tuning_steps_accept_augment(trained_cnn, mnist_dataset, tmp_path):
    # prune's schedule and UpdatePruningStep callback count optimizer steps: they
    # must line up with the augmented pipeline's epochs as with plain arrays
    params = {"final_sparsity": 0.5, "epochs": 2, "batch_size": 32, "augment": {"shift": 0.1}}
    art = run_step(PRUNE, [trained_cnn], params, dataset=mnist_dataset, out_dir=tmp_path / "p")
    assert art.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert art.metrics["epochs_run"] == 2 and "val_accuracy" in art.metrics
