"""MACs per inference (plugins/report/macs.py) against hand counts from the
layer shapes, for a Keras model, its .tflite conversion, and evaluate's metrics."""

from __future__ import annotations

import json

import pytest

from tinybuild.testing import run_step
from tinybuild_plugins.report.evaluate import tinybuild_step_types as evaluate_types
from tinybuild_plugins.report.macs import keras_macs, tflite_macs
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.tflite.convert import tinybuild_step_types as tflite_types

EVALUATE = evaluate_types()[0]
TFLITE = tflite_types()[0]


def out_size(size: int, kernel: int, stride: int = 1) -> int:
    """Output length of a 'valid' convolution."""
    return (size - kernel) // stride + 1


@pytest.fixture(scope="module")
def tiny():
    """12x12x3 -> Conv2D(4, 3x3, stride 2) -> DepthwiseConv2D(3x3, x2) -> SeparableConv2D(5, 2x2)
    -> Flatten -> Dense(6), with the hand count of every layer."""
    keras = _tf.keras()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        layers.InputLayer(input_shape=(12, 12, 3)),
        layers.Conv2D(4, 3, strides=2, name="conv"),
        layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        layers.SeparableConv2D(5, 2, name="sep"),
        layers.Flatten(name="flat"),
        layers.Dense(6, name="dense"),
    ])
    h1 = out_size(12, 3, 2)          # 5
    h2 = out_size(h1, 3)             # 3
    h3 = out_size(h2, 2)             # 2
    hand = {
        "conv": h1 * h1 * 3 * 3 * 3 * 4,
        "dw": h2 * h2 * 3 * 3 * (4 * 2),
        "sep": h3 * h3 * 2 * 2 * 8 + h3 * h3 * 8 * 5,
        "dense": (h3 * h3 * 5) * 6,
    }
    return model, hand


def test_keras_macs_equal_the_hand_count(tiny):
    model, hand = tiny
    macs = keras_macs(model)
    assert macs["per_layer"] == hand
    assert macs["total"] == sum(hand.values())


def test_keras_macs_look_through_tfmot_wrappers(tiny):
    """tfmot cannot quantize SeparableConv2D: a conv + dense model, wrapped and not."""
    _, hand = tiny
    keras = _tf.keras()
    layers = keras.layers
    plain = keras.Sequential([layers.InputLayer(input_shape=(12, 12, 3)), layers.Conv2D(4, 3, strides=2, name="conv"),
                              layers.Flatten(name="flat"), layers.Dense(6, name="dense")])
    quantized = _tf.tfmot().quantization.keras.quantize_model(plain)
    assert keras_macs(quantized) == keras_macs(plain)
    assert keras_macs(plain)["total"] == hand["conv"] + (5 * 5 * 4) * 6


def test_tflite_macs_equal_the_keras_count(tiny):
    model, hand = tiny
    tf = _tf.tensorflow()
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    macs = tflite_macs(flatbuffer)
    assert macs["total"] == sum(hand.values())
    assert sorted(name.split(":")[1] for name in macs["per_op"]) == [
        "CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]


def test_evaluate_writes_macs_for_keras_and_tflite(trained_cnn, mnist_dataset, tmp_path):
    hand = 26 * 26 * (3 * 3 * 1) * 12 + (13 * 13 * 12) * 10  # basic CNN: conv 3x3 -> pool 2x2 -> dense
    int8 = run_step(TFLITE, [trained_cnn], {"quantize": "int8"}, dataset=mnist_dataset, out_dir=tmp_path / "i8")
    for source, name in ((trained_cnn, "k"), (int8, "t")):
        out = run_step(EVALUATE, [source], {"latency_runs": 0}, dataset=mnist_dataset, out_dir=tmp_path / name)
        assert json.loads((out.path / "metrics.json").read_text())["macs"] == hand
        assert out.metrics["macs"] == hand


def test_channels_first_convolutions_count_the_same():
    """Conv2D in channels_first layout: same work as its channels_last twin (built, not run:
    TensorFlow's CPU kernels only execute channels_last convolutions)."""
    keras = _tf.keras()
    first = keras.Sequential([keras.layers.InputLayer(input_shape=(3, 10, 10)),
                              keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv")])
    assert keras_macs(first)["per_layer"] == {"conv": out_size(10, 3) ** 2 * 3 * 3 * 3 * 4}

