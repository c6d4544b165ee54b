"""Dataset step types: ``idx`` (MNIST-format files) and ``npz`` (NumPy archive).

Both turn raw arrays into a ``dataset`` artifact (see ``_dataset_io``): a
deterministic train/val/test split drawn from the recipe seed (optionally
stratified by class), optional truncation to the first ``limit`` samples,
pixel scaling, and a channel axis for 2-D images (always for IDX, whose 3-D
arrays are grayscale images; on request for npz, whose 3-D arrays may as well
be time series). Standardization statistics come from the train split only,
so no information leaks from val/test.

File names are not written into the artifact: the cache key holds the data
files' content, not their names, so a renamed file must give the same bytes.
They are returned in the step's metrics instead.

Pure NumPy: no TensorFlow import anywhere in this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from tinybuild.api import InputFile, Kind, Params, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.sdk.dataset import MAX_CLASSES, SPLITS, save_dataset
from tinybuild_plugins.data import splits as _splits
from tinybuild_plugins.data.idx import read_idx
from tinybuild_plugins.data.npz import load_npz_arrays
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

VERSION = "1.0"
Scale = Literal["none", "unit", "standardize"]


class Split(Params):
    """Fractions of the samples that go to each split (they must sum to 1)."""

    train: float = Field(0.7, gt=0, le=1, description="Fraction of samples used for training.")
    val: float = Field(0.1, ge=0, lt=1, description="Fraction used for validation during training.")
    test: float = Field(0.2, ge=0, lt=1, description="Fraction held out for evaluation.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Split":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1, got train {self.train} + val {self.val} + "
                f"test {self.test} = {total:g}"
            )
        return self


class DatasetParams(Params):
    """Settings shared by every dataset source."""

    split: Split = Field(default_factory=Split, description="Train/val/test fractions, e.g. { train = 0.7, val = 0.1, test = 0.2 }.")
    stratify: bool = Field(False, description="Keep each class's proportion the same in every split.")
    limit: int | None = Field(None, ge=1, description="Use only the first N samples (handy for CI).")
    scale: Scale = Field(
        "unit",
        description='"unit": 8- and 16-bit integers divided by their type\'s maximum (uint8 / 255), '
        'float data kept if already in [0, 1]; "standardize": subtract mean, divide by std (per channel, '
        'train split only); "none": as stored.',
    )
    class_names: list[str] | None = Field(None, max_length=MAX_CLASSES, description=f"Names of the classes, index order (at most {MAX_CLASSES:,}).")

    @field_validator("class_names")
    @classmethod
    def _distinct_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("class_names must not be empty")
            if len(set(value)) != len(value):
                raise ValueError("class_names must be distinct")
        return value


class IdxParams(DatasetParams):
    images: InputFile = Field(description="IDX file of samples (e.g. train-images-idx3-ubyte.gz), gzip or raw.")
    labels: InputFile = Field(description="IDX file of integer labels, one per sample.")
    groups: InputFile | None = Field(
        None, description="IDX file of integer group ids, one per sample: a group (e.g. one recording) lands "
        "in one split only (see splits.py). Unset: samples are split one by one.",
    )


class NpzParams(DatasetParams):
    file: InputFile = Field(description="A .npz archive with arrays `x` (samples) and `y` (labels); loaded without pickle.")
    x_key: str = Field("x", min_length=1, description="Name of the samples array in the archive.")
    y_key: str = Field("y", min_length=1, description="Name of the labels array in the archive.")
    group_key: str | None = Field(
        None, min_length=1, description="Name of an array of integer group ids, one per sample: a group lands "
        "in one split only (see splits.py). Unset: samples are split one by one.",
    )
    add_channel_axis: bool = Field(
        False,
        description="Append a channel axis of size 1 to every sample: (N, 28, 28) grayscale images "
        "become (N, 28, 28, 1), what Conv2D models expect. Off by default: 3-D arrays may be "
        "(samples, time steps, features).",
    )


# -- pure functions (unit-tested directly) -----------------------------------


def labels_to_indices(y: np.ndarray, where: str) -> np.ndarray:
    """Integer class indices from labels given as indices, a column, or one-hot rows.

    Labels are class indices ``0 .. C-1`` with ``C`` at most :data:`MAX_CLASSES`:
    a stray label of 2**31 - 1 is an error, not a two-billion-name class list."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise StepError(f"{where}: labels have dtype {y.dtype}; expected integer class indices "
                        "(complex, text, object and structured labels are refused)")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        is_one_hot = np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
        if not is_one_hot:
            raise StepError(f"{where}: labels have shape {list(y.shape)}; expected class indices or one-hot rows")
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise StepError(f"{where}: labels have shape {list(y.shape)}; expected one label per sample")
    if y.size and y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.all(np.equal(np.mod(y, 1), 0)):
            raise StepError(f"{where}: labels must be integer class indices, found {y.dtype} values")
    if y.size and y.min() < 0:
        raise StepError(f"{where}: labels must be >= 0, found {int(y.min())}")
    if y.size and y.max() >= MAX_CLASSES:
        raise StepError(f"{where}: label {int(y.max())} is not a class index below the limit of {MAX_CLASSES:,} "
                        "classes; labels must be class indices 0 .. number of classes - 1")
    return y.astype(np.int64)


