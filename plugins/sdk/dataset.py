"""The ``dataset`` artifact layout, shared by every plugin that reads data.

A dataset artifact is a directory of plain ``.npy`` arrays (never pickled)
plus ``meta.json``::

    x_train.npy y_train.npy x_val.npy y_val.npy x_test.npy y_test.npy
    meta.json  {"input_shape": [28, 28, 1], "num_classes": 10,
                "class_names": ["0", ...], "normalization": {...},
                "splits": {"train": n, "val": n, "test": n}, "source": {...}}

Features are float32 in the shape the model consumes (channel axis included);
labels are int64 class indices. ``np.save`` output is byte-deterministic, so
identical inputs give identical artifact digests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinybuild.api import StepError

from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

SPLITS = ("train", "val", "test")

#: Largest array a dataset step reads from one file (bytes, after
#: decompression): 1 GiB. Headers declaring more are refused before reading,
#: which also bounds what a gzip or zip bomb can cost.
MAX_ARRAY_BYTES = 1 << 30
#: Most classes a dataset may have. Labels are class indices, so one stray
#: label of 2**31 - 1 would otherwise make a class list two billion long.
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class Dataset:
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def check_dataset(x: dict[str, np.ndarray], y: dict[str, np.ndarray], meta: dict[str, Any], where: str) -> None:
    """Refuse arrays that no model can train on, before they are written.

    Why here: every dataset step -- built-in or a third party's -- writes
    through :func:`save_dataset`, and what slips past it reaches TensorFlow,
    where some shapes are not a Python error but a native abort that takes the
    whole build down without a message (a sample with a zero-sized dimension,
    e.g. ``input_shape [0, 28, 1]``, aborts inside oneDNN). So: every split
    present, samples of at least one dimension beyond the sample axis and none
    of size 0, the same sample shape in every split (and in ``meta``), as many
    labels as samples, and a non-empty train split."""
    missing = [s for s in SPLITS if s not in x or s not in y]
    if missing:
        raise StepError(f"{where}: no {', '.join(missing)} split given to save_dataset; pass every split "
                        f"({', '.join(SPLITS)}), empty arrays for unused ones")
    shape = tuple(np.shape(x["train"])[1:])
    for s in SPLITS:
        xs, ys = np.shape(x[s]), np.shape(y[s])
        if len(xs) < 2:
            raise StepError(f"{where}: {s} samples have shape {list(xs)}; expected (samples, features...): "
                            "give each sample at least one feature dimension")
        if 0 in xs[1:]:
            raise StepError(f"{where}: {s} samples have shape {list(xs)}, a sample of shape {list(xs[1:])} holds "
                            "no values (a dimension of size 0); TensorFlow cannot train on it. Fix the data "
                            "(its header or array shape) so that every sample dimension is at least 1")
        if tuple(xs[1:]) != shape:
            raise StepError(f"{where}: {s} samples have shape {list(xs[1:])} but train samples {list(shape)}; "
                            "every split must hold samples of one shape")
        if len(ys) != 1 or ys[0] != xs[0]:
            raise StepError(f"{where}: the {s} split has {xs[0]} samples but labels of shape {list(ys)}; "
                            "give one class index per sample")
    if len(y["train"]) == 0:
        raise StepError(f"{where}: the train split is empty; training needs samples there: use more data "
                        "or give train a larger fraction")
    declared = meta.get("input_shape")
    if declared is not None and [int(d) for d in declared] != list(shape):
        raise StepError(f"{where}: meta input_shape {list(declared)} does not match the samples' shape "
                        f"{list(shape)}; write the shape of one sample")


def save_dataset(out_dir: Path, x: dict[str, np.ndarray], y: dict[str, np.ndarray], meta: dict[str, Any],
                 *, where: str = "dataset") -> None:
    """Check (see :func:`check_dataset`; ``where`` starts its errors, e.g.
    "dataset 'data' (from data/x.npz)") and write the artifact files;
    ``meta`` gets split sizes filled in."""
    check_dataset(x, y, meta, where)
    out_dir = Path(out_dir)
    meta = dict(meta)
    meta["splits"] = {s: int(len(y[s])) for s in SPLITS}
    for s in SPLITS:
        np.save(out_dir / f"x_{s}.npy", np.ascontiguousarray(x[s], dtype=np.float32), allow_pickle=False)
        np.save(out_dir / f"y_{s}.npy", np.ascontiguousarray(y[s], dtype=np.int64), allow_pickle=False)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_meta(path: Path) -> dict[str, Any]:
    """Only ``meta.json`` of a dataset artifact: enough for steps that need the
    input shape or class count but not the arrays (e.g. building a model)."""
    return json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))


def load_dataset(path: Path) -> Dataset:
    """Read a dataset artifact directory (an ``Artifact.path``)."""
    path = Path(path)
    x = {s: np.load(path / f"x_{s}.npy", allow_pickle=False) for s in SPLITS}
    y = {s: np.load(path / f"y_{s}.npy", allow_pickle=False) for s in SPLITS}
    meta = load_meta(path)
    return Dataset(x=x, y=y, meta=meta)
