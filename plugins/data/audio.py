"""The ``audio`` dataset step: WAV clips -> windows -> a ``dataset`` artifact.

The thesis pipeline this project was founded on: mono audio resampled to
``sample_rate``; windows of ``window_s`` every ``hop_s`` (the final window
zero-padded to full length); z-score standardization with the train split's
mean and standard deviation (stored in meta.json: a firmware needs them);
each 1-D window reshaped to a ``ceil(sqrt(n)) x ceil(sqrt(n))`` square
(zero-padded) so a 2-D CNN can read it, or kept 1-D, or turned into log-mel
or MFCC features.

Labels come from a CSV (ESC-50's ``meta.csv`` works as is: ``filename``,
``category``, ``src_file``, ``fold``) or from one sub-folder per class.
Splits are by *group* (see ``splits.py``): every window of a clip -- and,
with ``group_column``, every clip of one source recording -- lands in one
split, so no test window has a neighbour in training. Predefined folds
(``test_folds`` / ``val_folds``) are supported.

Every WAV file the step reads enters its cache key by content (see
``input_files``); file names go into the step's metrics, not the artifact.
Audio libraries are imported inside functions (see ``audio_signal``).
"""

from __future__ import annotations

import csv
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tinybuild.api import InputFile, Kind, Params, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.data import splits as _splits
from tinybuild_plugins.data.datasets import Split, scale_features
from tinybuild_plugins.sdk.dataset import SPLITS, save_dataset
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

VERSION = "1.0"
WAV_SUFFIXES = (".wav", ".wave")

#: Longest clip the step reads, in seconds (frames / sample rate, from the
#: WAV header, checked before any audio is read): 5 minutes. A clip becomes
#: one float64 array at ``sample_rate`` (up to 384 kHz: 115 M samples,
#: 0.9 GB); a longer recording is split into clips first, which also lets
#: the group split keep its parts apart. It catches headers that lie, too: a
#: 100 KB file declaring a 1 Hz rate is 50,000 s, 4e8 samples at 8 kHz.
MAX_CLIP_SECONDS = 300
#: Largest decoded clip (frames x channels x 8 bytes, float64) before the
#: channels are mixed down: 1 GiB, the per-file limit of every dataset step.
MAX_CLIP_BYTES = 1 << 30
#: Largest windowed data set, checked from the headers before any clip is
#: read: windows x the larger of (window samples x 8 bytes: the float64
#: windows the step cuts) and (values per window x 4 bytes: the float32
#: features the artifact stores), over every clip. 4 GiB: full ESC-50 at
#: 16 kHz (1 s windows, 0.5 s hop) is 2.3 GB. The step's peak memory is up
#: to ~4x this (measured; see the README). ``$TINYBUILD_AUDIO_MAX_BYTES``
#: (bytes; no part of any cache key) raises it on a machine that has the memory.
MAX_DATASET_BYTES = 4 << 30
MAX_DATASET_BYTES_ENV = "TINYBUILD_AUDIO_MAX_BYTES"
#: Most windows per window length: hop_s must be at least window_s / 100
#: (frame_hop_s at least frame_s / 100). Closer windows repeat >99% of their
#: samples: they multiply the data set, not the information.
MAX_OVERLAP_FACTOR = 100


