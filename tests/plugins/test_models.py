"""The keras model step type and the keras-model artifact format (_keras_io)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.keras_model import load_keras_model, read_model_meta, save_keras_model
from tinybuild_plugins.keras.models import KERAS


def build(params, dataset, tmp_path, name="model", seed=0, recipe_dir=None):
    return run_step(KERAS, [], params, dataset=dataset, out_dir=tmp_path / name, seed=seed,
                    recipe_dir=recipe_dir or tmp_path)


def file_bytes(artifact) -> dict[str, bytes]:
    return {rel: (artifact.path / rel).read_bytes() for rel in artifact.files}


def write_builder(folder: Path, body: str, name: str = "cnn.py") -> Path:
    path = folder / "models" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


# -- built-in architectures ---------------------------------------------------------


def test_basic_cnn_is_the_tutorial_model_with_20410_parameters(basic_cnn):
    model = load_keras_model(basic_cnn.path)
    assert model.count_params() == 20_410
    assert basic_cnn.metrics["params"] == 20_410
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert model.layers[0].filters == 12 and model.layers[0].kernel_size == (3, 3)
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits
    meta = read_model_meta(basic_cnn.path)
    assert meta["input_shape"] == [None, 28, 28, 1] and meta["output"] == "logits"
    assert meta["optimization"] == "none" and meta["params"]["total"] == 20_410


@pytest.mark.parametrize(
    "architecture, options, params",
    [
        ("basic-cnn", {"filters": 8}, 8 * 9 + 8 + 13 * 13 * 8 * 10 + 10),
        ("mlp", {"hidden": [32]}, 784 * 32 + 32 + 32 * 10 + 10),
        ("ds-cnn", {"filters": 16, "blocks": 1}, None),
    ],
)
def test_built_ins_and_their_options(mnist_dataset, tmp_path, architecture, options, params):
    art = build({"architecture": architecture, "options": options}, mnist_dataset, tmp_path)
    model = load_keras_model(art.path)
    if params is not None:
        assert model.count_params() == params
    assert model.output_shape == (None, 10)
    x = load_dataset_x(mnist_dataset)
    assert model.predict(x, verbose=0).shape == (len(x), 10)


def load_dataset_x(dataset):
    return np.load(dataset.path / "x_test.npy")[:4]


def test_unknown_architecture_option_lists_the_valid_ones(mnist_dataset, tmp_path):
    with pytest.raises(StepError, match="no option width.*filters \\(default 12\\)"):
        build({"architecture": "basic-cnn", "options": {"width": 3}}, mnist_dataset, tmp_path)


def test_weights_come_from_the_recipe_seed(mnist_dataset, tmp_path, basic_cnn):
    again = build({"architecture": "basic-cnn"}, mnist_dataset, tmp_path, name="again")
    other = build({"architecture": "basic-cnn"}, mnist_dataset, tmp_path, name="other", seed=1)
    assert again.digest == basic_cnn.digest  # also independent of what ran before in this process
    assert other.digest != basic_cnn.digest


# -- user builders --------------------------------------------------------------------

BUILDER = """
    import tf_keras as keras

    def build(input_shape, num_classes, width=16):
        return keras.Sequential([
            keras.layers.InputLayer(input_shape=input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ])

    def not_a_model(input_shape, num_classes):
        return {"layers": 3}

    def broken(input_shape, num_classes):
        raise RuntimeError("out of ideas")
"""


def test_builder_function_gets_shape_classes_and_options(mnist_dataset, tmp_path):
    write_builder(tmp_path, BUILDER)
    art = build({"builder": "models/cnn.py:build", "options": {"width": 8}}, mnist_dataset, tmp_path)
    model = load_keras_model(art.path)
    assert model.count_params() == 784 * 8 + 8 + 8 * 10 + 10
    meta = read_model_meta(art.path)
    assert meta["output"] == "probabilities"  # softmax head: train must not use from_logits
    assert meta["source"] == {"builder": "cnn.py:build", "options": {"width": 8}}


def test_multi_input_builder_models_are_refused_clearly(mnist_dataset, tmp_path):
    write_builder(tmp_path, """
        import tf_keras as keras

        def build(input_shape, num_classes):
            a, b = keras.Input(shape=input_shape), keras.Input(shape=input_shape)
            joined = keras.layers.Flatten()(keras.layers.Concatenate()([a, b]))
            return keras.Model([a, b], keras.layers.Dense(num_classes)(joined))
    """)
    with pytest.raises(StepError, match=r"the model has 2 input\(s\) and 1 output\(s\).*"
                                        r"single-input, single-output models only") as failure:
        build({"builder": "models/cnn.py:build"}, mnist_dataset, tmp_path)
    assert "expects inputs of shape" not in str(failure.value)


def test_builder_file_is_a_cache_key_input(tmp_path):
    params = KERAS.params.model_validate({"builder": "models/cnn.py:build"}, context={"base_dir": tmp_path})
    assert KERAS.input_files(params) == {"builder": tmp_path / "models" / "cnn.py"}
    # the params themselves keep the relative reference, so moving the project keeps the key
    assert params.model_dump()["builder"] == "models/cnn.py:build"
    assert KERAS.input_files(KERAS.params.model_validate({"architecture": "mlp"})) == {}


@pytest.mark.parametrize(
    "reference, message",
    [
        ("models/missing.py:build", "builder file not found.*missing.py"),
        ("models/cnn.py:nope", "cnn.py defines no function 'nope'; it defines: broken, build, not_a_model"),
        ("models/cnn.py:not_a_model", "cnn.py:not_a_model returned builtins.dict, not a tf_keras Model"),
        ("models/cnn.py:broken", "cnn.py:broken.*raised RuntimeError: out of ideas"),
    ],
)
def test_builder_errors_name_the_file_and_function(mnist_dataset, tmp_path, reference, message):
    write_builder(tmp_path, BUILDER)
    with pytest.raises(StepError, match=message):
        build({"builder": reference}, mnist_dataset, tmp_path)


def test_builder_with_a_syntax_error(mnist_dataset, tmp_path):
    write_builder(tmp_path, "def build(:\n", name="bad.py")
    with pytest.raises(StepError, match="importing .*bad.py failed: SyntaxError"):
        build({"builder": "models/bad.py:build"}, mnist_dataset, tmp_path)


def test_builder_for_the_wrong_input_shape(mnist_dataset, tmp_path):
    write_builder(tmp_path, """
        import tf_keras as keras
        def build(input_shape, num_classes):
            return keras.Sequential([keras.layers.InputLayer(input_shape=(32, 32, 3)), keras.layers.Flatten(),
                                     keras.layers.Dense(num_classes)])
    """)
    with pytest.raises(StepError, match=r"expects inputs of shape \[32, 32, 3\].*provides \[28, 28, 1\]"):
        build({"builder": "models/cnn.py:build"}, mnist_dataset, tmp_path)


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "exactly one of architecture, builder or file"),
        ({"architecture": "basic-cnn", "builder": "m.py:f"}, "got architecture, builder"),
        ({"architecture": "resnet"}, "'basic-cnn', 'mlp', 'ds-cnn' or 'squeezenet'"),
        ({"builder": "models/cnn.py"}, 'must look like "models/cnn.py:build"'),
        ({"file": "model.pb"}, ".keras or .h5"),
        ({"file": "m.h5", "options": {"a": 1}}, "options apply to architecture or builder"),
    ],
)
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        KERAS.params.model_validate(params)


# -- saved model files ---------------------------------------------------------------


def _small_model(keras, lambda_layer: bool = False):
    layers = [keras.layers.InputLayer(input_shape=(28, 28, 1)), keras.layers.Flatten()]
    if lambda_layer:
        layers.append(keras.layers.Lambda(lambda t: t * 2.0))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_file_models_are_loaded_with_their_weights(mnist_dataset, tmp_path, suffix):
    keras = _tf.keras()
    model = _small_model(keras)
    path = tmp_path / f"given{suffix}"
    model.save(path)
    art = build({"file": path.name}, mnist_dataset, tmp_path)
    x = load_dataset_x(mnist_dataset)
    np.testing.assert_array_equal(load_keras_model(art.path).predict(x, verbose=0), model.predict(x, verbose=0))
    assert read_model_meta(art.path)["source"] == {"file_format": suffix.lstrip(".")}
    assert art.metrics["source"] == {"file": path.name}  # the name is reported, not stored
    # the key holds the file's content, not its name: a renamed copy gives the same bytes
    renamed = tmp_path / f"renamed-copy{suffix}"
    renamed.write_bytes(path.read_bytes())
    again = build({"file": renamed.name}, mnist_dataset, tmp_path, name="renamed")
    assert again.digest == art.digest and file_bytes(again) == file_bytes(art)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_file_with_a_python_lambda_is_refused(mnist_dataset, tmp_path, suffix):
    keras = _tf.keras()
    _small_model(keras, lambda_layer=True).save(tmp_path / f"lambda{suffix}")
    with pytest.raises(StepError, match=f"lambda{suffix}: layer 'lambda' is a Lambda layer.*builder = "):
        build({"file": f"lambda{suffix}"}, mnist_dataset, tmp_path)


def test_missing_model_file(mnist_dataset, tmp_path):
    with pytest.raises(StepError, match="model file not found.*absent.h5"):
        build({"file": "absent.h5"}, mnist_dataset, tmp_path)


# -- the keras-model artifact format ----------------------------------------------------


def test_saving_is_byte_deterministic_and_round_trips(basic_cnn, tmp_path):
    model = load_keras_model(basic_cnn.path)
    save_keras_model(model, tmp_path / "a")
    save_keras_model(model, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(basic_cnn.files)  # save(load(artifact)) == artifact, file for file
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
        if rel != "meta.json":  # meta records the step's extra facts (source, ...)
            assert (tmp_path / "a" / rel).read_bytes() == (basic_cnn.path / rel).read_bytes(), rel
    assert not any(name.endswith((".pkl", ".pickle", ".keras", ".h5")) for name in files)


def test_artifact_with_a_python_lambda_is_refused(tmp_path):
    keras = _tf.keras()
    save_keras_model(_small_model(keras, lambda_layer=True), tmp_path)
    with pytest.raises(StepError, match="model.json: layer 'lambda' is a Lambda layer"):
        load_keras_model(tmp_path)


def test_corrupt_artifacts_are_step_errors(basic_cnn, tmp_path):
    with pytest.raises(StepError, match="incomplete.*model.json"):
        load_keras_model(tmp_path)
    target = tmp_path / "copy"
    save_keras_model(load_keras_model(basic_cnn.path), target)
    manifest = json.loads((target / "weights.json").read_text())
    (target / "weights.json").write_text(json.dumps(manifest[:-1]))
    with pytest.raises(StepError, match="layer 'dense' has 2 weights but the manifest lists 1"):
        load_keras_model(target)


def test_every_declared_built_in_has_a_builder():
    from tinybuild_plugins.keras.architectures import ARCHITECTURES
    from tinybuild_plugins.keras.models import BUILT_INS

    assert set(BUILT_INS) == set(ARCHITECTURES)


def test_an_image_architecture_on_feature_vectors_is_a_step_error(tmp_path):
    from tinybuild_plugins.data.datasets import NPZ

    np.savez(tmp_path / "d.npz", x=np.zeros((20, 16), np.float32), y=np.arange(20) % 2)
    vectors = run_step(NPZ, params={"file": "d.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "ds")
    with pytest.raises(StepError, match=r"'ds-cnn' cannot be built for inputs of shape \[16\]"):
        build({"architecture": "ds-cnn"}, vectors, tmp_path)
    mlp = build({"architecture": "mlp", "options": {"hidden": [4]}}, vectors, tmp_path, name="mlp")
    assert load_keras_model(mlp.path).output_shape == (None, 2)


def test_a_sequential_builder_with_a_custom_layer_class_round_trips(mnist_dataset, tmp_path):
    write_builder(tmp_path, """
        import tf_keras as keras

        class Double(keras.layers.Layer):
            def call(self, x):
                return 2.0 * x

        def build(input_shape, num_classes):
            return keras.Sequential([keras.layers.InputLayer(input_shape=input_shape), Double(),
                                     keras.layers.Flatten(), keras.layers.Dense(num_classes)])
    """)
    # the artifact records "call this builder" (tests/plugins/test_custom_layers.py has the details)
    art = build({"builder": "models/cnn.py:build"}, mnist_dataset, tmp_path)
    assert "builder.py" in art.files and '"TinybuildBuilderLayer"' in (art.path / "model.json").read_text()
    model = load_keras_model(art.path)
    assert type(model.layers[0]).__name__ == "Double"
    x = np.ones((1, 28, 28, 1), np.float32)
    np.testing.assert_allclose(model.layers[0](x).numpy(), 2.0 * x)
