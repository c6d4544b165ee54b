"""Model files from outside never run code and never unpack past the limit.

tf_keras' safe mode only refuses marshalled lambdas: its deserializer
imports any ``module`` a config names. These tests plant such configs (in a
``.keras`` archive's config.json, an ``.h5`` file's ``model_config``, a
keras-model artifact's ``model.json``), naming a harmless module made here
that leaves a marker file when imported, and check the load is refused
*before* the import. They also plant HDF5 decompression bombs, links and
external storage, and check that ordinary models still load.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from tinybuild.api import StepError
from tinybuild_plugins.keras import model_file, models
from tinybuild_plugins.keras.architectures import ARCHITECTURES
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.keras_model import load_keras_model, save_keras_model

WHERE = "model 'model'"


def _refusal(path: Path, match: str = "") -> str:
    """The message with which loading the model file at ``path`` is refused."""
    with pytest.raises(StepError, match=match) as info:
        models.from_file(path, WHERE)
    return str(info.value)
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """A module name whose import writes ``imported.txt``; returns (name, marker path)."""
    name = f"tb_marker_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(tmp_path / 'imported.txt')!r}).write_text('imported')\n"
        "def f(*args, **kwargs):\n    return args[0] if args else None\n"
        "class C:\n    @classmethod\n    def from_config(cls, config):\n        return cls()\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    yield name, tmp_path / "imported.txt"
    sys.modules.pop(name, None)


def _dense_model():
    keras = _tf.keras()
    return keras.Sequential([keras.layers.InputLayer(input_shape=(4,)), keras.layers.Dense(3, name="dense")])


def _lambda_model():
    keras = _tf.keras()
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, name="dense")(keras.layers.Lambda(lambda t: t * 2.0, name="lambda")(inputs))
    return keras.Model(inputs, outputs)


def _rewrite_keras_config(path: Path, edit) -> None:
    """Re-zip ``path`` with ``edit(config)`` applied to its config.json."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _rewrite_h5_config(path: Path, edit) -> None:
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)


def _layer(config, name):
    layers = config["config"]["layers"]
    return next(layer for layer in layers if layer["config"]["name"] == name)


def _poc_lambda(module):
    """The reviewer's PoC: a Lambda whose function is named by module."""
    def edit(config):
        inner = _layer(config, "lambda")["config"]
        inner["function"] = {"module": module, "class_name": "function", "config": "f", "registered_name": "f"}
        inner["function_type"] = "function"
    return edit


# -- code in configs ------------------------------------------------------------------------------


def _model_module(module):
    """The model's own class named by module: tf_keras imports it to find the class."""
    def edit(config):
        config["module"] = module
    return edit


def _planted_artifact(folder: Path, make, edit) -> Path:
    save_keras_model(make(), folder)
    architecture = json.loads((folder / "model.json").read_text())
    edit(architecture)
    (folder / "model.json").write_text(json.dumps(architecture))
    return folder


#: (format, plant) pairs through which tf_keras 2.x really imports the named
#: module in safe mode (measured below); other plants are refused all the same
IMPORTING = [(".keras", "lambda"), (".keras", "model module"), ("model.json", "lambda")]


def _plant(tmp_path: Path, fmt: str, plant: str, module: str) -> Path:
    make = _lambda_model if plant == "lambda" else _dense_model
    edit = {"lambda": _poc_lambda, "model module": _model_module}.get(plant) or MODULE_PLANTS[plant]
    if fmt == "model.json":
        return _planted_artifact(tmp_path / "art", make, edit(module))
    path = tmp_path / f"planted{fmt}"
    make().save(path)
    (_rewrite_keras_config if fmt == ".keras" else _rewrite_h5_config)(path, edit(module))
    return path


@pytest.mark.parametrize("fmt,plant", IMPORTING, ids=[f"{f}-{p}" for f, p in IMPORTING])
def test_the_planted_module_really_is_imported_by_tf_keras_safe_mode(tmp_path, marker, fmt, plant):
    """The hole itself: without tinybuild's check, safe mode imports the module."""
    from tf_keras.src.saving import serialization_lib

    name, imported = marker
    path = _plant(tmp_path, fmt, plant, name)
    try:
        with serialization_lib.SafeModeScope(True):
            if fmt == "model.json":
                _tf.keras().models.model_from_json((path / "model.json").read_text())
            else:
                _tf.keras().models.load_model(path, compile=False, safe_mode=True)
    except Exception:
        pass  # whatever happens next, the import has already run
    assert imported.exists()


