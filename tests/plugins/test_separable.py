"""The ``separable`` step: SVD-initialized depthwise + pointwise rewrite of Conv2D, then fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins.keras.separable import SEPARABLE, factorize, rewrite
from tinybuild_plugins.report.macs import keras_macs
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.keras_model import load_keras_model, read_model_meta

FAST = {"epochs": 1, "batch_size": 32}


def conv_model(kernel: np.ndarray, padding: str = "valid", strides: int = 1):
    keras = _tf.keras()
    kh, kw, c_in, c_out = kernel.shape
    model = keras.Sequential([
        keras.layers.InputLayer(input_shape=(9, 9, c_in)),
        keras.layers.Conv2D(c_out, (kh, kw), strides=strides, padding=padding, activation="relu", name="conv"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(3, name="dense"),
    ])
    bias = np.linspace(-0.5, 0.5, c_out).astype(np.float32)
    model.get_layer("conv").set_weights([kernel.astype(np.float32), bias])
    return model


def rank_one_kernel(rng, kh=3, kw=3, c_in=2, c_out=5) -> np.ndarray:
    """Each input channel's (kh*kw) x c_out slice is an outer product: rank 1."""
    kernel = np.zeros((kh, kw, c_in, c_out))
    for c in range(c_in):
        kernel[:, :, c, :] = np.einsum("ij,o->ijo", rng.normal(size=(kh, kw)), rng.normal(size=c_out))
    return kernel


@pytest.mark.parametrize("padding, strides", [("valid", 1), ("same", 2)])
def test_a_rank_one_kernel_is_rewritten_exactly(padding, strides):
    rng = np.random.default_rng(0)
    model = conv_model(rank_one_kernel(rng), padding, strides)
    rewritten, errors = rewrite(model, None, 1, "test")
    assert [type(layer).__name__ for layer in rewritten.layers] == ["DepthwiseConv2D", "Conv2D", "Flatten", "Dense"]
    assert errors["conv"] < 1e-6
    x = rng.normal(size=(4, 9, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(rewritten.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


def test_functional_models_keep_their_wiring():
    """A residual-style graph: the rewritten conv feeds two layers; both follow it."""
    keras = _tf.keras()
    layers = keras.layers
    rng = np.random.default_rng(2)
    inputs = keras.Input((9, 9, 2))
    a = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    b = layers.Conv2D(4, 1, name="mix")(a)
    outputs = layers.Dense(3, name="dense")(layers.Flatten(name="flat")(layers.Add(name="add")([a, b])))
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([rank_one_kernel(rng, c_in=2, c_out=4).astype(np.float32),
                                         rng.normal(size=4).astype(np.float32)])
    rewritten, errors = rewrite(model, None, 1, "test")
    assert errors == {"conv": pytest.approx(0, abs=1e-6)}  # the 1x1 "mix" is not eligible
    names = {layer.name for layer in model.layers} - {"conv"} | {"conv_depthwise", "conv_pointwise"}
    assert {layer.name for layer in rewritten.layers} == names
    x = rng.normal(size=(4, 9, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(rewritten.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


def test_a_general_kernel_loses_exactly_the_discarded_singular_values():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 2, 4))
    for multiplier in (1, 2, 4):
        dw, pw, error = factorize(kernel, multiplier)
        product = np.einsum("ijck,cko->ijco", dw, pw[0, 0].reshape(2, multiplier, 4))
        lost = sum(np.sum(np.linalg.svd(kernel[:, :, c, :].reshape(9, 4), compute_uv=False)[multiplier:] ** 2)
                   for c in range(2))
        expected = np.sqrt(lost / np.sum(kernel ** 2))
        assert error == pytest.approx(expected, abs=1e-6)
        assert np.linalg.norm(product - kernel) / np.linalg.norm(kernel) == pytest.approx(expected, abs=1e-5)
    assert error < 1e-6  # multiplier 4 = the full rank of a 9 x 4 slice: exact


def test_the_step_rewrites_fine_tunes_and_reports(trained_cnn, mnist_dataset, tmp_path):
    art = run_step(SEPARABLE, [trained_cnn], FAST, dataset=mnist_dataset, out_dir=tmp_path / "sep")
    model = load_keras_model(art.path)
    assert [type(layer).__name__ for layer in model.layers] == [
        "DepthwiseConv2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    m = art.metrics
    assert m["rewritten_layers"] == ["conv2d"]
    assert m["macs_after"] == keras_macs(model)["total"] < m["macs_before"]
    assert m["macs_before"] == 26 * 26 * 9 * 12 + 13 * 13 * 12 * 10
    assert m["macs_after"] == 26 * 26 * 9 + 26 * 26 * 12 + 13 * 13 * 12 * 10
    assert m["params_after"] == model.count_params() < m["params_before"]
    for key in ("val_accuracy_original", "val_accuracy_rewritten", "val_accuracy_finetuned"):
        assert 0 <= m[key] <= 1
    assert 0 < m["factorization_error"]["conv2d"] < 1
    assert read_model_meta(art.path)["history"] == ["trained", "separable"]


def test_a_model_without_a_convertible_conv2d_is_a_failed_step(mnist_dataset, tmp_path):
    from tinybuild_plugins.keras.models import KERAS

    mlp = run_step(KERAS, [], {"architecture": "mlp"}, dataset=mnist_dataset, out_dir=tmp_path / "mlp")
    with pytest.raises(StepError, match="no Conv2D with a kernel larger than 1x1 to make separable; its layers are: "
                                        "flatten \\(Flatten\\)"):
        run_step(SEPARABLE, [mlp], FAST, dataset=mnist_dataset, out_dir=tmp_path / "out")


def test_selecting_a_layer_it_cannot_rewrite(trained_cnn, mnist_dataset, tmp_path):
    with pytest.raises(StepError, match="does not support layer\\(s\\) dense; layers it can handle here: conv2d"):
        run_step(SEPARABLE, [trained_cnn], {**FAST, "layers": ["dense"]}, dataset=mnist_dataset, out_dir=tmp_path / "o")
