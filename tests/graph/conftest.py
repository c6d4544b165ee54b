"""Fixtures for the graph-pass tests: hand-built GraphDefs, tiny frozen Keras
models (built once per session), and helpers to run graphs.

Helpers are fixtures returning functions, so test modules need no imports
from this folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from tinybuild.testing import artifact_from_dir


@pytest.fixture(scope="session")
def tf() -> Any:
    from tinybuild_plugins.sdk import tf as _tf

    return _tf.tensorflow()


@pytest.fixture(scope="session")
def passes() -> dict[str, Any]:
    from tinybuild_plugins.graph.passes import builtin_passes

    return {p.name: p for p in builtin_passes()}


@pytest.fixture(scope="session")
def make_graph(tf: Any) -> Callable[..., Any]:
    """``make_graph(build, outputs, inputs)``: run ``build(tf)`` in a fresh
    tf.Graph and wrap its GraphDef with the given signature tensor names."""
    from tinybuild_plugins.sdk.graph_edit import Graph

    def make(build: Callable[[Any], None], outputs: tuple[str, ...], inputs: tuple[str, ...] = ("x:0",)) -> Graph:
        graph = tf.Graph()
        with graph.as_default():
            build(tf)
        return Graph(graph.as_graph_def(), inputs, outputs)

    return make


@pytest.fixture(scope="session")
def run_graph() -> Callable[..., list[np.ndarray]]:
    """``run_graph(graph, feeds)``: the graph's signature outputs on ``feeds``."""
    from tinybuild_plugins.sdk import tfgraph as _tfgraph

    def run(graph: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return _tfgraph.run_graph(graph.graph_def, graph.outputs, feeds)

    return run


@pytest.fixture(scope="session")
def nodes() -> Callable[[Any], dict[str, Any]]:
    """``nodes(graph)``: name -> NodeDef."""
    return lambda graph: {n.name: n for n in graph.graph_def.node}


def _freeze(model: Any) -> Any:
    from tinybuild_plugins.sdk.graph_edit import Graph
    from tinybuild_plugins.graph.freeze import freeze_keras_model

    graph_def, signature = freeze_keras_model(model)
    return Graph(graph_def, tuple(s["tensor"] for s in signature["inputs"]),
                 tuple(s["tensor"] for s in signature["outputs"])), signature


def _randomize_batchnorms(model: Any, seed: int) -> None:
    """Non-trivial BN statistics, so folding them is visible in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.3, channels),
                               rng.normal(0, 0.3, channels), rng.uniform(0.5, 1.5, channels)])


@pytest.fixture(scope="session")
def bn_model(tf: Any) -> Any:
    """Conv -> BN -> ReLU -> depthwise -> BN -> (residual add) -> Dense -> BN (unfused
    form) -> softmax: every pattern the passes know, on 12x12x3 inputs."""
    from tinybuild_plugins.sdk import tf as _tf

    keras = _tf.keras()
    keras.utils.set_random_seed(3)
    layers = keras.layers
    x = layers.Input((12, 12, 3), name="image")
    y = layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    z = layers.DepthwiseConv2D(3, padding="same")(y)
    z = layers.BatchNormalization()(z)
    y = layers.Add()([y, z])
    y = layers.GlobalAveragePooling2D()(y)
    y = layers.Dense(6)(y)
    y = layers.BatchNormalization()(y)
    y = layers.Softmax()(y)
    model = keras.Model(x, y)
    _randomize_batchnorms(model, 3)
    return model


@pytest.fixture(scope="session")
def bn_graph(bn_model: Any) -> Any:
    return _freeze(bn_model)[0]


@pytest.fixture(scope="session")
def bn_signature(bn_model: Any) -> dict[str, Any]:
    return _freeze(bn_model)[1]


@pytest.fixture(scope="session")
def basic_cnn(tf: Any) -> Any:
    """The seed tutorial's CNN at a smaller width (Conv 4 filters)."""
    from tinybuild_plugins.sdk import tf as _tf

    keras = _tf.keras()
    keras.utils.set_random_seed(1)
    layers = keras.layers
    return keras.Sequential([
        layers.Input((28, 28, 1)),
        layers.Conv2D(4, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(10),
    ], name="basic_cnn")


@pytest.fixture(scope="session")
def keras_artifact(basic_cnn: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The basic CNN as a keras-model artifact."""
    from tinybuild.api import Kind
    from tinybuild_plugins.sdk.keras_model import save_keras_model

    out = tmp_path_factory.mktemp("keras-model")
    save_keras_model(basic_cnn, out)
    return artifact_from_dir("model", Kind.KERAS_MODEL, out)


@pytest.fixture(scope="session")
def frozen_artifact(keras_artifact: Any) -> Any:
    """graph-freeze of the basic CNN, run once."""
    from tinybuild.testing import run_step
    from tinybuild_plugins.graph.steps import tinybuild_step_types

    freeze = next(s for s in tinybuild_step_types() if s.name == "graph-freeze")
    return run_step(freeze, [keras_artifact], step="frozen")


@pytest.fixture(scope="session")
def while_graph(tf: Any) -> Any:
    """A frozen tf.function holding a tf.while_loop (functional While op)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tinybuild_plugins.sdk.graph_edit import Graph

    scale = tf.Variable(np.float32(0.5))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def loop(x: Any) -> Any:
        i = tf.constant(0)
        _, y = tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, tf.identity(y * scale + 1.0)), [i, x])
        return tf.identity(y * 1.0)

    frozen = convert_variables_to_constants_v2(loop.get_concrete_function(), lower_control_flow=False)
    return Graph(frozen.graph.as_graph_def(), tuple(t.name for t in frozen.inputs),
                 tuple(t.name for t in frozen.outputs))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 28x28x1 dataset artifact (random pixels) for verification inputs."""
    from tinybuild.api import Kind
    from tinybuild_plugins.sdk.dataset import save_dataset

    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("dataset")
    x = {s: rng.random((n, 28, 28, 1), dtype=np.float32) for s, n in (("train", 20), ("val", 5), ("test", 12))}
    y = {s: rng.integers(0, 10, len(v)) for s, v in x.items()}
    save_dataset(out, x, y, {"input_shape": [28, 28, 1], "num_classes": 10})
    return artifact_from_dir("dataset", Kind.DATASET, Path(out))
