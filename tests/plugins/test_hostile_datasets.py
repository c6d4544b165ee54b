"""Hostile or broken data files given to the idx and npz steps: each is a
StepError naming the file and the problem, in seconds and bounded memory.

Bombs are rejected without decompressing them: the tests assert the time and
the peak of Python allocations (tracemalloc), which by design stay near the
size the file's header declares, not the size of the decompressed stream.
Pure NumPy, tiny files; no TensorFlow.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import run_step
from tinybuild_plugins.data.datasets import IDX, NPZ
from tinybuild_plugins.data.idx import read_idx
from tinybuild_plugins.data.npz import load_npz_arrays
from tinybuild_plugins.sdk.dataset import MAX_CLASSES

MIB = 1 << 20


def idx_header(type_code: int, dims: tuple[int, ...]) -> bytes:
    return struct.pack(">HBB", 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def gzip_bomb(path, head: bytes, gib: int = 2) -> None:
    """``head`` then ``gib`` GiB of zeros, as concatenated gzip members (a
    valid gzip file of ~2 MB per GiB, made in well under a second)."""
    member = gzip.compress(b"\0" * (16 * MIB), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(head, mtime=0))
        for _ in range(gib * 64):
            f.write(member)


class Budget:
    """Wall time and peak traced allocation of the block it wraps."""

    def __enter__(self):
        tracemalloc.start()
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.start
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def refused(fn, *words):
    with Budget() as budget, pytest.raises(StepError) as info:
        fn()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert budget.seconds < 5, budget.seconds
    assert budget.peak < 64 * MIB, f"peak {budget.peak:,} B"
    return message


# -- IDX headers and bombs ------------------------------------------------------

IDX_CASES = [
    ("255-dims", idx_header(0x08, (2,) * 255), "255 dimensions"),
    ("9-dims", idx_header(0x08, (1,) * 9), "9 dimensions"),
    ("dims-overflow-int64", idx_header(0x0E, (0xFFFFFFFF,) * 3), "limit"),
    ("dims-2-GiB", idx_header(0x08, (2, 1 << 30)), "limit"),
    ("declared-more-than-held", idx_header(0x08, (1000, 28, 28)) + b"\0" * 10, "truncated"),
]


@pytest.mark.parametrize("content,word", [c[1:] for c in IDX_CASES], ids=[c[0] for c in IDX_CASES])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_hostile_idx_headers(tmp_path, content, word, compress):
    path = tmp_path / "evil-images.idx"
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    refused(lambda: read_idx(path), str(path), word)


def test_gzip_bomb_with_a_small_header_stops_after_the_declared_size(tmp_path):
    path = tmp_path / "bomb-images.idx.gz"
    gzip_bomb(path, idx_header(0x08, (10, 28, 28)))  # 7,840 bytes declared, 2 GiB follow
    assert path.stat().st_size < 8 * MIB
    refused(lambda: read_idx(path), str(path), "decompression bomb")


def test_gzip_bomb_declaring_its_2_gib_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb-images.idx.gz"
    gzip_bomb(path, idx_header(0x08, (2048, 1024, 1024)))  # honest header: 2 GiB
    refused(lambda: read_idx(path), str(path), "limit")


def test_the_array_limit_is_one_documented_number(tmp_path, monkeypatch):
    """Under the limit loads; the same file over a lowered limit is refused."""
    from tinybuild_plugins.sdk import dataset

    path = tmp_path / "images.idx"
    path.write_bytes(idx_header(0x08, (4, 256)) + b"\1" * 1024)
    assert read_idx(path).shape == (4, 256)
    monkeypatch.setattr(dataset, "MAX_ARRAY_BYTES", 1000)
    refused(lambda: read_idx(path), str(path), "limit is 1,000 bytes")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_readers_refuse_special_files_without_hanging(tmp_path, kind):
    path = tmp_path / "special"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    refused(lambda: read_idx(path), str(path), "FIFO" if kind == "fifo" else "folder")
    refused(lambda: load_npz_arrays(path, ["x"]), str(path), "FIFO" if kind == "fifo" else "folder")


def write_idx_pair(tmp_path, images: bytes, labels: bytes):
    (tmp_path / "images.idx").write_bytes(images)
    (tmp_path / "labels.idx").write_bytes(labels)
    return {"images": "images.idx", "labels": "labels.idx"}


@pytest.mark.parametrize("label", [2**31 - 1, MAX_CLASSES], ids=["2^31-1", "max-classes"])
def test_idx_label_too_big_for_a_class_list(tmp_path, label):
    labels = np.array([0, 1, label, 2], dtype=">i4")
    params = write_idx_pair(tmp_path, idx_header(0x08, (4, 2, 2)) + bytes(16), idx_header(0x0C, (4,)) + labels.tobytes())
    refused(lambda: run_step(IDX, params=params, recipe_dir=tmp_path, out_dir=tmp_path / "o"),
            "labels.idx", f"label {label}", "10,000")


def test_idx_nan_samples(tmp_path):
    x = np.zeros((4, 2, 2), ">f4")
    x[1, 0, 0] = np.nan
    params = write_idx_pair(tmp_path, idx_header(0x0D, (4, 2, 2)) + x.tobytes(), idx_header(0x08, (4,)) + bytes(4))
    refused(lambda: run_step(IDX, params=params, recipe_dir=tmp_path, out_dir=tmp_path / "o"),
            "images.idx", "NaN")


# -- npz ------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npz_with(path, **members: bytes):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    return path


def fake_npy_header(shape, dtype="<f4") -> bytes:
    """A .npy header alone, declaring ``shape`` (its data is up to the caller)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


