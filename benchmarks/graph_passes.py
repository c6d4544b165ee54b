"""Benchmark: tinybuild's graph passes vs TensorFlow's Grappler, in nodes and
in what ships.

Models (frozen Keras, random weights): the seed tutorial's basic CNN,
MobileNetV2 (alpha 0.35, 96x96), a small ResNet-style network with batch
norms, a DS-CNN keyword spotter (batch norms, Dropout, an identity chain of
linear Activations and an ``x + zeros_like(x)``), and a keyword-spotting DNN
over MFCC features with a Keras ``Normalization`` layer in front of its
first Dense.

Table 1: node count of the frozen graph, after tinybuild's passes (every
built-in pass, the inexact fold-batchnorm and fold-input-affine included,
to a fixed point) and after Grappler's constant folding + dependency +
arithmetic optimizers; the max absolute output difference of each against
the original graph; and the time each optimizer takes (median of 3 warm
runs). Targets (ours): <= 0.9 x Grappler's node count, max abs difference
<= 1e-5, <= 1 s per model.

Table 2: what ships. Each model converted to .tflite through the project's
own conversion path (``plugins/tflite/convert.py``: batch 1, names and
metadata stripped) four ways -- directly from Keras, from the unoptimized
frozen graph, from tinybuild's optimized graph, from Grappler's graph -- in
float32 and int8 (calibrated on 4 seeded random inputs: enough for sizes
and op counts, not for accuracy). Goal: tinybuild <= direct in bytes and
ops on every model.

Table 3: small patterns, each a traced ``tf.function`` at batch 1: the ops
the converter keeps when it converts the function directly, and when it
converts the function's graph after tinybuild's passes -- which patterns
the converter already removes by itself.

Batch-norm statistics are randomized (seeded) so that folding them is not a
no-op, as in a trained model.

Run: .venv/bin/python benchmarks/graph_passes.py   (exits 0; prints the tables; ~3 min on 2 cores)
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from tinybuild_plugins.sdk import tf as _tf  # noqa: E402
from tinybuild_plugins.sdk.graph_edit import Graph  # noqa: E402
from tinybuild_plugins.graph.freeze import freeze_keras_model  # noqa: E402
from tinybuild_plugins.graph.optimize import run_to_fixed_point  # noqa: E402
from tinybuild_plugins.graph.passes import DEFAULT_ORDER, builtin_passes  # noqa: E402
from tinybuild_plugins.graph.verify import Runner, sample_inputs  # noqa: E402
from tinybuild_plugins.sdk.graphdef import save_graphdef  # noqa: E402
from tinybuild_plugins.sdk.keras_model import save_keras_model  # noqa: E402
from tinybuild_plugins.tflite import convert as _convert  # noqa: E402
from tinybuild_plugins.tflite import litert as _litert  # noqa: E402

SEED = 0
SAMPLES = 8
CALIBRATION_SAMPLES = 4
NODE_RATIO_TARGET = 0.9
DIFF_TARGET = 1e-5
TIME_TARGET_S = 1.0


# -- models ---------------------------------------------------------------------


def basic_cnn() -> Any:
    keras = _tf.keras()
    layers = keras.layers
    return keras.Sequential([
        layers.Input((28, 28, 1)),
        layers.Conv2D(12, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(10),
    ], name="basic_cnn")


def mobilenet_v2() -> Any:
    return _tf.keras().applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)


def small_resnet() -> Any:
    """Stem + three residual blocks (the last two downsample through a 1x1
    projection), each conv followed by BatchNormalization."""
    keras = _tf.keras()
    layers = keras.layers

    def conv_bn(x: Any, filters: int, kernel: int, strides: int = 1, relu: bool = True) -> Any:
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    inputs = layers.Input((32, 32, 3))
    x = conv_bn(inputs, 16, 3)
    for filters, strides in ((16, 1), (32, 2), (64, 2)):
        shortcut = x
        y = conv_bn(x, filters, 3, strides)
        y = conv_bn(y, filters, 3, relu=False)
        if strides != 1 or shortcut.shape[-1] != filters:
            shortcut = conv_bn(shortcut, filters, 1, strides, relu=False)
        x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x), name="small_resnet")


def ds_cnn() -> Any:
    """A DS-CNN keyword spotter (49 MFCC frames x 10 coefficients, 12 words)
    written the way such models are found in the wild: BatchNormalization
    after every convolution, Dropout, a chain of linear Activations (an
    identity chain) and a residual-style ``x + zeros_like(x)`` placeholder."""
    keras = _tf.keras()
    tf = _tf.tensorflow()
    layers = keras.layers
    inputs = layers.Input((49, 10, 1))
    x = layers.Conv2D(32, (10, 4), strides=(2, 2), padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Dropout(0.2)(x)
    for _ in range(3):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.Conv2D(32, 1, use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Activation("linear")(layers.Activation("linear")(x))
    x = x + tf.zeros_like(x)
    x = layers.Dropout(0.4)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Dense(12)(x), name="ds_cnn")


def kws_dnn() -> Any:
    """The DNN keyword spotter of "Hello Edge" (3 x Dense 144 over 49 x 10
    MFCCs) with feature standardization as a Keras Normalization layer,
    whose mean and variance a real model would get from ``adapt``. Biases
    are random, as after training: a zero bias is dropped by the converter,
    and folding the normalization's shift would then have to add one."""
    keras = _tf.keras()
    layers = keras.layers
    rng = np.random.default_rng(SEED)
    inputs = layers.Input((490,))
    x = layers.Normalization(mean=rng.normal(0, 1, 490), variance=rng.uniform(0.5, 2, 490))(inputs)
    for _ in range(3):
        x = layers.Dense(144, activation="relu", bias_initializer=keras.initializers.RandomNormal(0, 0.1))(x)
    outputs = layers.Dense(12, bias_initializer=keras.initializers.RandomNormal(0, 0.1))(x)
    return keras.Model(inputs, outputs, name="kws_dnn")


