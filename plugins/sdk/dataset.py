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


def save_dataset(out_dir: Path, x: dict[str, np.ndarray], y: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the artifact files; ``meta`` gets split sizes filled in."""
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