@pytest.mark.parametrize("fmt,plant", IMPORTING, ids=[f"{f}-{p}" for f, p in IMPORTING])
def test_a_planted_module_is_refused_before_the_import(tmp_path, marker, fmt, plant):
    name, imported = marker
    path = _plant(tmp_path, fmt, plant, name)
    with pytest.raises(StepError) as info:
        models.from_file(path, WHERE) if fmt != "model.json" else load_keras_model(path)
    message = str(info.value)
    layer = "lambda'" if plant == "lambda" else "sequential"  # the model itself, for its own module
    for words in (str(path), f"layer '{layer}", f"module '{name}'", 'builder = "file.py:function"'):
        assert words in message, message
    assert not imported.exists() and name not in sys.modules


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_lambda_naming_a_module_is_refused_before_the_import(tmp_path, marker, suffix):
    name, imported = marker
    path = tmp_path / f"poc{suffix}"
    _lambda_model().save(path)
    (_rewrite_keras_config if suffix == ".keras" else _rewrite_h5_config)(path, _poc_lambda(name))
    message = _refusal(path)
    for words in (str(path), "layer 'lambda'", f"module '{name}'", "'f'", 'builder = "file.py:function"'):
        assert words in message, message
    assert not imported.exists() and name not in sys.modules


def test_the_reviewers_os_system_poc_is_refused(tmp_path):
    """poc2: ``{"module": "os", "class_name": "function", "config": "system"}``."""
    path = tmp_path / "poc2.keras"
    _lambda_model().save(path)
    _rewrite_keras_config(path, _poc_lambda("os"))

    def to_system(config):
        _layer(config, "lambda")["config"]["function"]["config"] = "system"
    _rewrite_keras_config(path, to_system)
    _refusal(path, match=r"poc2.keras: layer 'lambda' names module 'os' \(for 'system'\)")


def _initializer(module):
    def edit(config):
        _layer(config, "dense")["config"]["kernel_initializer"] = {
            "module": module, "class_name": "C", "config": {}, "registered_name": None}
    return edit


def _activation(module):
    def edit(config):
        _layer(config, "dense")["config"]["activation"] = {
            "module": module, "class_name": "function", "config": "f", "registered_name": "f"}
    return edit


def _layer_module(module):
    def edit(config):
        _layer(config, "dense")["module"] = module
    return edit


#: config edits that name the marker module from places other than a Lambda
MODULE_PLANTS = {"initializer": _initializer, "activation": _activation, "layer module": _layer_module}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("plant", sorted(MODULE_PLANTS))
def test_any_config_naming_a_foreign_module_is_refused_before_the_import(tmp_path, marker, suffix, plant):
    name, imported = marker
    path = tmp_path / f"planted{suffix}"
    _dense_model().save(path)
    (_rewrite_keras_config if suffix == ".keras" else _rewrite_h5_config)(path, MODULE_PLANTS[plant](name))
    message = _refusal(path)
    for words in (str(path), "layer 'dense'", f"module '{name}'"):
        assert words in message, message
    assert not imported.exists() and name not in sys.modules


def _set(key, value):
    def edit(config):
        _layer(config, "dense")[key] = value
    return edit


def _builtins_function(config):
    """A "builtins" function: tf_keras falls back to vars(builtins), e.g. exec."""
    _layer(config, "dense")["config"]["activation"] = {
        "module": "builtins", "class_name": "function", "config": "exec", "registered_name": "exec"}


def _keras_function(config):
    _layer(config, "dense")["config"]["activation"] = {
        "module": "keras.layers", "class_name": "function", "config": "deserialize"}


def _typespec(config):
    _layer(config, "dense")["config"]["kernel_initializer"] = {
        "class_name": "__typespec__", "spec_name": "C", "module": "keras.layers", "registered_name": None,
        "config": []}


@pytest.mark.parametrize("edit,words", [
    (_set("registered_name", "Custom>Scale"), "registered object 'Custom>Scale'"),
    (_typespec, "holds a '__typespec__' object"),
    (_set("class_name", "Custom>Scale"), "names the class 'Custom>Scale'"),
    (_builtins_function, "module 'builtins'"),
    (_keras_function, "holds a 'function' object ('deserialize')"),
    (_set("function_type", "function"), "has a 'function_type' entry"),
], ids=["registered_name", "typespec", "registered class_name", "builtins function", "keras function", "function_type"])
def test_registered_objects_and_functions_are_refused(tmp_path, edit, words):
    path = tmp_path / "odd.keras"
    _dense_model().save(path)
    _rewrite_keras_config(path, edit)
    message = _refusal(path, match="odd.keras: layer 'dense' .*builder")
    assert words in message, message