MODELS = (
    ("basic CNN", basic_cnn),
    ("MobileNetV2 0.35 96", mobilenet_v2),
    ("ResNet-style", small_resnet),
    ("DS-CNN KWS", ds_cnn),
    ("DNN KWS + Normalization", kws_dnn),
)


def randomize_batchnorms(model: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                               rng.normal(0, 0.2, n), rng.uniform(0.5, 1.5, n)])


# -- optimizers -----------------------------------------------------------------


def grappler(graph: Graph) -> Graph:
    """Grappler's constfold + dependency + arithmetic optimizers on ``graph``."""
    tf = _tf.tensorflow()
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.grappler import tf_optimizer

    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(graph.graph_def, name="")
        meta_graph = tf.compat.v1.train.export_meta_graph(graph=g)
    meta_graph.collection_def["train_op"].node_list.value.extend(t.split(":")[0] for t in graph.outputs)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(["constfold", "dependency", "arithmetic"])
    rewrite.min_graph_nodes = -1
    return Graph(tf_optimizer.OptimizeGraph(config, meta_graph), graph.inputs, graph.outputs)


def tinybuild_run(graph: Graph) -> Any:
    registered = {p.name: p for p in builtin_passes()}
    return run_to_fixed_point(graph, [registered[n] for n in DEFAULT_ORDER], max_rounds=8)


def tinybuild(graph: Graph) -> Graph:
    return tinybuild_run(graph).graph


def contributions(graph: Graph) -> dict[str, int]:
    """Nodes each pass removed over the whole fixed-point run (default order)."""
    removed = dict.fromkeys(DEFAULT_ORDER, 0)
    for application in tinybuild_run(graph).applications:
        removed[application.graph_pass.name] += (len(application.before.graph_def.node)
                                                 - len(application.after.graph_def.node))
    return removed


def timed(optimize: Callable[[Graph], Graph], graph: Graph) -> tuple[Graph, float]:
    optimize(graph)  # warm-up: op registry, first session, caches
    times, result = [], graph
    for _ in range(3):
        start = time.perf_counter()
        result = optimize(graph)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


# -- what ships ------------------------------------------------------------------


def _converted(converter: Any, shape: list[int], quantize: str) -> tuple[int, int]:
    """(.tflite bytes, op count) as the tflite step makes them (defaults:
    names and metadata stripped)."""
    calibration = None
    if quantize == "int8":
        rng = np.random.default_rng(SEED)
        sample = rng.random((CALIBRATION_SAMPLES, *shape[1:]), dtype=np.float32)
        calibration = lambda: ([row[None, ...]] for row in sample)  # noqa: E731
    _convert._configure(converter, _convert.TFLiteParams(quantize=quantize), calibration)
    model_bytes = _convert._strip(bytes(converter.convert()), names=True, metadata=True)
    return len(model_bytes), sum(_litert.describe(model_bytes)["ops"].values())


def _context() -> Any:
    return types.SimpleNamespace(dataset=None, step="benchmark", seed=SEED)


def tflite_from_keras(model: Any, quantize: str) -> tuple[int, int]:
    from tinybuild.api import Kind
    from tinybuild.testing import artifact_from_dir

    with tempfile.TemporaryDirectory() as folder:
        save_keras_model(model, Path(folder))
        artifact = artifact_from_dir("model", Kind.KERAS_MODEL, Path(folder))
        converter, shape, _ = _convert._keras_converter(_context(), artifact, "benchmark")
        return _converted(converter, shape, quantize)


