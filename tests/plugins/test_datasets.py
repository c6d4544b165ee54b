"""The idx and npz dataset step types: parsing, splitting, scaling, errors.

Pure NumPy: nothing here imports TensorFlow (and one test proves that
importing every model plugin module does not either).
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins.sdk.dataset import load_dataset
from tinybuild_plugins.data.idx import read_idx, write_idx
from tinybuild_plugins.data.datasets import IDX, NPZ, Split, split_indices

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
LABELS = REPO / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"


def idx_bytes(type_code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built by hand from the format description, not by our writer."""
    return struct.pack(">HBB", 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def make_npz(path: Path, x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> Path:
    np.savez(path, x=x, y=y, **extra)
    return path


# -- IDX parsing ----------------------------------------------------------------


def test_real_mnist_files_parse_with_their_documented_header():
    images, labels = read_idx(IMAGES), read_idx(LABELS)
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    raw = gzip.decompress(IMAGES.read_bytes())
    assert struct.unpack(">I", raw[:4])[0] == 0x00000803  # magic of idx3-ubyte
    assert images.reshape(-1)[:16].tolist() == list(raw[16:32])
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits
    assert set(np.unique(labels).tolist()) == set(range(10))


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_hand_made_idx_file_round_trips(tmp_path, compress):
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(0x08, (2, 3, 4), values.tobytes())
    path = tmp_path / "tiny.idx"  # no .gz suffix: compression is detected by content
    path.write_bytes(gzip.compress(data) if compress else data)
    np.testing.assert_array_equal(read_idx(path), values)


def test_big_endian_types_are_decoded(tmp_path):
    floats = np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=">f4")
    (tmp_path / "f.idx").write_bytes(idx_bytes(0x0D, (2, 2), floats.tobytes()))
    shorts = np.array([-2, 300, 7], dtype=">i2")
    (tmp_path / "s.idx").write_bytes(idx_bytes(0x0B, (3,), shorts.tobytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats.astype(np.float32))
    assert read_idx(tmp_path / "s.idx").tolist() == [-2, 300, 7]


def test_writer_output_is_read_back(tmp_path):
    arr = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    write_idx(tmp_path / "a.idx.gz", arr, compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz"), arr)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "two zero bytes"),
        (idx_bytes(0x42, (2,), b"\0\0"), "unknown IDX data type code 0x42"),
        (idx_bytes(0x08, (10, 10), b"\0" * 99), "truncated"),
        (b"\0\0\x08\x03\0\0", "truncated IDX header"),
        (b"\0\0", "only 2 bytes"),
        (b"\x1f\x8b garbage", "cannot be decompressed"),
    ],
    ids=["png", "type-code", "short-data", "short-header", "tiny", "bad-gzip"],
)
def test_bad_idx_files_are_step_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken-images.idx"
    path.write_bytes(content)
    with pytest.raises(StepError, match=message) as info:
        read_idx(path)
    assert "broken-images.idx" in str(info.value)


def test_idx_step_names_a_missing_file(tmp_path):
    with pytest.raises(StepError, match="not found.*nope.gz"):
        run_step(IDX, params={"images": "nope.gz", "labels": str(LABELS)}, recipe_dir=tmp_path, out_dir=tmp_path / "o")


def test_images_and_labels_of_different_lengths_are_a_step_error(tmp_path):
    write_idx(tmp_path / "labels.idx", np.zeros(5, np.uint8))
    with pytest.raises(StepError, match="10000 samples.*5 labels"):
        run_step(IDX, params={"images": str(IMAGES), "labels": "labels.idx"}, recipe_dir=tmp_path, out_dir=tmp_path / "o")


# -- the idx step on MNIST -----------------------------------------------------


def test_idx_step_builds_the_dataset_artifact(tmp_path):
    art = run_step(IDX, params={"images": str(IMAGES), "labels": str(LABELS), "limit": 1000},
                   out_dir=tmp_path / "o", seed=3)
    data = load_dataset(art.path)
    assert {s: len(data.y[s]) for s in ("train", "val", "test")} == {"train": 700, "val": 100, "test": 200}
    assert data.x["train"].shape == (700, 28, 28, 1) and data.x["train"].dtype == np.float32
    assert data.y["train"].dtype == np.int64
    assert 0.0 <= data.x["train"].min() and data.x["train"].max() == 1.0
    meta = data.meta
    assert meta["input_shape"] == [28, 28, 1] and meta["num_classes"] == 10
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["normalization"] == {"scale": "unit", "divisor": 255.0}
    assert meta["source"] == {"format": "idx", "samples": 1000, "limit": 1000, "dtype": "uint8"}
    assert art.metrics["source"] == {"format": "idx", "images": IMAGES.name, "labels": LABELS.name}
    assert str(REPO) not in (art.path / "meta.json").read_text()
    assert art.metrics["train_samples"] == 700


@pytest.mark.parametrize("step", ["idx", "npz"])
def test_renamed_data_files_give_the_same_artifact_bytes(tmp_path, step):
    """The cache key holds the data files' content, not their names: a renamed
    file reuses the cached artifact, so a fresh build must write the same bytes."""
    if step == "idx":
        for folder, names in (("a", ("images.gz", "labels.gz")), ("b", ("renamed-x.gz", "renamed-y.gz"))):
            (tmp_path / folder).mkdir()
            for source, name in zip((IMAGES, LABELS), names):
                (tmp_path / folder / name).write_bytes(source.read_bytes())
        runs = [run_step(IDX, params={"images": f"{folder}/{i}", "labels": f"{folder}/{l}", "limit": 200},
                         recipe_dir=tmp_path, out_dir=tmp_path / f"out_{folder}")
                for folder, (i, l) in (("a", ("images.gz", "labels.gz")), ("b", ("renamed-x.gz", "renamed-y.gz")))]
    else:
        make_npz(tmp_path / "first.npz", np.arange(40, dtype=np.float32).reshape(20, 2) / 40, np.arange(20) % 2)
        (tmp_path / "second.npz").write_bytes((tmp_path / "first.npz").read_bytes())
        runs = [run_step(NPZ, params={"file": name}, recipe_dir=tmp_path, out_dir=tmp_path / f"out_{name}")
                for name in ("first.npz", "second.npz")]
    first, second = runs
    assert first.digest == second.digest
    for name in first.files:
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes(), name
    assert first.metrics["source"] != second.metrics["source"]  # the names are still reported


def test_limit_keeps_the_first_samples_and_splits_are_disjoint(tmp_path):
    n = 200
    x = np.arange(n, dtype=np.float32).reshape(n, 1) / n  # feature = sample index / n
    y = np.arange(n) % 4
    make_npz(tmp_path / "d.npz", x, y)
    art = run_step(NPZ, params={"file": "d.npz", "limit": 150, "scale": "none"}, recipe_dir=tmp_path,
                   out_dir=tmp_path / "o")
    data = load_dataset(art.path)
    ids = {s: np.rint(data.x[s][:, 0] * n).astype(int) for s in ("train", "val", "test")}
    every = np.concatenate(list(ids.values()))
    assert sorted(every.tolist()) == list(range(150))  # the first 150, each exactly once
    for s in ids:  # labels still belong to their samples
        np.testing.assert_array_equal(data.y[s], ids[s] % 4)


def test_split_is_a_deterministic_function_of_the_seed():
    y = np.arange(1000) % 10
    fractions = Split(train=0.6, val=0.2, test=0.2)
    a = split_indices(y, fractions, 7, stratify=False)
    b = split_indices(y, fractions, 7, stratify=False)
    c = split_indices(y, fractions, 8, stratify=False)
    for s in a:
        np.testing.assert_array_equal(a[s], b[s])
    assert not np.array_equal(a["train"], c["train"])
    assert [len(a[s]) for s in ("train", "val", "test")] == [600, 200, 200]
    assert len(np.unique(np.concatenate(list(a.values())))) == 1000


def test_stratified_split_keeps_class_proportions():
    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(900, int), np.ones(100, int)])[rng.permutation(1000)]
    parts = split_indices(y, Split(train=0.8, val=0.1, test=0.1), 0, stratify=True)
    assert len(np.unique(np.concatenate(list(parts.values())))) == 1000
    for s, expected in (("train", 80), ("val", 10), ("test", 10)):
        assert int(y[parts[s]].sum()) == expected  # exactly 10% of each split is class 1