def test_an_artifact_model_json_naming_a_module_is_refused_before_the_import(tmp_path, marker):
    """A keras-model artifact (e.g. pulled from a remote cache) gets the same check."""
    name, imported = marker
    save_keras_model(_dense_model(), tmp_path / "art")
    architecture = json.loads((tmp_path / "art" / "model.json").read_text())
    _initializer(name)(architecture)
    (tmp_path / "art" / "model.json").write_text(json.dumps(architecture))
    with pytest.raises(StepError, match=rf"model.json: layer 'dense' names module '{name}'"):
        load_keras_model(tmp_path / "art")
    assert not imported.exists() and name not in sys.modules


# -- what must still load ----------------------------------------------------------------------------------


def _residual_model():
    """Functional, residual, BatchNorm, GAP, regularizer, constraint, swish."""
    keras = _tf.keras()
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", kernel_regularizer=keras.regularizers.l2(1e-4),
                            kernel_constraint=keras.constraints.MaxNorm(2))(inputs)
    x = keras.layers.BatchNormalization()(x)
    y = keras.layers.Conv2D(4, 3, padding="same", activation="swish",
                            kernel_initializer=keras.initializers.HeNormal(seed=1))(keras.layers.ReLU()(x))
    x = keras.layers.Add()([x, y])
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Dropout(0.1)(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def _compiled_model():
    keras = _tf.keras()
    model = _dense_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def _tf_ops_model():
    """TensorFlow ops on Keras tensors (TFOpLambda and SlicingOpLambda layers): x * 2, tf.math.sin, x[:, :3],
    tf.reshape, tf.reduce_mean: common in functional models, and pure tensor math."""
    keras = _tf.keras()
    tf = _tf.tensorflow()
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3)(inputs * 2.0 + tf.math.sin(inputs))
    x = tf.reshape(x, (-1, 10 * 10 * 4))[:, :64]
    x = x - tf.reduce_mean(x, axis=1, keepdims=True)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


NORMAL = {**{name: (lambda name=name: ARCHITECTURES[name]([28, 28, 1], 10, {})) for name in ARCHITECTURES},
          "residual": _residual_model, "compiled": _compiled_model, "tf-ops": _tf_ops_model}


@pytest.mark.parametrize("symbol", ["io.write_file", "py_function", "numpy_function", "raw_ops.WriteFile",
                                    "compat.v1.py_func", "print", "debugging.assert_equal", "math..sin", 7])
def test_a_tf_op_layer_calling_anything_but_tensor_math_is_refused(tmp_path, symbol):
    path = tmp_path / "ops.keras"
    _tf_ops_model().save(path)

    def edit(config):
        op = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "TFOpLambda")
        op["config"]["function"] = symbol

    _rewrite_keras_config(path, edit)
    _refusal(path, match="TensorFlow op layer calling")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("kind", sorted(NORMAL))
