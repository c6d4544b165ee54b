"""Built-in model architectures for the ``keras`` model step.

Each builder takes the dataset's input shape, its class count and the
recipe's ``options`` table, and returns an uncompiled tf_keras model that
emits logits. They are deliberately small: the targets are microcontrollers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from tinybuild.api import StepError

from tinybuild_plugins.sdk import tf as _tf

Builder = Callable[[Sequence[int], int, Mapping[str, Any]], Any]


def _options(name: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise StepError(
            f"architecture '{name}' has no option {', '.join(unknown)}; "
            f"its options are: {', '.join(f'{k} (default {v})' for k, v in defaults.items())}"
        )
    return {**defaults, **given}


def _positive_int(name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StepError(f"architecture '{name}': option {key} must be a positive integer, got {value!r}")
    return value


def basic_cnn(input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any]) -> Any:
    """Conv2D(12, 3x3, relu) -> MaxPool 2x2 -> Flatten -> Dense logits.

    The TensorFlow Lite for Microcontrollers tutorial's model: 20,410
    parameters on 28x28x1 with 10 classes.
    """
    opts = _options("basic-cnn", options, {"filters": 12, "kernel_size": 3})
    filters = _positive_int("basic-cnn", "filters", opts["filters"])
    kernel = _positive_int("basic-cnn", "kernel_size", opts["kernel_size"])
    layers = _tf.keras().layers
    return _tf.keras().Sequential(
        [
            layers.InputLayer(input_shape=tuple(input_shape)),
            layers.Conv2D(filters, (kernel, kernel), activation="relu", name="conv2d"),
            layers.MaxPooling2D((2, 2), name="max_pooling2d"),
            layers.Flatten(name="flatten"),
            layers.Dense(num_classes, name="dense"),
        ],
        name="basic_cnn",
    )


def mlp(input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any]) -> Any:
    """Flatten -> Dense(relu) x len(hidden) -> Dense logits: the smallest baseline."""
    opts = _options("mlp", options, {"hidden": [64]})
    hidden = opts["hidden"]
    if not isinstance(hidden, list):
        raise StepError(f"architecture 'mlp': option hidden must be a list of layer widths, got {hidden!r}")
    layers = _tf.keras().layers
    stack = [layers.InputLayer(input_shape=tuple(input_shape)), layers.Flatten(name="flatten")]
    for i, units in enumerate(hidden):
        stack.append(layers.Dense(_positive_int("mlp", "hidden", units), activation="relu", name=f"dense_{i}"))
    stack.append(layers.Dense(num_classes, name="logits"))
    return _tf.keras().Sequential(stack, name="mlp")


def ds_cnn(input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any]) -> Any:
    """A small depthwise-separable CNN (the keyword-spotting DS-CNN pattern).

    Conv 3x3/2 -> blocks of [depthwise 3x3 + BN + relu, pointwise 1x1 + BN +
    relu] -> global average pooling -> Dense logits.
    """
    opts = _options("ds-cnn", options, {"filters": 32, "blocks": 2})
    filters = _positive_int("ds-cnn", "filters", opts["filters"])
    blocks = _positive_int("ds-cnn", "blocks", opts["blocks"])
    layers = _tf.keras().layers
    stack = [
        layers.InputLayer(input_shape=tuple(input_shape)),
        layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name="conv_stem"),
        layers.BatchNormalization(name="bn_stem"),
        layers.ReLU(name="relu_stem"),
    ]
    for i in range(blocks):
        stack += [
            layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw_{i}"),
            layers.BatchNormalization(name=f"bn_dw_{i}"),
            layers.ReLU(name=f"relu_dw_{i}"),
            layers.Conv2D(filters, 1, use_bias=False, name=f"pw_{i}"),
            layers.BatchNormalization(name=f"bn_pw_{i}"),
            layers.ReLU(name=f"relu_pw_{i}"),
        ]
    stack += [layers.GlobalAveragePooling2D(name="pool"), layers.Dense(num_classes, name="logits")]
    return _tf.keras().Sequential(stack, name="ds_cnn")


def _fire_config(value: Any) -> list[tuple[int, int]]:
    if not isinstance(value, list) or not value or not all(
        isinstance(f, list) and len(f) == 2 for f in value
    ):
        raise StepError(
            "architecture 'squeezenet': option fire must be a non-empty list of [squeeze, expand] pairs, "
            f"e.g. [[8, 16], [16, 32]]; got {value!r}"
        )
    return [(_positive_int("squeezenet", "fire", s), _positive_int("squeezenet", "fire", e)) for s, e in value]


def squeezenet(input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any]) -> Any:
    """A small SqueezeNet (Iandola et al., 2016) for 2-D inputs such as squared
    audio windows or spectrograms.

    Stem Conv 3x3 (stride ``stem_stride``) -> MaxPool 3x3/2 -> fire modules
    (1x1 squeeze, then 1x1 and 3x3 expands concatenated) with a MaxPool 3x3/2
    after every ``pool_every`` of them (late downsampling: few early pools keep
    activation maps large) -> optional Dropout -> Conv 1x1 to ``num_classes``
    -> global average pooling = logits. The 3x3 expands read only the
    ``squeeze`` channels, which is where SqueezeNet saves its parameters.
    With the defaults on [90, 90, 1] inputs and 6 classes: 15,510 parameters.
    """
    name = "squeezenet"
    opts = _options(name, options, {"stem_filters": 16, "stem_stride": 2, "fire": [[8, 16], [8, 16], [16, 32], [16, 32]],
                                     "pool_every": 2, "dropout": 0.0})
    stem = _positive_int(name, "stem_filters", opts["stem_filters"])
    stride = _positive_int(name, "stem_stride", opts["stem_stride"])
    fires = _fire_config(opts["fire"])
    pool_every = _positive_int(name, "pool_every", opts["pool_every"])
    dropout = opts["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise StepError(f"architecture '{name}': option dropout must be a number in [0, 1), got {dropout!r}")
    keras = _tf.keras()
    layers = keras.layers
    inputs = layers.Input(shape=tuple(input_shape), name="input")
    x = layers.Conv2D(stem, 3, strides=stride, padding="same", activation="relu", name="stem")(inputs)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool_stem")(x)
    for i, (squeeze, expand) in enumerate(fires):
        s = layers.Conv2D(squeeze, 1, activation="relu", name=f"fire{i}_squeeze")(x)
        e1 = layers.Conv2D(expand, 1, activation="relu", name=f"fire{i}_expand1x1")(s)
        e3 = layers.Conv2D(expand, 3, padding="same", activation="relu", name=f"fire{i}_expand3x3")(s)
        x = layers.Concatenate(name=f"fire{i}_concat")([e1, e3])
        if (i + 1) % pool_every == 0 and i + 1 < len(fires):
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{i}")(x)
    if dropout:
        x = layers.Dropout(float(dropout), name="dropout")(x)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    outputs = layers.GlobalAveragePooling2D(name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


ARCHITECTURES: dict[str, Builder] = {"basic-cnn": basic_cnn, "mlp": mlp, "ds-cnn": ds_cnn, "squeezenet": squeezenet}