def test_same_recipe_gives_the_same_artifact_digest(tmp_path):
    params = {"images": str(IMAGES), "labels": str(LABELS), "limit": 500, "stratify": True}
    first = run_step(IDX, params=params, out_dir=tmp_path / "a")
    second = run_step(IDX, params=params, out_dir=tmp_path / "b")
    other_seed = run_step(IDX, params=params, out_dir=tmp_path / "c", seed=1)
    assert first.digest == second.digest
    assert first.digest != other_seed.digest


def test_standardization_statistics_come_from_the_train_split_only(tmp_path):
    art = run_step(IDX, params={"images": str(IMAGES), "labels": str(LABELS), "limit": 600,
                                "scale": "standardize"}, out_dir=tmp_path / "std")
    raw = run_step(IDX, params={"images": str(IMAGES), "labels": str(LABELS), "limit": 600,
                                "scale": "none"}, out_dir=tmp_path / "raw")
    std, plain = load_dataset(art.path), load_dataset(raw.path)
    norm = std.meta["normalization"]
    assert norm["scale"] == "standardize"
    assert norm["mean"][0] == pytest.approx(float(plain.x["train"].astype(np.float64).mean()), rel=1e-9)
    assert norm["std"][0] == pytest.approx(float(plain.x["train"].astype(np.float64).std()), rel=1e-9)
    all_pixels = np.concatenate([plain.x[s] for s in ("train", "val", "test")])
    assert norm["mean"][0] != pytest.approx(float(all_pixels.astype(np.float64).mean()), rel=1e-6)  # not the global mean
    assert float(std.x["train"].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(std.x["train"].std()) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(std.x["test"], (plain.x["test"] - norm["mean"][0]) / norm["std"][0], atol=1e-5)


# -- the npz step ----------------------------------------------------------------


def test_npz_with_one_hot_labels_and_class_names(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    labels = np.arange(40) % 3
    make_npz(tmp_path / "d.npz", x, np.eye(3, dtype=np.float32)[labels], class_names=np.array(["cat", "dog", "owl"]))
    art = run_step(NPZ, params={"file": "d.npz", "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
                   recipe_dir=tmp_path, out_dir=tmp_path / "o")
    data = load_dataset(art.path)
    assert data.meta["class_names"] == ["cat", "dog", "owl"]
    assert data.meta["input_shape"] == [8, 8]
    assert sorted(np.concatenate(list(data.y.values())).tolist()) == sorted(labels.tolist())


def test_npz_samples_keep_their_shape_unless_a_channel_axis_is_asked_for(tmp_path):
    """3-D npz arrays are not necessarily images: (N, T, F) time series and
    (N, 8, 1) columns must arrive as stored; add_channel_axis opts in."""
    rng = np.random.default_rng(0)
    shapes = {"series": (30, 16, 3), "column": (30, 8, 1), "images": (30, 8, 8)}
    for name, shape in shapes.items():
        make_npz(tmp_path / f"{name}.npz", rng.random(shape, dtype=np.float32), np.arange(30) % 3)
    for name, shape in shapes.items():
        art = run_step(NPZ, params={"file": f"{name}.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / name)
        assert load_dataset(art.path).meta["input_shape"] == list(shape[1:]), name
        assert load_dataset(art.path).x["train"].shape[1:] == shape[1:], name
    images = run_step(NPZ, params={"file": "images.npz", "add_channel_axis": True}, recipe_dir=tmp_path,
                      out_dir=tmp_path / "with_axis")
    data = load_dataset(images.path)
    assert data.meta["input_shape"] == [8, 8, 1] and data.x["test"].shape[1:] == (8, 8, 1)


def test_idx_images_get_a_channel_axis(tmp_path):
    write_idx(tmp_path / "i.idx", np.zeros((20, 5, 6), np.uint8))
    write_idx(tmp_path / "l.idx", (np.arange(20) % 2).astype(np.uint8))
    art = run_step(IDX, params={"images": "i.idx", "labels": "l.idx"}, recipe_dir=tmp_path, out_dir=tmp_path / "o")
    assert load_dataset(art.path).meta["input_shape"] == [5, 6, 1]


def test_npz_class_names_param_and_out_of_range_labels(tmp_path):
    make_npz(tmp_path / "d.npz", np.zeros((10, 4), np.float32), np.arange(10) % 5)
    with pytest.raises(StepError, match="label 4 found but only 2 class names"):
        run_step(NPZ, params={"file": "d.npz", "class_names": ["a", "b"]}, recipe_dir=tmp_path, out_dir=tmp_path / "o")


def test_npz_never_unpickles(tmp_path):
    np.savez(tmp_path / "evil.npz", x=np.array([object(), object()], dtype=object), y=np.array([0, 1]))
    with pytest.raises(StepError, match="without pickle"):
        run_step(NPZ, params={"file": "evil.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "o")


def test_npz_missing_array_lists_what_is_there(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(StepError, match="no array named 'x'.*images, y"):
        run_step(NPZ, params={"file": "d.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "o")


def test_npz_that_is_not_an_archive(tmp_path):
    (tmp_path / "d.npz").write_text("hello")
    with pytest.raises(StepError, match="d.npz"):
        run_step(NPZ, params={"file": "d.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "o")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint64])
def test_unit_scale_refuses_integers_wider_than_16_bits(tmp_path, dtype):
    """0..255 pixels stored as int64 (NumPy's default integer) would be divided
    by 9.2e18 and end up in [0, 2.8e-17]: refuse, and say how to fix it."""
    x = np.random.default_rng(0).integers(0, 256, size=(20, 4)).astype(dtype)
    make_npz(tmp_path / "d.npz", x, np.arange(20) % 2)
    with pytest.raises(StepError, match=r"values in \[\d+, 2\d\d\].*uint8.*x\.astype\(np\.uint8\).*"
                                        r'scale = "standardize" or "none"'):
        run_step(NPZ, params={"file": "d.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "o")
    wide = make_npz(tmp_path / "w.npz", (x.astype(np.int64) * 100).astype(dtype), np.arange(20) % 2)
    with pytest.raises(StepError, match=r"x\.astype\(np\.uint16\)"):
        run_step(NPZ, params={"file": wide.name}, recipe_dir=tmp_path, out_dir=tmp_path / "w")
    # the fixes the message suggests work
    for params in ({"scale": "none"}, {"scale": "standardize"}):
        run_step(NPZ, params={"file": "d.npz", **params}, recipe_dir=tmp_path, out_dir=tmp_path / params["scale"])


@pytest.mark.parametrize("dtype, divisor", [(np.uint8, 255.0), (np.uint16, 65535.0), (np.int16, 32767.0)])
def test_unit_scale_divides_8_and_16_bit_integers_by_their_maximum(tmp_path, dtype, divisor):
    x = np.full((10, 2), 51, dtype=dtype)
    make_npz(tmp_path / "d.npz", x, np.arange(10) % 2)
    data = load_dataset(run_step(NPZ, params={"file": "d.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "o").path)
    assert data.meta["normalization"] == {"scale": "unit", "divisor": divisor}
    np.testing.assert_allclose(data.x["train"], np.float32(51) / np.float32(divisor))


def test_unit_scale_refuses_float_data_outside_0_1(tmp_path):
    make_npz(tmp_path / "d.npz", np.linspace(-3, 3, 20, dtype=np.float32).reshape(10, 2), np.zeros(10, int))
    with pytest.raises(StepError, match='use scale = "standardize"'):
        run_step(NPZ, params={"file": "d.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "o")


# -- params ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, message",
    [
        ({"split": {"train": 0.5, "val": 0.2, "test": 0.2}}, "sum to 1"),
        ({"split": {"train": 0.5, "valid": 0.5}}, "valid"),
        ({"limit": 0}, "greater than or equal to 1"),
        ({"scale": "minmax"}, "none"),
        ({"class_names": ["a", "a"]}, "distinct"),
        ({"shuffle": True}, "shuffle"),
    ],
)
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        IDX.params.model_validate({"images": "i", "labels": "l", **params})


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path):
    params = IDX.params.model_validate({"images": "data/i.gz", "labels": "l.gz"}, context={"base_dir": tmp_path})
    assert params.images == tmp_path / "data" / "i.gz"


def test_importing_plugin_modules_does_not_import_tensorflow():
    modules = ["data.datasets", "keras.models", "keras.train", "keras.prune", "keras.qat", "keras.cluster",
               "sdk.keras_model", "keras.fit", "keras.tfmot_layers", "keras.architectures", "data.idx",
               "sdk.dataset", "sdk.tf"]
    code = (
        "import sys\n"
        + "".join(f"import tinybuild_plugins.{m}\n" for m in modules)
        + "from tinybuild_plugins.data import datasets\n"
        + "from tinybuild_plugins.keras import models, train, prune, qat, cluster\n"
        + "for m in (datasets, models, train, prune, qat, cluster): m.tinybuild_step_types()\n"
        + "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization'))\n"
        + "print(json.dumps(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True,
                            check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