def tflite_from_graph(graph: Graph, signature: dict[str, Any], quantize: str) -> tuple[int, int]:
    from tinybuild.api import Kind
    from tinybuild.testing import artifact_from_dir

    with tempfile.TemporaryDirectory() as folder:
        save_graphdef(folder, graph.graph_def, signature)
        artifact = artifact_from_dir("graph", Kind.GRAPHDEF, Path(folder))
        converter, shape, _, _ = _convert._graphdef_converter(_context(), artifact, "benchmark")
        return _converted(converter, shape, quantize)


def print_shipped(shipped: list[tuple[str, str, dict[str, tuple[int, int]]]]) -> None:
    print("\n.tflite bytes / op count by conversion source (names and metadata stripped, batch 1)")
    columns = ("direct", "frozen", "tinybuild", "grappler")
    print(f"{'model':<24} {'quant':<7}" + "".join(f"{c:>18}" for c in columns) + "  tinybuild vs direct")
    all_met, better = True, 0
    for name, quantize, sizes in shipped:
        (d_bytes, d_ops), (o_bytes, o_ops) = sizes["direct"], sizes["tinybuild"]
        met = o_bytes <= d_bytes and o_ops <= d_ops
        all_met = all_met and met
        better += met and (o_bytes < d_bytes or o_ops < d_ops)
        verdict = f"{o_bytes - d_bytes:+d} B, {o_ops - d_ops:+d} ops" + ("" if met else "  (WORSE)")
        print(f"{name:<24} {quantize:<7}" + "".join(f"{f'{b} / {n}':>18}" for b, n in (sizes[c] for c in columns))
              + f"  {verdict}")
    print(f"\ngoal: tinybuild <= direct in bytes and ops on every row: {'met' if all_met else 'NOT met'}; "
          f"strictly smaller on {better} of {len(shipped)} rows")


def patterns() -> list[tuple[str, Callable[[Any], Any], list[int]]]:
    tf = _tf.tensorflow()
    rng = np.random.default_rng(SEED)
    kernel = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    weights = rng.normal(size=(16, 4)).astype(np.float32)
    mean, std = rng.normal(size=(1, 16)).astype(np.float32), rng.uniform(0.5, 2, (1, 16)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    gamma, beta, mean8, bias8 = (rng.normal(size=8).astype(np.float32) for _ in range(4))
    variance = rng.uniform(0.5, 2, 8).astype(np.float32)
    image = [1, 8, 8, 8]
    return [
        ("relu(x + zeros_like(x))", lambda x: tf.nn.relu(x + tf.zeros_like(x)), image),
        ("relu(x * ones_like(x))", lambda x: tf.nn.relu(x * tf.ones_like(x)), image),
        ("relu(x - fill(0))", lambda x: tf.nn.relu(x - tf.fill([8], 0.0)), image),
        ("transpose NHWC->NCHW->NHWC", lambda x: tf.nn.relu(tf.transpose(tf.transpose(x, [0, 3, 1, 2]), [0, 2, 3, 1])),
         image),
        ("relu(tile(x, 1))", lambda x: tf.nn.relu(tf.tile(x, [1, 1, 1, 1])), image),
        ("reshape chain to same shape", lambda x: tf.nn.relu(tf.reshape(tf.reshape(x, [1, 512]), [1, 8, 8, 8])), image),
        ("pad 1 + VALID 3x3 conv", lambda x: tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), kernel, 1, "VALID"),
         image),
        ("concat of x's two halves", lambda x: tf.nn.relu(tf.concat([x[..., :4], x[..., 4:]], -1)), image),
        ("(x - mean) / std -> dense", lambda x: tf.nn.bias_add(tf.matmul((x - mean) / std, weights), bias), [1, 16]),
        ("batch norm -> VALID conv", lambda x: tf.nn.bias_add(tf.nn.conv2d(tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, mean8, variance, is_training=False)[0], kernel, 1, "VALID"), bias8), image),
    ]