GOOD_X = np.zeros((4, 3), np.float32)
GOOD_Y = np.array([0, 1, 0, 1])


def run_npz(tmp_path, x=None, y=None, **extra):
    members = {"x": x if isinstance(x, bytes) else npy_bytes(GOOD_X if x is None else x),
               "y": y if isinstance(y, bytes) else npy_bytes(GOOD_Y if y is None else y)}
    members.update({k: npy_bytes(v) if isinstance(v, np.ndarray) else v for k, v in extra.items()})
    npz_with(tmp_path / "evil.npz", **members)
    return lambda: run_step(NPZ, params={"file": "evil.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "o")


NPZ_CASES = [
    ("0-d-samples", {"x": np.float32(1.0)}, "samples have shape []"),
    ("1-d-samples", {"x": np.zeros(4, np.float32)}, "samples have shape [4]"),
    ("complex-samples", {"x": GOOD_X + 1j}, "imaginary part"),
    ("object-samples", {"x": np.array([[{}]] * 4, dtype=object)}, "pickle"),
    ("structured-samples", {"x": np.zeros((4, 3), dtype=[("a", "<f4"), ("b", "<i4")])}, "structured"),
    ("text-samples", {"x": np.array([["a"]] * 4)}, "must be numeric"),
    ("datetime-samples", {"x": np.zeros((4, 3), "datetime64[s]")}, "must be numeric"),
    ("nan-samples", {"x": np.where(np.eye(4, 3) > 0, np.nan, 0).astype(np.float32)}, "NaN"),
    ("inf-samples", {"x": np.full((4, 3), np.inf, np.float64)}, "infinite"),
    ("label-2^31-1", {"y": np.array([0, 1, 2**31 - 1, 0])}, "10,000"),
    ("label-10^12", {"y": np.array([0, 1, 10**12, 0])}, "10,000"),
    ("label-uint64-max", {"y": np.array([0, 1, 2**64 - 1, 0], np.uint64)}, "10,000"),
    ("label-float-1e300", {"y": np.array([0, 1, 1e300, 0])}, "10,000"),
    ("label-nan", {"y": np.array([0, 1, np.nan, 0])}, "integer class indices"),
    ("label-fraction", {"y": np.array([0, 1, 0.5, 0])}, "integer class indices"),
    ("label-negative", {"y": np.array([0, 1, -1, 0])}, ">= 0"),
    ("label-complex", {"y": GOOD_Y + 0j}, "complex"),
    ("label-text", {"y": np.array(["a", "b", "a", "b"])}, "dtype"),
    ("label-0-d", {"y": np.int64(1)}, "one label per sample"),
    ("class-names-2-d", {"class_names": np.array([["a", "b"]])}, "class_names"),
    ("class-names-too-many", {"class_names": np.array([str(i) for i in range(MAX_CLASSES + 1)])}, "class_names"),
    ("header-declares-2-GiB", {"x": fake_npy_header((1 << 29, 1)) + bytes(16)}, "limit"),
    ("header-declares-more-than-held", {"x": fake_npy_header((4, 3)) + bytes(8)}, "corrupt"),
    ("header-shape-overflow", {"x": fake_npy_header((2**62, 2**62))}, "limit"),
    ("broken-header", {"x": b"\x93NUMPY\x01\x00\x05\x00{zzz\n"}, "header"),
]


@pytest.mark.parametrize("members,word", [c[1:] for c in NPZ_CASES], ids=[c[0] for c in NPZ_CASES])
def test_hostile_npz_arrays(tmp_path, members, word):
    refused(run_npz(tmp_path, **members), "evil.npz", word)


def test_zip_bomb_member_stops_after_the_declared_size(tmp_path):
    """A member whose header declares 4x3 float32 (48 bytes) but which inflates
    to 256 MiB: reading stops one byte past the declared size."""
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("y.npy", npy_bytes(GOOD_Y))
        with zf.open("x.npy", "w", force_zip64=True) as member:
            member.write(fake_npy_header((4, 3)))
            chunk = bytes(16 * MIB)
            for _ in range(16):
                member.write(chunk)
    assert path.stat().st_size < 4 * MIB
    refused(lambda: run_step(NPZ, params={"file": "evil.npz"}, recipe_dir=tmp_path, out_dir=tmp_path / "o"),
            "evil.npz", "holds more")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_npz_members_compressed_with_bzip2_or_lzma_are_refused(tmp_path, method):
    """The standard library inflates a bzip2/LZMA chunk whole: a bomb even
    with a small declared size. np.savez never writes them."""
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("x.npy", npy_bytes(GOOD_X))
        zf.writestr("y.npy", npy_bytes(GOOD_Y))
    refused(lambda: load_npz_arrays(path, ["x", "y"]), "evil.npz", "zip method")


def test_savez_compressed_archives_are_read(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", x=GOOD_X, y=GOOD_Y)
    arrays = load_npz_arrays(tmp_path / "c.npz", ["x", "y"])
    np.testing.assert_array_equal(arrays["x"], GOOD_X)
    np.testing.assert_array_equal(arrays["y"], GOOD_Y)


def test_good_npz_still_builds(tmp_path):
    art = run_npz(tmp_path, x=np.arange(40, dtype=np.float32).reshape(10, 4) / 40, y=np.arange(10) % 2)()
    assert (art.path / "x_train.npy").is_file()


@pytest.mark.parametrize("names", [["a"] * 2, [str(i) for i in range(MAX_CLASSES + 1)]], ids=["duplicate", "too-many"])
def test_class_names_param_is_bounded(tmp_path, names):
    with pytest.raises(ValidationError, match="class_names"):
        NPZ.params.model_validate({"file": "x.npz", "class_names": names}, context={"base_dir": tmp_path})


# -- shapes TensorFlow aborts on (no Python error: the process dies in oneDNN) ----------------


@pytest.mark.parametrize("dims", [(10, 0, 28), (10, 28, 0)], ids=["rows-0", "cols-0"])
def test_idx_samples_with_a_zero_sized_dimension_are_refused(tmp_path, dims):
    """A header of [10000, 0, 28] used to build (input_shape [0, 28, 1]) and
    then abort `train` natively (exit 134, no message)."""
    labels = np.arange(dims[0], dtype=">u1") % 2
    params = write_idx_pair(tmp_path, idx_header(0x08, dims), idx_header(0x08, (dims[0],)) + labels.tobytes())
    message = refused(lambda: run_step(IDX, params=params, recipe_dir=tmp_path, out_dir=tmp_path / "o"),
                      "images.idx", str(list(dims)), "size 0", "at least 1")
    assert not (tmp_path / "o" / "meta.json").exists(), message


@pytest.mark.parametrize("shape", [(20, 0), (20, 3, 0)])
def test_npz_samples_with_a_zero_sized_dimension_are_refused(tmp_path, shape):
    refused(run_npz(tmp_path, x=np.zeros(shape, np.float32), y=np.arange(20) % 2),
            "evil.npz", "array 'x'", str(list(shape)), "size 0", "at least 1")


def test_an_npz_without_samples_names_the_file_and_shape(tmp_path):
    refused(run_npz(tmp_path, x=np.zeros((0, 28, 28), np.float32), y=np.zeros(0, np.int64)),
            "holds no samples", "[0, 28, 28]", "evil.npz")


def _splits_of(x, y):
    return {"train": x[:6], "val": x[6:8], "test": x[8:]}, {"train": y[:6], "val": y[6:8], "test": y[8:]}


@pytest.mark.parametrize("case, words", [
    ("zero-dim", ["my-plugin", "train samples have shape [6, 3, 0]", "size 0"]),
    ("1-d", ["my-plugin", "shape [6]", "feature dimension"]),
    ("shapes-differ", ["my-plugin", "val samples have shape [3, 2]", "train samples [3, 1]"]),
    ("labels-short", ["my-plugin", "the test split has 2 samples but labels of shape [1]"]),
    ("train-empty", ["my-plugin", "the train split is empty"]),
    ("meta-shape", ["my-plugin", "meta input_shape [0, 28, 1]", "[3, 1]"]),
    ("missing-split", ["my-plugin", "no test split"]),
])
def test_save_dataset_refuses_what_training_cannot_use(tmp_path, case, words):
    """The shared writer every dataset plugin goes through (a third party's
    too) checks what it writes, so nothing reaches TensorFlow's native aborts."""
    from tinybuild_plugins.sdk.dataset import save_dataset

    x, y = _splits_of(np.zeros((10, 3, 1), np.float32), np.arange(10) % 2)
    meta = {"input_shape": [3, 1], "num_classes": 2}
    if case == "zero-dim":
        x, y = _splits_of(np.zeros((10, 3, 0), np.float32), np.arange(10) % 2)
        meta["input_shape"] = [3, 0]
    elif case == "1-d":
        x, y = _splits_of(np.zeros(10, np.float32), np.arange(10) % 2)
    elif case == "shapes-differ":
        x["val"] = np.zeros((2, 3, 2), np.float32)
    elif case == "labels-short":
        y["test"] = y["test"][:1]
    elif case == "train-empty":
        x["train"], y["train"] = x["train"][:0], y["train"][:0]
    elif case == "meta-shape":
        meta["input_shape"] = [0, 28, 1]
    elif case == "missing-split":
        del x["test"]
    with pytest.raises(StepError) as info:
        save_dataset(tmp_path, x, y, meta, where="my-plugin")
    for word in words:
        assert word in str(info.value), str(info.value)
    assert not (tmp_path / "meta.json").exists()


def test_save_dataset_still_writes_good_data_with_an_empty_val_split(tmp_path):
    from tinybuild_plugins.sdk.dataset import load_dataset, save_dataset

    x, y = _splits_of(np.ones((10, 3, 1), np.float32), np.arange(10) % 2)
    x["val"], y["val"] = x["val"][:0], y["val"][:0]
    save_dataset(tmp_path, x, y, {"input_shape": [3, 1], "num_classes": 2})
    data = load_dataset(tmp_path)
    assert data.meta["splits"] == {"train": 6, "val": 0, "test": 2} and data.input_shape == (3, 1)