def _resolve_folder(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = Path(value).expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    if not value.is_dir():
        raise ValueError(
            f"audio folder not found: {value}; fix the path (relative paths resolve against the recipe's "
            "folder), or, where the recipe builds it from ${TINYBUILD_DATA} (as the example recipes do), "
            "set TINYBUILD_DATA to the folder that holds the data"
        )
    return value


class AudioParams(Params):
    folder: Path = Field(description="Folder of WAV clips (with csv) or of one sub-folder of WAV clips per class.")
    csv: InputFile | None = Field(None, description="CSV naming each clip and its class (e.g. ESC-50's meta.csv); "
                                  "unset: one sub-folder per class")
    file_column: str = Field("filename", min_length=1, description="CSV column with the clip's file name (relative to folder).")
    label_column: str = Field("category", min_length=1, description="CSV column with the clip's class name.")
    group_column: str | None = Field(
        "src_file", min_length=1,
        description="CSV column naming the source recording; clips sharing it stay in one split. Default: "
        "ESC-50's src_file where the CSV has it; without that column (or a CSV) each clip is its own group.",
    )
    fold_column: str = Field("fold", min_length=1, description="CSV column with a fold number (used with test_folds/val_folds).")
    test_folds: list[int] = Field(default_factory=list, description="Folds that form the test split (e.g. [4]); then split fractions are not used.")
    val_folds: list[int] = Field(default_factory=list, description="Folds that form the val split.")
    classes: list[str] | None = Field(None, description="Classes to keep, in index order; default: every class found, sorted by name.")
    sample_rate: int = Field(16000, gt=0, le=384_000, description="Rate (Hz) every clip is resampled to.")
    window_s: float = Field(1.0, gt=0, description="Window length in seconds.")
    hop_s: float | None = Field(None, gt=0, description="Seconds between window starts; default: half the window. At least window_s / 100.")
    pad_final: bool = Field(True, description="Zero-pad the final window (and clips shorter than a window) to full length.")
    scale: Literal["standardize", "none"] = Field(
        "standardize", description='"standardize": z = (x - mean) / std with the train split\'s mean and std; "none": as read.')
    layout: Literal["square", "1d"] = Field(
        "square", description='Raw windows: "square" reshapes n samples to ceil(sqrt(n))^2 (zero-padded), '
        'shape [side, side, 1]; "1d": shape [n, 1]. Ignored with features.')
    features: Literal["none", "log-mel", "mfcc"] = Field("none", description="Spectral features instead of raw samples; shape [frames, bands, 1].")
    frame_s: float = Field(0.025, gt=0, description="Feature frame length in seconds (Hann window).")
    frame_hop_s: float = Field(0.010, gt=0, description="Seconds between feature frames. At least frame_s / 100.")
    n_mels: int = Field(40, ge=1, le=512, description="Mel bands (log-mel, and the input of mfcc).")
    n_mfcc: int = Field(13, ge=1, le=512, description="MFCC coefficients kept.")
    split: Split = Field(default_factory=Split, description="Train/val/test fractions of the groups (clips or source recordings).")
    stratify: bool = Field(True, description="Cut each class's groups separately, so every split keeps the class balance.")

    _check_folder = field_validator("folder")(_resolve_folder)

    @model_validator(mode="after")
    def _consistent(self) -> "AudioParams":
        if set(self.test_folds) & set(self.val_folds):
            raise ValueError(f"folds {sorted(set(self.test_folds) & set(self.val_folds))} are in both test_folds and val_folds")
        if (self.test_folds or self.val_folds) and self.csv is None:
            raise ValueError("test_folds/val_folds need a csv with a fold column")
        if "group_column" in self.model_fields_set and self.group_column is not None and self.csv is None:
            raise ValueError("group_column needs a csv; without one each clip is its own group")
        if self.classes is not None and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError("classes must be a non-empty list of distinct names")
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        self._check_hops()
        return self

    def _check_hops(self) -> None:
        """Plan-time bounds that need no file: a hop that rounds to no sample,
        or one so small that windows (or feature frames) repeat >99% of each
        other and the data set balloons (a 1-sample hop on nine 2 s clips
        took 2.5 GB and then failed)."""
        rate = self.sample_rate
        for key, length_key, length, hop in (("hop_s", "window_s", self.window_s, self.hop),
                                             ("frame_hop_s", "frame_s", self.frame_s, self.frame_hop_s)):
            if key == "frame_hop_s" and self.features == "none":
                continue
            if round(length * rate) < 1 or round(hop * rate) < 1:
                raise ValueError(f"{length_key} = {length} s / {key} = {hop} s give less than one sample at "
                                 f"sample_rate = {rate} Hz; raise {length_key} / {key} or the sample_rate")
            if hop * MAX_OVERLAP_FACTOR < length:
                raise ValueError(
                    f"{key} = {hop} s is below {length_key} / {MAX_OVERLAP_FACTOR} = {length / MAX_OVERLAP_FACTOR:g} s: "
                    f"consecutive windows would repeat more than 99% of their samples and multiply the data "
                    f"{length / hop:,.0f}-fold; raise {key} to at least {length / MAX_OVERLAP_FACTOR:g} s "
                    f"(common: half of {length_key})")

    @property
    def hop(self) -> float:
        return self.hop_s if self.hop_s is not None else self.window_s / 2


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    group: str
    fold: int | None


# -- listing the clips ---------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StepError(f"cannot read the label CSV {path}: {exc}; give a UTF-8 CSV file") from None
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def clips_from_csv(params: AudioParams, *, check_files: bool = True) -> list[Clip]:
    """Clips named by the CSV, with their labels, groups and folds
    (``check_files``: each named file must exist)."""
    path = Path(params.csv)
    columns, rows = _read_csv(path)
    needed = {"file_column": params.file_column, "label_column": params.label_column}
    group_column = params.group_column
    if group_column and group_column not in columns and "group_column" not in params.model_fields_set:
        group_column = None  # the ESC-50 default, on a CSV without it: each clip is its own group
    if group_column:
        needed["group_column"] = group_column
    if params.test_folds or params.val_folds:
        needed["fold_column"] = params.fold_column
    for key, column in needed.items():
        if column not in columns:
            raise StepError(f"{path} has no column '{column}' (the dataset's {key}); its columns are: "
                            f"{', '.join(columns) or 'none (empty file)'}")
    if not rows:
        raise StepError(f"{path} lists no clips; add one row per WAV file")
    clips = []
    for line, row in enumerate(rows, start=2):
        name = (row.get(params.file_column) or "").strip()
        if not name:
            raise StepError(f"{path} line {line}: empty '{params.file_column}'; name the clip's WAV file")
        file = params.folder / name
        if check_files and not file.is_file():
            raise StepError(f"{path} line {line} names {name}, but {file} does not exist or is not a file; "
                            f"fix the row, or point folder at the clips")
        fold = None
        if "fold_column" in needed:
            try:
                fold = int(row[params.fold_column])
            except (TypeError, ValueError):
                raise StepError(f"{path} line {line}: fold '{row.get(params.fold_column)}' is not an integer") from None
        group = (row.get(group_column) or "").strip() if group_column else name
        clips.append(Clip(file, (row.get(params.label_column) or "").strip(), group or name, fold))
    return clips


def _regular(path: Path) -> bool:
    """Whether ``path`` (after links) is a regular file -- without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def clips_from_folders(params: AudioParams) -> list[Clip]:
    """One class per sub-folder of ``folder``; its WAV files are the clips."""
    clips = []
    subfolders = sorted(p for p in params.folder.iterdir() if p.is_dir())
    if not subfolders:
        raise StepError(f"{params.folder} has no sub-folders; give one sub-folder of WAV files per class, "
                        "or a csv naming each clip's class")
    for sub in subfolders:
        named = sorted(p for p in sub.iterdir() if p.suffix.lower() in WAV_SUFFIXES)
        odd = [p for p in named if not _regular(p)]
        if odd:  # a FIFO would hang the read, a link to /dev/zero never ends: never skip them silently
            raise StepError(f"{odd[0]} is not a regular file (a FIFO, device, directory or broken link); only "
                            "regular files are read: replace it with the WAV file itself, or remove it "
                            "from its class folder")
        nested = next((w for d in sorted(p for p in sub.iterdir() if p.is_dir() and not p.name.startswith("."))
                       for w in sorted(d.iterdir()) if w.suffix.lower() in WAV_SUFFIXES), None)
        if nested is not None:  # read nowhere: a class silently smaller than on disk would be a wrong data set
            raise StepError(f"class folder {sub} has WAV files in a sub-folder ({nested.relative_to(params.folder)}), "
                            "which are not read: a class's clips go directly in its folder; move them up, or "
                            "name every clip and its class in a csv")
        wavs = named
        if not wavs and (params.classes is None or sub.name in params.classes):
            raise StepError(f"class folder {sub} holds no .wav files; add clips of class '{sub.name}' or remove the folder")
        clips.extend(Clip(w, sub.name, f"{sub.name}/{w.name}", None) for w in wavs)
    return clips


def list_clips(params: AudioParams) -> tuple[list[Clip], list[str]]:
    """The clips to read and the class names in index order."""
    clips = clips_from_csv(params) if params.csv is not None else clips_from_folders(params)
    found = sorted({c.label for c in clips})
    source = str(params.csv) if params.csv is not None else str(params.folder)
    if params.classes is not None:
        empty = [name for name in params.classes if name not in found]
        if empty:
            raise StepError(f"class{'es' if len(empty) > 1 else ''} {', '.join(empty)} "
                            f"{'have' if len(empty) > 1 else 'has'} no clips in {source}; "
                            f"remove {'them' if len(empty) > 1 else 'it'} from classes (found: {', '.join(found)})")
        names = list(params.classes)
        clips = [c for c in clips if c.label in names]
    else:
        names = found
    if "" in names:
        raise StepError(f"{source}: some clips have an empty class name; fill in '{params.label_column}'")
    if len(names) < 2:
        raise StepError(f"{source}: found {len(names)} class ({', '.join(names)}); a classifier needs at least two")
    return clips, names


def input_files(params: AudioParams) -> dict[str, Path]:
    """Every clip the step will read, so its content enters the cache key.

    Lenient on purpose: a malformed CSV is reported by the run (with the
    line), not here; a clip the CSV names that is missing is reported at
    plan time by the core (exit 2, naming the file)."""
    try:
        clips = clips_from_csv(params, check_files=False) if params.csv is not None else clips_from_folders(params)
    except StepError:
        return {}
    return {f"clip {c.path.relative_to(params.folder).as_posix()}": c.path for c in clips}


def input_folders(params: AudioParams) -> list[Path]:
    """The folders whose listing :func:`input_files` reads: with class
    sub-folders, the root (a new class) and each class folder (a new clip),
    so the no-op fast path sees a clip added, removed or renamed. A csv
    names every clip itself (and is an input file), so nothing is listed."""
    if params.csv is not None:
        return []
    return [params.folder, *sorted(p for p in params.folder.iterdir() if p.is_dir())]


# -- turning clips into windows ------------------------------------------------------------


def _values_per_window(params: AudioParams, window: int) -> int:
    """Values one window becomes in the artifact (square padding or
    [frames, bands]), computed from the params alone."""
    from tinybuild_plugins.data import audio_signal as sig

    if params.features == "none":
        return sig.square_side(window) ** 2 if params.layout == "square" else window
    frame = int(round(params.frame_s * params.sample_rate))
    frame_hop = int(round(params.frame_hop_s * params.sample_rate))
    frames = 1 + max(window - frame, 0) // max(frame_hop, 1)
    bands = params.n_mfcc if params.features == "mfcc" else params.n_mels
    return frames * bands


def check_sizes(params: AudioParams, clips: Sequence[Clip], fix: str) -> tuple[list[Any], int]:
    """Every clip's WAV header, checked against the limits before any audio is
    read or resampled: the clip's length (:data:`MAX_CLIP_SECONDS`), its
    decoded size (:data:`MAX_CLIP_BYTES`) and the windowed data set they add
    up to (:data:`MAX_DATASET_BYTES`), each error naming the file or the keys
    and the fix. Returns the headers and the windowed bytes compared with the
    limit."""
    from tinybuild_plugins.data import audio_signal as sig

    window = int(round(params.window_s * params.sample_rate))
    hop = int(round(params.hop * params.sample_rate))
    headers, windows = [], 0
    for clip in clips:
        head = sig.probe(clip.path, fix)
        if head.seconds > MAX_CLIP_SECONDS:
            raise StepError(
                f"{clip.path}: its header declares {head.frames:,} frames at {head.rate:,} Hz, "
                f"{head.seconds:,.1f} s; clips are limited to {MAX_CLIP_SECONDS} s "
                f"({MAX_CLIP_SECONDS * params.sample_rate:,} samples at sample_rate = {params.sample_rate} Hz). "
                "Split the recording into shorter clips (e.g. sox in.wav part.wav trim 0 60 : newfile : restart), "
                f"re-export it with its real sample rate if the header is wrong, or {fix}")
        decoded = head.frames * head.channels * 8
        if decoded > MAX_CLIP_BYTES:
            raise StepError(
                f"{clip.path}: its header declares {head.frames:,} frames x {head.channels:,} channels, "
                f"{decoded:,} bytes once decoded (float64); the limit is {MAX_CLIP_BYTES:,} bytes per clip. "
                f"Mix it down to mono or split it into shorter clips, or {fix}")
        headers.append(head)
        length = sig.resampled_length(head.frames, head.rate, params.sample_rate)
        windows += sig.window_count(length, window, hop, params.pad_final)
    total = windows * max(window * 8, _values_per_window(params, window) * 4)
    limit = dataset_limit()
    if total > limit:
        raise StepError(
            f"the {len(clips):,} clips would make {windows:,} windows of {params.window_s} s every {params.hop} s "
            f"at {params.sample_rate} Hz, {total:,} bytes of windows and features; the limit is {limit:,} bytes. "
            "Raise hop_s, lower sample_rate, shorten window_s (or raise frame_hop_s with features), or use "
            f"fewer clips (classes); on a machine with the memory (the step needs up to ~4x), set "
            f"{MAX_DATASET_BYTES_ENV} to more bytes")
    return headers, total


def dataset_limit() -> int:
    """:data:`MAX_DATASET_BYTES`, or ``$TINYBUILD_AUDIO_MAX_BYTES`` where set."""
    raw = os.environ.get(MAX_DATASET_BYTES_ENV, "").strip()
    if not raw:
        return MAX_DATASET_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StepError(f"{MAX_DATASET_BYTES_ENV} = {raw!r} is not a positive number of bytes; set it to one "
                        f"(e.g. {8 << 30} for 8 GiB) or unset it for the default {MAX_DATASET_BYTES:,}")
    return value


def _clip_windows(params: AudioParams, clips: Sequence[Clip], fix: str) -> tuple[np.ndarray, list[int], list[float]]:
    """``(windows, windows per clip, seconds per clip)``: every clip's windows
    in one preallocated float64 array (sizes checked by :func:`check_sizes`
    first; no per-clip copies held besides the resampled signals)."""
    from tinybuild_plugins.data import audio_signal as sig

    window = int(round(params.window_s * params.sample_rate))
    hop = int(round(params.hop * params.sample_rate))
    if window < 1 or hop < 1:
        raise StepError(f"window_s {params.window_s} s / hop_s {params.hop} s give less than one sample at "
                        f"{params.sample_rate} Hz; use longer windows or a higher sample_rate")
    check_sizes(params, clips, fix)
    signals, seconds = [], []
    for clip in clips:
        signal, rate = sig.read_mono(clip.path, fix)
        seconds.append(len(signal) / rate)
        signals.append(sig.resample(signal, rate, params.sample_rate))
    longest = max(len(s) for s in signals)
    if window > longest:
        raise StepError(f"window_s = {params.window_s} s is longer than every clip (the longest is "
                        f"{max(seconds):.3f} s); use a window_s of at most {max(seconds):.3f}")
    counts = [sig.window_count(len(s), window, hop, params.pad_final) for s in signals]
    out = np.zeros((sum(counts), window), dtype=np.float64)
    row = 0
    for signal, n in zip(signals, counts):
        sig.windows(signal, window, hop, params.pad_final, out=out[row:row + n])
        row += n
    return out, counts, seconds


def _features(params: AudioParams, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Model inputs from ``(n, window)`` raw windows, and what meta.json says about them."""
    from tinybuild_plugins.data import audio_signal as sig

    if params.features == "none":
        if params.layout == "square":
            side = sig.square_side(x.shape[1])
            return x, {"layout": "square", "side": side}
        return x, {"layout": "1d"}
    frame = int(round(params.frame_s * params.sample_rate))
    frame_hop = int(round(params.frame_hop_s * params.sample_rate))
    if frame < 2 or frame_hop < 1 or frame > x.shape[1]:
        raise StepError(f"frame_s {params.frame_s} s / frame_hop_s {params.frame_hop_s} s do not fit a "
                        f"{params.window_s} s window at {params.sample_rate} Hz; pick a frame between 2 samples and the window")
    if params.features == "log-mel":
        feats = sig.log_mel(x, params.sample_rate, frame, frame_hop, params.n_mels)
    else:
        feats = sig.mfcc(x, params.sample_rate, frame, frame_hop, params.n_mels, params.n_mfcc)
    return feats, {"features": params.features, "frame_samples": frame, "frame_hop_samples": frame_hop,
                   "n_mels": params.n_mels, **({"n_mfcc": params.n_mfcc} if params.features == "mfcc" else {})}


def run(ctx: StepContext, inputs: Sequence[Any], params: AudioParams) -> dict[str, Any]:
    from tinybuild_plugins.data import audio_signal as sig

    where = f"dataset '{ctx.step}'"
    fix = (f"fix or remove its row in {Path(params.csv).name}" if params.csv is not None
           else "remove it from its class folder")
    clips, class_names = list_clips(params)
    if params.test_folds or params.val_folds:
        present = {c.fold for c in clips}
        for key, folds in (("test_folds", params.test_folds), ("val_folds", params.val_folds)):
            unknown = sorted(set(folds) - present)
            if unknown:
                raise StepError(f"{where}: {key} {unknown} match no clip; the clips' folds are {sorted(present)}")
    raw, counts, seconds = _clip_windows(params, clips, fix)
    if not any(counts):
        raise StepError(f"{where}: no clip is as long as a {params.window_s} s window; set pad_final = true or shorten window_s")
    label_of = {name: i for i, name in enumerate(class_names)}
    group_ids = {g: i for i, g in enumerate(sorted({c.group for c in clips}))}
    y = np.repeat([label_of[c.label] for c in clips], counts).astype(np.int64)
    groups = np.repeat([group_ids[c.group] for c in clips], counts).astype(np.int64)
    folds = np.repeat([c.fold if c.fold is not None else -1 for c in clips], counts).astype(np.int64)

    if params.test_folds or params.val_folds:
        mixed = _splits.folds_within_groups(groups, folds)
        if mixed:
            names = sorted(g for g, i in group_ids.items() if i in set(mixed))
            raise StepError(f"{where}: group(s) {', '.join(names[:5])} have clips in more than one fold; "
                            "their windows would leak across splits. Fix the folds or the group_column")
    indices = _splits.group_split_indices(
        groups, y, params.split, ctx.seed, stratify=params.stratify,
        folds=folds, test_folds=params.test_folds, val_folds=params.val_folds)
    if len(indices["train"]) == 0:
        raise StepError(f"{where}: the train split is empty ({len(group_ids)} groups); give train a larger fraction "
                        "or fewer test/val folds")
    summary = _splits.split_summary(y, groups, indices, class_names)
    errors, warnings = _splits.coverage_problems(summary["class_counts"], where)
    if errors:
        raise StepError("; ".join(errors))
    for warning in warnings:
        ctx.log(f"warning: {warning}")

    features, shape_facts = _features(params, raw)
    xs, normalization = scale_features({s: features[i][..., np.newaxis] for s, i in indices.items()},
                                       params.scale, where)
    if shape_facts.get("layout") == "square":
        xs = {s: sig.to_square(v[..., 0])[..., np.newaxis] for s, v in xs.items()}
    ys = {s: y[i] for s, i in indices.items()}
    input_shape = [int(d) for d in xs["train"].shape[1:]]
    meta = {
        "input_shape": input_shape,
        "num_classes": len(class_names),
        "class_names": class_names,
        "normalization": normalization,
        "split": params.split.model_dump(),
        "test_folds": params.test_folds,
        "val_folds": params.val_folds,
        "stratified": params.stratify,
        "seed": ctx.seed,
        **summary,
        "audio": {
            "sample_rate": params.sample_rate,
            "window_s": params.window_s,
            "hop_s": params.hop,
            "window_samples": int(raw.shape[1]),
            "pad_final": params.pad_final,
            "clips": len(clips),
            "clip_seconds": {"min": round(min(seconds), 6), "max": round(max(seconds), 6),
                             "mean": round(float(np.mean(seconds)), 6)},
            **shape_facts,
        },
        "source": {"format": "audio", "labels": "csv" if params.csv is not None else "folders",
                   "groups": len(group_ids), "samples": int(len(y))},
    }
    save_dataset(ctx.out_dir, xs, ys, meta, where=where)
    ctx.log(f"{len(clips)} clips -> {len(y)} windows of {params.window_s} s at {params.sample_rate} Hz, "
            f"shape {input_shape}; " + ", ".join(f"{s} {len(ys[s])} ({summary['groups'][s]} groups)" for s in SPLITS))
    return {
        "samples": int(len(y)),
        **{f"{s}_samples": int(len(ys[s])) for s in SPLITS},
        "num_classes": len(class_names),
        "input_shape": input_shape,
        "clips": len(clips),
        "warnings": warnings,
        "source": {"format": "audio", "folder": Path(params.folder).name,
                   **({"csv": Path(params.csv).name} if params.csv is not None else {})},
    }


AUDIO = StepType(
    name="audio",
    version=VERSION,
    produces=Kind.DATASET,
    run=run,
    params=AudioParams,
    arity=(0, 0),
    toolchain=("numpy", "soundfile", "soxr", "scipy"),
    description="Dataset from WAV clips (labels from a CSV or sub-folders): mono, resampled, windowed, "
                "standardized, square or 1-D or log-mel/MFCC; split by clip or source recording.",
    input_files=input_files,
    input_folders=input_folders,
    uses_names=False,  # output depends on content only
    fingerprint_modules=("tinybuild_plugins.data.audio_signal", "tinybuild_plugins.data.splits",
                         "tinybuild_plugins.data.datasets", "tinybuild_plugins.sdk.dataset"),
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [AUDIO]