def pattern_ops(function: Callable[[Any], Any], shape: list[int]) -> tuple[dict[str, int], dict[str, int]]:
    """Ops after converting ``function`` directly, and after tinybuild's passes."""
    tf = _tf.tensorflow()
    concrete = tf.function(function).get_concrete_function(tf.TensorSpec(shape, tf.float32, name="x"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    _convert._configure(converter, _convert.TFLiteParams(), None)
    direct = _litert.describe(bytes(converter.convert()))["ops"]
    inputs, outputs = [t.name for t in concrete.inputs], [t.name for t in concrete.outputs]
    graph = tinybuild(Graph(concrete.graph.as_graph_def(), tuple(inputs), tuple(outputs)))
    signature = {"inputs": [{"name": "x", "tensor": inputs[0], "shape": shape, "dtype": "float32"}],
                 "outputs": [{"name": "y", "tensor": outputs[0], "shape": None, "dtype": "float32"}]}
    with tempfile.TemporaryDirectory() as folder:
        from tinybuild.api import Kind
        from tinybuild.testing import artifact_from_dir

        save_graphdef(folder, graph.graph_def, signature)
        artifact = artifact_from_dir("graph", Kind.GRAPHDEF, Path(folder))
        converter, _, _, _ = _convert._graphdef_converter(_context(), artifact, "benchmark")
        _convert._configure(converter, _convert.TFLiteParams(), None)
        ours = _litert.describe(bytes(converter.convert()))["ops"]
    return direct, ours


def print_patterns() -> None:
    print("\nsmall patterns (float32): ops the converter keeps, direct vs after tinybuild's passes")
    print(f"{'pattern':<30} {'direct':<42} tinybuild")
    describe = lambda ops: ", ".join(f"{op} x{n}" if n > 1 else op for op, n in ops.items()) or "-"  # noqa: E731
    for name, function, shape in patterns():
        direct, ours = pattern_ops(function, shape)
        print(f"{name:<30} {describe(direct):<42} {describe(ours)}")


# -- main -----------------------------------------------------------------------


def main() -> int:
    keras = _tf.keras()
    rows, per_pass, shipped = [], [], []
    for name, build in MODELS:
        keras.utils.set_random_seed(SEED)
        model = build()
        randomize_batchnorms(model, SEED)
        graph_def, signature = freeze_keras_model(model)
        graph = Graph(graph_def, tuple(s["tensor"] for s in signature["inputs"]),
                      tuple(s["tensor"] for s in signature["outputs"]))
        ours, ours_s = timed(tinybuild, graph)
        theirs, theirs_s = timed(grappler, graph)
        runner = Runner(sample_inputs(signature, None, SAMPLES, SEED))
        ours_diff, ours_err = runner.difference(graph, ours)
        theirs_diff, theirs_err = runner.difference(graph, theirs)
        n0, n1, n2 = len(graph.graph_def.node), len(ours.graph_def.node), len(theirs.graph_def.node)
        met = n1 <= NODE_RATIO_TARGET * n2 and ours_diff <= DIFF_TARGET and ours_s <= TIME_TARGET_S and not ours_err
        rows.append((name, n0, n1, n2, n1 / n2, ours_diff, theirs_diff, ours_s, theirs_s, met,
                     ours_err or theirs_err))
        per_pass.append((name, contributions(graph)))
        for quantize in ("float32", "int8"):
            sizes = {"direct": tflite_from_keras(model, quantize)}
            for source, optimized in (("frozen", graph), ("tinybuild", ours), ("grappler", theirs)):
                sizes[source] = tflite_from_graph(optimized, signature, quantize)
            shipped.append((name, quantize, sizes))

    header = ("model", "frozen", "ours", "grappler", "ours/grap", "ours max|d|", "grap max|d|",
              "ours s", "grap s", "targets")
    print(f"{header[0]:<24} {header[1]:>6} {header[2]:>5} {header[3]:>8} {header[4]:>9} "
          f"{header[5]:>11} {header[6]:>11} {header[7]:>7} {header[8]:>7}  {header[9]}")
    for name, n0, n1, n2, ratio, d1, d2, t1, t2, met, error in rows:
        print(f"{name:<24} {n0:>6} {n1:>5} {n2:>8} {ratio:>9.2f} {d1:>11.2e} {d2:>11.2e} {t1:>7.3f} {t2:>7.3f}  "
              f"{'met' if met else 'NOT met'}" + (f"  ({error})" if error else ""))
    print(f"\ntargets: ours <= {NODE_RATIO_TARGET} x grappler nodes, max|d| <= {DIFF_TARGET:g}, "
          f"<= {TIME_TARGET_S:g} s per model; {SAMPLES} random inputs (seed {SEED}); times: median of 3 warm runs")

    print("\nnodes removed by each pass over the fixed-point run (default order)")
    print(f"{'pass':<22}" + "".join(f"{name:>25}" for name, _ in per_pass))
    for graph_pass in DEFAULT_ORDER:
        print(f"{graph_pass:<22}" + "".join(f"{removed[graph_pass]:>25}" for _, removed in per_pass))
    print_shipped(shipped)
    print_patterns()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