def group_ids(groups: Any, where: str) -> np.ndarray:
    """Group ids (which clip, subject or session each sample came from) as
    ``0 .. G-1``. Only equality matters, so any integers or strings work, and
    there is no cap like the class limit: a data set may hold many groups."""
    g = np.asarray(groups)
    if g.ndim != 1:
        raise StepError(f"{where}: group ids have shape {list(g.shape)}; expected one id per sample")
    if g.dtype.kind not in "iuUS":
        raise StepError(f"{where}: group ids have dtype {g.dtype}; expected integers or strings")
    return np.unique(g, return_inverse=True)[1].reshape(-1).astype(np.int64)


def check_samples(x: np.ndarray, where: str) -> None:
    """Refuse samples no model can train on as they are, rather than let a
    cast silently change them: complex values (the imaginary part would be
    dropped), non-numeric dtypes, NaN or infinity, a 0-d or 1-d array, and
    samples with a dimension of size 0 (TensorFlow aborts the process on
    those instead of raising; ``save_dataset`` checks again for every plugin)."""
    kind = x.dtype.kind
    if kind == "c":
        raise StepError(f"{where}: samples are complex ({x.dtype}); casting to float32 would drop the imaginary "
                        "part. Store real features, e.g. np.stack([x.real, x.imag], axis=-1)")
    if kind not in "biuf":
        raise StepError(f"{where}: samples have dtype {x.dtype}; samples must be numeric (bool, integer or float)")
    if x.ndim < 2:
        raise StepError(f"{where}: samples have shape {list(x.shape)}; expected (samples, features...)")
    if 0 in x.shape[1:]:  # TensorFlow aborts natively (oneDNN) on such samples: no error, no message
        raise StepError(f"{where}: samples have shape {list(x.shape)}: each sample, of shape {list(x.shape[1:])}, "
                        "holds no values (a dimension of size 0); the file is corrupt or was written from an "
                        "empty array: write it again with every sample dimension at least 1")
    if kind == "f":
        flat, step = x.reshape(-1), 1 << 24  # in chunks: a mask of the whole array could take 256 MB
        bad = sum(len(part) - int(np.count_nonzero(np.isfinite(part)))
                  for part in (flat[i:i + step] for i in range(0, flat.size, step)))
        if bad:
            raise StepError(f"{where}: samples contain {bad:,} NaN or infinite values; remove or impute them "
                            "before building the dataset")


def split_indices(
    y: np.ndarray, fractions: Split, seed: int, *, stratify: bool
) -> dict[str, np.ndarray]:
    """Disjoint index sets per split, a pure function of (labels, fractions, seed).

    Sizes are rounded per split with the remainder going to test; with
    ``stratify`` that happens per class, so every split keeps class balance.
    """
    rng = np.random.default_rng(seed)

    def cut(indices: np.ndarray) -> dict[str, np.ndarray]:
        n = len(indices)
        n_train = int(round(n * fractions.train))
        n_val = min(int(round(n * fractions.val)), n - n_train)
        return {
            "train": indices[:n_train],
            "val": indices[n_train:n_train + n_val],
            "test": indices[n_train + n_val:],
        }

    if not stratify:
        return cut(rng.permutation(len(y)))
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for label in np.unique(y):
        for s, idx in cut(rng.permutation(np.flatnonzero(y == label))).items():
            parts[s].append(idx)
    # Shuffle within each split so classes are interleaved, not in blocks.
    return {s: rng.permutation(np.concatenate(parts[s])) if parts[s] else np.zeros(0, np.int64) for s in SPLITS}


