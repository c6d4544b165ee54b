"""An example builder with a custom layer class and a Lambda layer.

tinybuild records this model as "call build() from this file" plus weights:
later steps (train, prune, tflite, evaluate...) call ``build`` again to make
``Scale`` and the Lambda layer, then load the trained weights. Neither
layer needs a ``get_config``, and nothing is deserialized from bytecode.
"""

import tf_keras as keras


class Scale(keras.layers.Layer):
    """Multiplies each channel by a learned factor (a custom layer with a weight)."""

    def __init__(self, initial: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = initial

    def build(self, input_shape):
        self.factor = self.add_weight(
            name="factor", shape=(int(input_shape[-1]),),
            initializer=keras.initializers.Constant(self.initial), trainable=True,
        )
        super().build(input_shape)

    def call(self, inputs):
        return inputs * self.factor


def build(input_shape, num_classes, filters=8, initial_scale=1.0):
    inputs = keras.Input(input_shape)
    # a Lambda: center the [0, 1] pixels around zero
    x = keras.layers.Lambda(lambda t: t - 0.5, name="center")(inputs)
    x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
    x = Scale(initial_scale, name="scale")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs)