def test_ordinary_model_files_still_load(tmp_path, kind, suffix):
    model = NORMAL[kind]()
    path = tmp_path / f"{kind}{suffix}"
    model.save(path)
    loaded = models.from_file(path, WHERE)
    x = np.random.default_rng(0).random((2, *model.input_shape[1:]), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_a_functional_model_saved_by_keras_2_15_still_loads(tmp_path):
    """Keras 2.13-2.15 name the functional class's module keras.src.engine.functional."""
    model = _residual_model()
    path = tmp_path / "old.keras"
    model.save(path)

    def as_keras_2_15(config):
        assert config["module"] == "tf_keras.src.engine.functional"
        config["module"] = "keras.src.engine.functional"
    _rewrite_keras_config(path, as_keras_2_15)
    x = np.random.default_rng(0).random((2, 12, 12, 1), dtype=np.float32)
    np.testing.assert_allclose(models.from_file(path, WHERE).predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)


def test_a_shared_object_id_does_not_hide_a_node_from_the_check():
    """tf_keras returns an earlier object for a repeated shared_object_id without
    looking at the node: the check looks at every node anyway."""
    from tinybuild_plugins.sdk.keras_config_check import check_config

    config = json.loads(_residual_model().to_json())
    dense = config["config"]["layers"][-1]["config"]
    dense["kernel_initializer"] = {**dense["kernel_initializer"], "shared_object_id": 1}
    dense["bias_initializer"] = {**dense["kernel_initializer"], "module": "subprocess"}
    with pytest.raises(StepError, match="names module 'subprocess'"):
        check_config(config, WHERE, "m.keras")


def test_tfmot_wrapped_artifacts_still_load(tmp_path):
    mot = _tf.tfmot()
    keras = _tf.keras()

    def small():
        return keras.Sequential([keras.layers.InputLayer(input_shape=(8, 8, 1)), keras.layers.Conv2D(2, 3),
                                 keras.layers.Flatten(), keras.layers.Dense(3)])
    wrapped = {
        "qat": mot.quantization.keras.quantize_model(small()),
        "pruned": mot.sparsity.keras.prune_low_magnitude(small()),
        "clustered": mot.clustering.keras.cluster_weights(small(), number_of_clusters=2),
    }
    for name, model in wrapped.items():
        save_keras_model(model, tmp_path / name)
        assert len(load_keras_model(tmp_path / name).layers) == len(model.layers), name


# -- decompression bombs and odd HDF5 -------------------------------------------------------------------


def _plant_h5(path: Path, plant) -> None:
    with h5py.File(path, "r+") as f:
        plant(f)


def _bomb(f):
    """8 MB of zeros in a few KB: a chunked, gzip-compressed fill value."""
    group = f.require_group("model_weights") if "model_weights" in f else f
    group.create_dataset("bomb", shape=(2_000_000,), dtype="float32", chunks=(100_000,), compression="gzip",
                         fillvalue=0)


def _keras_weights(path: Path, plant) -> None:
    """Apply ``plant`` to the .keras archive's model.weights.h5 and re-zip."""
    folder = path.parent / "unzipped"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
    _plant_h5(folder / "model.weights.h5", plant)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member in sorted(folder.iterdir()):
            archive.write(member, member.name)
    shutil.rmtree(folder)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_an_hdf5_decompression_bomb_is_refused_before_loading(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"bomb{suffix}"
    _dense_model().save(path)
    (_keras_weights if suffix == ".keras" else _plant_h5)(path, _bomb)
    assert path.stat().st_size < 64 << 10
    monkeypatch.setattr(model_file, "MAX_MODEL_BYTES", 4 << 20)

    def never(*args, **kwargs):
        raise AssertionError("the loader was reached")
    monkeypatch.setattr(_tf.keras().models, "load_model", never)
    message = _refusal(path)
    for words in (str(path), "/bomb", "shape [2000000]", "over the limit of 4,194,304", "decompression bomb"):
        assert words in message, message


def _soft_link(f):
    f["alias"] = h5py.SoftLink(f[next(iter(f))].name)


def _external_link(f):
    f["elsewhere"] = h5py.ExternalLink("/etc/hostname", "/")


def _hard_link_twice(f):
    def first_dataset(group):
        for item in group.values():
            if isinstance(item, h5py.Dataset):
                return item
            found = first_dataset(item) if isinstance(item, h5py.Group) else None
            if found is not None:
                return found
    f["again"] = first_dataset(f)


def _external_storage(f):
    raw = Path(f.filename).parent / "raw.bin"
    raw.write_bytes(bytes(64))
    f.create_dataset("outside", shape=(16,), dtype="float32", external=[(str(raw), 0, 64)])


def _virtual(f):
    layout = h5py.VirtualLayout(shape=(16,), dtype="float32")
    layout[:] = h5py.VirtualSource("/etc/hostname", "data", shape=(16,))
    f.create_virtual_dataset("mapped", layout, fillvalue=0)


def _strings(f):
    f.create_dataset("words", data=np.array([b"a", b"b"], dtype=object), dtype=h5py.string_dtype())


@pytest.mark.parametrize("plant,words", [
    (_soft_link, "/alias is a SoftLink"),
    (_external_link, "/elsewhere is a ExternalLink"),
    (_hard_link_twice, "linked more than once"),
    (_external_storage, "dataset /outside keeps its data outside the file"),
    (_virtual, "dataset /mapped keeps its data outside the file"),
    (_strings, "dataset /words holds object values"),
], ids=["soft link", "external link", "hard link twice", "external storage", "virtual", "strings"])
def test_hdf5_links_and_storage_keras_never_writes_are_refused(tmp_path, plant, words):
    path = tmp_path / "odd.h5"
    _dense_model().save(path)
    _plant_h5(path, plant)
    message = _refusal(path, match="odd.h5: ")
    assert words in message, message


def test_a_keras_archive_with_unexpected_members_is_refused(tmp_path):
    path = tmp_path / "extra.keras"
    _dense_model().save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("model.weights.npz", b"")
    _refusal(path, match=r"extra.keras is not a .keras model as tf_keras writes it: unexpected "
                         r"member\(s\) model.weights.npz")


def test_a_keras_archive_with_a_duplicate_member_is_refused(tmp_path):
    """zipfile and other readers may pick different copies: the checked one must be the loaded one."""
    path = tmp_path / "twice.keras"
    _dense_model().save(path)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as archive:
        archive.writestr("config.json", b"{}")
    _refusal(path, match=r"twice.keras holds the member\(s\) config.json more than once")


def test_the_loader_reads_the_vetted_private_copy(tmp_path, monkeypatch):
    """What was checked is what is loaded: a copy named for its checked format, removed afterwards."""
    keras = _tf.keras()
    path = tmp_path / "given.h5"  # an .h5 file's content named .keras would be loaded as .h5, as checked
    _dense_model().save(path)
    named = tmp_path / "misnamed.keras"
    shutil.copyfile(path, named)
    loaded_from = []
    real_load = keras.models.load_model

    def spy(file, *args, **kwargs):
        loaded_from.append(Path(file))
        return real_load(file, *args, **kwargs)
    monkeypatch.setattr(keras.models, "load_model", spy)
    models.from_file(named, WHERE)
    assert loaded_from[0].name == "model.h5" and loaded_from[0].parent != tmp_path
    assert not loaded_from[0].exists()


def test_a_file_that_is_both_zip_and_hdf5_is_refused(tmp_path):
    path = tmp_path / "both.h5"
    _dense_model().save(path)
    keras_file = tmp_path / "m.keras"
    _dense_model().save(keras_file)
    path.write_bytes(path.read_bytes() + keras_file.read_bytes())
    _refusal(path, match="both.h5 is both a zip archive and an HDF5 file")


def test_a_huge_config_is_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "big.keras"
    _dense_model().save(path)
    monkeypatch.setattr(model_file, "MAX_CONFIG_BYTES", 100)
    _refusal(path, match=r"big.keras: config.json is [\d,]+ bytes, over the limit of 100")


def test_the_check_is_a_pure_json_walk_that_names_the_nested_layer():
    """Nested models (a Sequential inside a Functional): the innermost layer is named."""
    from tinybuild_plugins.sdk.keras_config_check import check_config

    config = json.loads(_residual_model().to_json())
    check_config(config, WHERE, "m.keras")  # a real config passes
    planted = copy.deepcopy(config)
    planted["config"]["layers"][-1]["config"]["bias_initializer"]["module"] = "subprocess"
    with pytest.raises(StepError, match=r"m.keras: layer 'dense\w*' names module 'subprocess'"):
        check_config(planted, WHERE, "m.keras")


def test_a_model_file_bigger_than_any_model_within_the_limits_is_refused_before_copying(tmp_path, monkeypatch):
    path = tmp_path / "huge.h5"
    _dense_model().save(path)
    monkeypatch.setattr(model_file, "MAX_MODEL_BYTES", 1000)
    monkeypatch.setattr(model_file, "MAX_CONFIG_BYTES", 1000)
    _refusal(path, match=r"model file .*huge.h5 is [\d,]+ bytes, over the limit of 2,000")


def test_a_lookup_layer_reading_a_vocabulary_file_is_refused():
    """StringLookup(vocabulary="/dev/zero") would read (and hang on) any path the config names."""
    from tinybuild_plugins.sdk.keras_config_check import check_config

    keras = _tf.keras()
    inline = keras.Sequential([keras.layers.InputLayer(input_shape=(1,), dtype="string"),
                               keras.layers.StringLookup(vocabulary=["a", "b"], name="lookup")])
    config = json.loads(inline.to_json())
    check_config(config, WHERE, "m.keras")  # an inline vocabulary is data, not a path
    _layer(config, "lookup")["config"]["vocabulary"] = "/dev/zero"
    with pytest.raises(StepError, match=r"m.keras: layer 'lookup' reads its vocabulary from the file '/dev/zero'"):
        check_config(config, WHERE, "m.keras")