def scale_features(
    x: dict[str, np.ndarray], scale: Scale, where: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Scaled float32 features per split and the normalization record for meta.json."""
    raw_dtype = next(iter(x.values())).dtype
    if scale == "none":
        return {s: v.astype(np.float32) for s, v in x.items()}, {"scale": "none"}
    if scale == "unit":
        if np.issubdtype(raw_dtype, np.integer):
            if raw_dtype.itemsize > 2:
                # int32/int64 maxima (2.1e9, 9.2e18) are no pixel range: data in 0..255 stored
                # as int64 (NumPy's default integer) would end up in [0, 2.8e-17].
                lo = min((int(v.min()) for v in x.values() if v.size), default=0)
                hi = max((int(v.max()) for v in x.values() if v.size), default=0)
                hint = (" (they fit uint8: x.astype(np.uint8) gives / 255)" if 0 <= lo and hi <= 255 else
                        " (they fit uint16: x.astype(np.uint16) gives / 65535)" if 0 <= lo and hi <= 65535 else "")
                raise StepError(
                    f"{where}: scale = \"unit\" divides integer data by its type's maximum, but these are "
                    f"{raw_dtype} values in [{lo}, {hi}] and {raw_dtype}'s maximum is {np.iinfo(raw_dtype).max}; "
                    f"store them as uint8 or uint16{hint}, or use scale = \"standardize\" or \"none\""
                )
            divisor = float(np.iinfo(raw_dtype).max)
            return {s: (v.astype(np.float32) / np.float32(divisor)) for s, v in x.items()}, {
                "scale": "unit", "divisor": divisor,
            }
        lo = min((float(v.min()) for v in x.values() if v.size), default=0.0)
        hi = max((float(v.max()) for v in x.values() if v.size), default=0.0)
        if lo < 0 or hi > 1:
            raise StepError(
                f"{where}: scale = \"unit\" keeps float data only when it is already in [0, 1], but these are "
                f"{raw_dtype} values in [{lo:g}, {hi:g}]; use scale = \"standardize\" or \"none\""
            )
        return {s: v.astype(np.float32) for s, v in x.items()}, {"scale": "unit", "divisor": 1.0}
    # standardize: statistics over every axis but the last (channels / features), train only
    train = x["train"].astype(np.float64)
    axes = tuple(range(train.ndim - 1))
    mean = train.mean(axis=axes)
    std = train.std(axis=axes)
    std = np.where(std > 0, std, 1.0)
    scaled = {s: ((v.astype(np.float64) - mean) / std).astype(np.float32) for s, v in x.items()}
    return scaled, {"scale": "standardize", "mean": mean.tolist(), "std": std.tolist()}


def build_dataset(
    ctx: StepContext,
    x: np.ndarray,
    y: np.ndarray,
    params: DatasetParams,
    *,
    source: dict[str, Any],
    files: dict[str, str],
    default_class_names: Sequence[str] | None,
    add_channel_axis: bool,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Limit, split, scale and save; return the step's metrics.

    ``source`` goes into meta.json and must hold only what the cache key
    covers (format, params); ``files`` (file names) only into the metrics."""
    where = f"dataset '{ctx.step}'"
    check_samples(x, where)
    y = labels_to_indices(y, where)
    if len(x) != len(y):
        raise StepError(f"{where}: {len(x)} samples but {len(y)} labels; they must match one to one")
    if groups is not None and len(groups) != len(y):
        raise StepError(f"{where}: {len(y)} samples but {len(groups)} group ids; they must match one to one")
    if params.limit is not None:
        x, y = x[: params.limit], y[: params.limit]
        groups = None if groups is None else groups[: params.limit]
    if len(y) == 0:
        named = ", ".join(f"{role} {name}" for role, name in files.items())
        raise StepError(f"{where}: the data holds no samples (samples of shape {list(x.shape)}"
                        + (f", from {named}" if named else "") + "); give it a file with at least one sample per split")
    if add_channel_axis:
        x = x[..., np.newaxis]

    class_names = list(params.class_names or default_class_names or [str(i) for i in range(int(y.max()) + 1)])
    if int(y.max()) >= len(class_names):
        raise StepError(
            f"{where}: label {int(y.max())} found but only {len(class_names)} class names "
            f"({', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''}); fix class_names"
        )

    if groups is None:  # the sample-by-sample split: unchanged bytes for recipes without groups
        indices = split_indices(y, params.split, ctx.seed, stratify=params.stratify)
    else:
        indices = _splits.group_split_indices(groups, y, params.split, ctx.seed, stratify=params.stratify)
    if len(indices["train"]) == 0:
        raise StepError(f"{where}: the train split is empty ({len(y)} samples); use more samples or a larger fraction")
    xs, normalization = scale_features({s: x[i] for s, i in indices.items()}, params.scale, where)
    ys = {s: y[i] for s, i in indices.items()}

    meta = {
        "input_shape": [int(d) for d in x.shape[1:]],
        "num_classes": len(class_names),
        "class_names": class_names,
        "normalization": normalization,
        "split": params.split.model_dump(),
        "stratified": params.stratify,
        "seed": ctx.seed,
        "source": {**source, "samples": int(len(y)), "limit": params.limit, "dtype": str(x.dtype)},
    }
    if groups is not None:
        meta.update(_splits.split_summary(y, groups, indices, class_names))
        errors, warnings = _splits.coverage_problems(meta["class_counts"], where)
        if errors:
            raise StepError("; ".join(errors))
        for warning in warnings:
            ctx.log(f"warning: {warning}")
    save_dataset(ctx.out_dir, xs, ys, meta, where=f"{where} (from {', '.join(files.values())})")
    return {
        "samples": int(len(y)),
        **{f"{s}_samples": int(len(ys[s])) for s in SPLITS},
        "num_classes": len(class_names),
        "input_shape": meta["input_shape"],
        "source": {**source, **files},
    }


# -- step types --------------------------------------------------------------


def run_idx(ctx: StepContext, inputs: Sequence[Any], params: IdxParams) -> dict[str, Any]:
    x = read_idx(params.images)
    y = read_idx(params.labels)
    if y.ndim != 1:
        raise StepError(f"{params.labels}: an IDX labels file must be 1-D, found shape {list(y.shape)}")
    check_samples(x, str(params.images))  # here, so that errors name the file
    labels_to_indices(y, str(params.labels))
    if len(x) != len(y):
        raise StepError(
            f"{params.images} holds {len(x)} samples but {params.labels} holds {len(y)} labels; "
            "pick the matching images/labels pair"
        )
    digits = [str(i) for i in range(10)]
    default_names = digits if y.size and int(y.max()) < 10 else None
    files = {"images": Path(params.images).name, "labels": Path(params.labels).name}
    # (N, H, W) is how IDX stores grayscale images: add the channel axis models expect
    groups = None
    if params.groups is not None:
        groups = group_ids(read_idx(params.groups), f"{params.groups} (group ids)")
        files["groups"] = Path(params.groups).name
    return build_dataset(ctx, x, y, params, source={"format": "idx"}, files=files,
                         default_class_names=default_names, add_channel_axis=x.ndim == 3, groups=groups)


def _load_npz(params: NpzParams) -> tuple[np.ndarray, np.ndarray, list[str] | None, np.ndarray | None]:
    path = Path(params.file)
    required = [params.x_key, params.y_key] + ([params.group_key] if params.group_key else [])
    arrays = load_npz_arrays(path, required, optional=["class_names"])
    x, y = arrays[params.x_key], arrays[params.y_key]
    check_samples(x, f"{path}: array '{params.x_key}'")  # here, so that errors name the file
    labels_to_indices(y, f"{path}: array '{params.y_key}'")
    names = None
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.ndim != 1 or raw.dtype.kind not in "US" or not 0 < len(raw) <= MAX_CLASSES:
            raise StepError(f"{path}: array 'class_names' must be a 1-D array of 1 to {MAX_CLASSES:,} strings, "
                            f"found shape {list(raw.shape)} of {raw.dtype}")
        names = [str(n) for n in raw]
    groups = None
    if params.group_key:
        groups = group_ids(arrays[params.group_key], f"{path}: array '{params.group_key}' (group ids)")
    return x, y, names, groups


def run_npz(ctx: StepContext, inputs: Sequence[Any], params: NpzParams) -> dict[str, Any]:
    x, y, names, groups = _load_npz(params)
    source = {"format": "npz", "x_key": params.x_key, "y_key": params.y_key}
    return build_dataset(ctx, x, y, params, source=source, files={"file": Path(params.file).name},
                         default_class_names=names, add_channel_axis=params.add_channel_axis, groups=groups)


IDX = StepType(
    name="idx",
    version=VERSION,
    produces=Kind.DATASET,
    run=run_idx,
    params=IdxParams,
    arity=(0, 0),
    toolchain=("numpy",),
    description="Dataset from MNIST-format IDX files (gzip or raw), split train/val/test from the seed.",
    uses_names=False,  # output depends on content only: renames rerun nothing
    fingerprint_modules=("tinybuild_plugins.data.idx", "tinybuild_plugins.sdk.dataset", "tinybuild_plugins.data.splits"),
)

NPZ = StepType(
    name="npz",
    version=VERSION,
    produces=Kind.DATASET,
    run=run_npz,
    params=NpzParams,
    arity=(0, 0),
    toolchain=("numpy",),
    description="Dataset from a .npz archive with arrays x and y, split train/val/test from the seed.",
    uses_names=False,  # output depends on content only: renames rerun nothing
    fingerprint_modules=("tinybuild_plugins.sdk.dataset", "tinybuild_plugins.data.npz", "tinybuild_plugins.data.splits"),
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [IDX, NPZ]
