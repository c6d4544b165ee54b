"""The ``audio`` dataset step and group-aware splitting, on WAV files made here.

Every test writes its own tiny clips (tones, noise, clicks; 8/16/24-bit PCM
and float; several rates and channel counts), so nothing depends on
downloaded data. Bad input must end in a ``StepError`` (or a validation
error for params) that names the file and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tinybuild.api import StepError
from tinybuild.testing import run_step

from tinybuild_plugins.data import audio_signal as sig
from tinybuild_plugins.data import splits
from tinybuild_plugins.data.audio import AUDIO, input_files
from tinybuild_plugins.data.datasets import NPZ, Split

#: (subtype, sample rate, channels): every flavour a recorder may write
FLAVOURS = [("PCM_U8", 8000, 1), ("PCM_16", 11025, 2), ("PCM_24", 16000, 1), ("FLOAT", 22050, 3),
            ("PCM_16", 16000, 1), ("PCM_32", 12000, 2)]
CLASSES = ("tone", "noise", "clicks")


def make_signal(kind: str, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    if kind == "tone":
        return 0.5 * np.sin(2 * np.pi * rng.uniform(300, 600) * t)
    if kind == "noise":
        return rng.uniform(-0.4, 0.4, len(t))
    clicks = np.zeros(len(t))
    clicks[:: max(1, rate // 20)] = 0.9
    return clicks


def write_wav(path: Path, signal: np.ndarray, rate: int, subtype: str, channels: int) -> Path:
    import soundfile

    data = np.repeat(signal[:, None], channels, axis=1) if channels > 1 else signal
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, rate, subtype=subtype, format="WAV")
    return path


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory) -> Path:
    """One sub-folder per class, 6 clips each (one per flavour), 1.2-2 s long."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        for i, (subtype, rate, channels) in enumerate(FLAVOURS):
            seconds = 1.2 + 0.16 * i
            write_wav(root / kind / f"{kind}_{i}.wav", make_signal(kind, seconds, rate, rng), rate, subtype, channels)
    return root


@pytest.fixture(scope="module")
def csv_clips(tmp_path_factory) -> Path:
    """ESC-50-shaped: audio/ plus meta.csv (filename, fold, category, src_file);
    two clips share each source recording, folds 1-3."""
    root = tmp_path_factory.mktemp("esc")
    rng = np.random.default_rng(1)
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for c, kind in enumerate(CLASSES):
        for i in range(6):
            name = f"{i % 3 + 1}-{c}{i // 2}-{'AB'[i % 2]}-{c}.wav"
            write_wav(root / "audio" / name, make_signal(kind, 1.0, 16000, rng), 16000, "PCM_16", 1)
            # src_file shared by clips 2k and 2k+1; their fold must agree
            fold = (i // 2) % 3 + 1
            rows.append(f"{name},{fold},{c},{kind},False,{c}{i // 2},{'AB'[i % 2]}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return root


def audio(params: dict, tmp_path: Path, seed: int = 0):
    return run_step(AUDIO, [], params, out_dir=tmp_path / "out", seed=seed, recipe_dir=tmp_path)


def arrays(artifact) -> tuple[dict, dict, dict]:
    x = {s: np.load(artifact.path / f"x_{s}.npy") for s in ("train", "val", "test")}
    y = {s: np.load(artifact.path / f"y_{s}.npy") for s in ("train", "val", "test")}
    return x, y, json.loads((artifact.path / "meta.json").read_text())


# -- the pipeline --------------------------------------------------------------------------


def test_every_flavour_is_read_windowed_and_standardized(clip_folders, tmp_path):
    art = audio({"folder": str(clip_folders), "sample_rate": 8000, "window_s": 0.5, "layout": "1d",
                 "split": {"train": 0.5, "val": 0.17, "test": 0.33}}, tmp_path)
    x, y, meta = arrays(art)
    assert meta["class_names"] == sorted(CLASSES)
    assert meta["input_shape"] == [4000, 1]
    # clip i lasts 1.2 + 0.16 i s at 8 kHz: windows of 0.5 s every 0.25 s, the last one padded
    lengths = [round((1.2 + 0.16 * i) * 8000) for i in range(6)]
    per_class = sum(sig.window_count(n, 4000, 2000, True) for n in lengths)
    assert sum(meta["splits"].values()) == 3 * per_class
    assert meta["splits"] == {s: len(y[s]) for s in y}
    # z-score with train statistics: train is exactly mean 0 / std 1, stats recorded for the firmware
    assert abs(float(x["train"].mean())) < 1e-4 and abs(float(x["train"].std()) - 1) < 1e-4
    assert meta["normalization"]["scale"] == "standardize" and meta["normalization"]["std"][0] > 0
    assert meta["groups"] == {"train": 9, "val": 3, "test": 6}  # whole clips, 18 in all
    counts = meta["class_counts"]
    assert {s: sum(c.values()) for s, c in counts.items()} == meta["splits"]
    assert all(n > 0 for c in counts.values() for n in c.values())


def test_square_layout_pads_to_ceil_sqrt(clip_folders, tmp_path):
    art = audio({"folder": str(clip_folders), "sample_rate": 8000, "window_s": 0.25, "hop_s": 0.25,
                 "split": {"train": 0.5, "val": 0.17, "test": 0.33}}, tmp_path)
    x, _, meta = arrays(art)
    assert meta["input_shape"] == [45, 45, 1] and meta["audio"]["side"] == 45  # 2000 samples -> 45^2 = 2025
    # the 25 padding cells of every window are zero, after standardization
    flat = x["train"].reshape(len(x["train"]), -1)
    assert np.all(flat[:, 2000:] == 0) and np.any(flat[:, 1990:2000] != 0)


@pytest.mark.parametrize("features, bands", [("log-mel", 20), ("mfcc", 13)])
def test_spectral_features(clip_folders, tmp_path, features, bands):
    art = audio({"folder": str(clip_folders), "sample_rate": 8000, "features": features, "n_mels": 20,
                 "split": {"train": 0.5, "val": 0.17, "test": 0.33}}, tmp_path)
    x, _, meta = arrays(art)
    # 8000-sample windows, 200-sample frames every 80: 1 + (8000 - 200) // 80 = 98 frames
    assert meta["input_shape"] == [98, bands, 1]
    assert np.isfinite(x["train"]).all() and meta["audio"]["features"] == features


def test_same_seed_same_bytes_other_seed_other_split(clip_folders, tmp_path):
    params = {"folder": str(clip_folders), "sample_rate": 4000, "window_s": 0.5}
    a = audio(params, tmp_path / "a")
    b = audio(params, tmp_path / "b")
    c = audio(params, tmp_path / "c", seed=1)
    assert a.digest == b.digest and a.digest != c.digest


def test_csv_groups_never_span_splits(csv_clips, tmp_path):
    art = audio({"folder": str(csv_clips / "audio"), "csv": str(csv_clips / "meta.csv"), "group_column": "src_file",
                 "sample_rate": 8000, "window_s": 0.2, "split": {"train": 0.34, "val": 0.33, "test": 0.33}}, tmp_path)
    _, y, meta = arrays(art)
    # 9 source recordings (3 per class), 2 clips each: a recording in two splits would count twice
    assert meta["groups"] == {"train": 3, "val": 3, "test": 3}
    assert sum(meta["groups"].values()) == 9
    assert all(n == 18 for c in meta["class_counts"].values() for n in c.values())  # 2 clips x 9 windows


def test_predefined_folds(csv_clips, tmp_path):
    art = audio({"folder": str(csv_clips / "audio"), "csv": str(csv_clips / "meta.csv"), "group_column": "src_file",
                 "sample_rate": 8000, "window_s": 0.5, "test_folds": [3], "val_folds": [2]}, tmp_path)
    _, _, meta = arrays(art)
    # each class has one recording (2 clips x 3 windows) per fold
    assert meta["splits"] == {"train": 18, "val": 18, "test": 18}
    assert meta["test_folds"] == [3] and meta["val_folds"] == [2]


def test_input_files_cover_every_clip(csv_clips, clip_folders):
    from tinybuild_plugins.data.audio import AudioParams

    by_csv = input_files(AudioParams(folder=csv_clips / "audio", csv=csv_clips / "meta.csv"))
    assert len(by_csv) == 18 and all(p.is_file() for p in by_csv.values())
    by_folder = input_files(AudioParams(folder=clip_folders))
    assert len(by_folder) == 18


def test_listed_folders_are_declared_for_the_fast_path(csv_clips, clip_folders):
    """Every folder input_files lists is declared (a new clip there must
    rebuild); a csv names its clips itself, so it lists none."""
    from tinybuild_plugins.data.audio import AUDIO, AudioParams

    declared = AUDIO.input_folders(AudioParams(folder=clip_folders))
    assert declared == [clip_folders, *(clip_folders / kind for kind in sorted(CLASSES))]
    assert {p.parent for p in input_files(AudioParams(folder=clip_folders)).values()} <= set(declared)
    assert AUDIO.input_folders(AudioParams(folder=csv_clips / "audio", csv=csv_clips / "meta.csv")) == []


# -- splitting (pure functions) ------------------------------------------------------------


@pytest.mark.parametrize("stratify", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_never_shares_a_group(seed, stratify):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 40, 500)
    y = groups % 4  # a group has one class, as a clip does
    idx = splits.group_split_indices(groups, y, Split(train=0.6, val=0.2, test=0.2), seed, stratify=stratify)
    seen = [set(groups[idx[s]].tolist()) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(500))


def test_coverage_problems():
    counts = {"train": {"a": 3, "b": 0}, "val": {"a": 0, "b": 0}, "test": {"a": 1, "b": 0}}
    errors, warnings = splits.coverage_problems(counts, "dataset 'd'")
    assert len(errors) == 1 and "b has no samples in the train split" in errors[0]
    assert len(warnings) == 1 and "test split" in warnings[0]  # the empty val split is a choice


def test_window_helpers():
    assert sig.window_count(10, 4, 2, True) == 4  # 0,2,4,6 full, and they reach the end
    assert sig.window_count(11, 4, 2, True) == 5  # ... plus 8..11, padded
    assert sig.window_count(11, 4, 2, False) == 4
    assert sig.window_count(3, 4, 2, True) == 1 and sig.window_count(3, 4, 2, False) == 0
    w = sig.windows(np.arange(1, 12, dtype=float), 4, 2, True)
    assert w[-1].tolist() == [9, 10, 11, 0]
    assert sig.square_side(30000) == 174 and sig.square_side(29929) == 173
    assert sig.to_square(np.ones((2, 5))).shape == (2, 3, 3)


def test_mono_mix_down_and_resampling(tmp_path):
    rate = 8000
    left = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    import soundfile

    soundfile.write(str(tmp_path / "st.wav"), np.stack([left, 0.5 * left], axis=1), rate, subtype="PCM_24")
    mono, got = sig.read_mono(tmp_path / "st.wav", "fix it")
    assert got == rate and np.allclose(mono, 0.75 * left, atol=1e-6)  # 24-bit keeps ~1e-7
    up = sig.resample(mono, rate, 16000)
    assert len(up) == 16000 and abs(np.abs(up).max() - 0.375) < 0.01


# -- npz with groups ----------------------------------------------------------------------


def test_npz_group_key(tmp_path):
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 5)
    y = groups % 2
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(100, 3)).astype(np.float32), y=y, g=groups)
    art = run_step(NPZ, [], {"file": str(tmp_path / "d.npz"), "group_key": "g", "scale": "none"},
                   out_dir=tmp_path / "out")
    meta = json.loads((art.path / "meta.json").read_text())
    assert sum(meta["groups"].values()) == 20  # every group in exactly one split
    assert {s: sum(c.values()) for s, c in meta["class_counts"].items()} == meta["splits"]
    plain = run_step(NPZ, [], {"file": str(tmp_path / "d.npz"), "scale": "none"}, out_dir=tmp_path / "plain")
    assert "groups" not in json.loads((plain.path / "meta.json").read_text())  # default bytes unchanged


# -- bad input ----------------------------------------------------------------------------


@pytest.fixture()
def one_good_clip_each(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for kind in ("tone", "noise"):
        for i in range(3):
            write_wav(tmp_path / "clips" / kind / f"{i}.wav", make_signal(kind, 0.5, 8000, rng), 8000, "PCM_16", 1)
    return tmp_path / "clips"


@pytest.mark.parametrize("content, expected", [
    (b"", r"is empty \(0 bytes\)"),
    (b"this is text, not audio\n" * 4, "not a readable WAV file"),
])
def test_unreadable_clip_names_the_file(one_good_clip_each, tmp_path, content, expected):
    bad = one_good_clip_each / "tone" / "bad.wav"
    bad.write_bytes(content)
    with pytest.raises(StepError, match=expected) as err:
        audio({"folder": str(one_good_clip_each), "window_s": 0.25}, tmp_path)
    assert str(bad) in str(err.value) and "remove it from its class folder" in str(err.value)


def test_truncated_clip(one_good_clip_each, tmp_path):
    good = (one_good_clip_each / "tone" / "0.wav").read_bytes()
    bad = one_good_clip_each / "tone" / "cut.wav"
    bad.write_bytes(good[:30])  # cut inside the header
    with pytest.raises(StepError, match="cut.wav"):
        audio({"folder": str(one_good_clip_each), "window_s": 0.25}, tmp_path)
    bad.write_bytes(good[:44])  # a header, no samples
    with pytest.raises(StepError, match="cut.wav is truncated"):
        audio({"folder": str(one_good_clip_each), "window_s": 0.25}, tmp_path)


@pytest.mark.parametrize("keep", [60, 2000])
def test_a_cut_clip_is_truncated_not_short(one_good_clip_each, tmp_path, keep):
    """libsndfile reads a cut file's remaining samples without complaint; the
    header's declared sizes show it was cut (it used to become a 0.001 s clip)."""
    good = (one_good_clip_each / "tone" / "0.wav").read_bytes()  # 0.5 s at 8 kHz, PCM_16: 8,000 data bytes
    bad = one_good_clip_each / "tone" / "cut.wav"
    bad.write_bytes(good[:keep])
    with pytest.raises(StepError) as err:
        audio({"folder": str(one_good_clip_each), "window_s": 0.25}, tmp_path)
    message = str(err.value)
    assert f"{bad} is truncated" in message and "re-export" in message
    assert "8,000 bytes" in message and f"{keep:,} bytes in all" in message


def test_an_odd_sized_data_chunk_may_lack_its_pad_byte(tmp_path):
    from tinybuild_plugins.data.audio_signal import read_mono

    path = write_wav(tmp_path / "odd.wav", np.zeros(101), 8000, "PCM_U8", 1)
    data = path.read_bytes()
    assert len(data) % 2 == 0 and data[-1:] == b"\x00"  # 101 data bytes + 1 pad byte
    path.write_bytes(data[:-1])
    signal, rate = read_mono(path, "fix")
    assert len(signal) == 101 and rate == 8000


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_a_wav_name_that_is_not_a_regular_file_is_an_error(one_good_clip_each, tmp_path, kind):
    odd = one_good_clip_each / "tone" / "odd.wav"
    os.mkfifo(odd) if kind == "fifo" else odd.symlink_to("/dev/zero")
    with pytest.raises(StepError, match="only regular files are read") as err:
        audio({"folder": str(one_good_clip_each), "window_s": 0.25}, tmp_path)
    assert str(odd) in str(err.value)


def test_header_with_sample_rate_zero(one_good_clip_each, tmp_path):
    data = bytearray((one_good_clip_each / "tone" / "0.wav").read_bytes())
    data[24:28] = (0).to_bytes(4, "little")  # the fmt chunk's sample rate
    bad = one_good_clip_each / "tone" / "zero.wav"
    bad.write_bytes(bytes(data))
    with pytest.raises(StepError, match="zero.wav") as err:
        audio({"folder": str(one_good_clip_each), "window_s": 0.25}, tmp_path)
    assert "sample rate" in str(err.value) or "not a readable WAV" in str(err.value)


def test_sample_rate_param_zero(one_good_clip_each, tmp_path):
    with pytest.raises(ValidationError, match="sample_rate"):
        audio({"folder": str(one_good_clip_each), "sample_rate": 0}, tmp_path)


def test_csv_naming_a_missing_file(csv_clips, tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text((csv_clips / "meta.csv").read_text() + "ghost.wav,1,0,tone,False,99,A\n")
    with pytest.raises(StepError, match=r"meta.csv line 20 names ghost.wav.*fix the row"):
        audio({"folder": str(csv_clips / "audio"), "csv": str(csv)}, tmp_path)
    # at plan time the core digests every listed clip: a missing one is a recipe error (exit 2) naming it
    from tinybuild_plugins.data.audio import AudioParams

    listed = input_files(AudioParams(folder=csv_clips / "audio", csv=csv))
    assert listed["clip ghost.wav"] == csv_clips / "audio" / "ghost.wav"


def test_csv_without_the_label_column(csv_clips, tmp_path):
    with pytest.raises(StepError, match="no column 'label'.*columns are: filename, fold"):
        audio({"folder": str(csv_clips / "audio"), "csv": str(csv_clips / "meta.csv"), "label_column": "label"}, tmp_path)


def test_class_with_no_clips(one_good_clip_each, tmp_path):
    with pytest.raises(StepError, match="class siren has no clips.*remove it from classes"):
        audio({"folder": str(one_good_clip_each), "classes": ["tone", "siren"]}, tmp_path)
    (one_good_clip_each / "empty").mkdir()
    with pytest.raises(StepError, match="holds no .wav files.*'empty'"):
        audio({"folder": str(one_good_clip_each)}, tmp_path)


def test_clips_in_a_sub_folder_of_a_class_are_not_silently_skipped(one_good_clip_each, tmp_path):
    tone = next(p for p in sorted(one_good_clip_each.iterdir()) if p.is_dir())
    (tone / "take2").mkdir()
    wav = next(tone.glob("*.wav"))
    (tone / "take2" / wav.name).write_bytes(wav.read_bytes())
    with pytest.raises(StepError, match=r"has WAV files in a sub-folder .*take2.*not read"):
        audio({"folder": str(one_good_clip_each)}, tmp_path)


def test_window_longer_than_every_clip(one_good_clip_each, tmp_path):
    with pytest.raises(StepError, match=r"window_s = 2.0 s is longer than every clip.*0.500"):
        audio({"folder": str(one_good_clip_each), "window_s": 2.0}, tmp_path)


def test_class_missing_from_train_is_an_error(one_good_clip_each, tmp_path):
    # 3 clips per class, train 0.1 of them rounds to 0 clips for every class
    with pytest.raises(StepError, match="train split"):
        audio({"folder": str(one_good_clip_each), "window_s": 0.25,
               "split": {"train": 0.1, "val": 0.2, "test": 0.7}}, tmp_path)


def test_missing_folder_names_the_variable(tmp_path):
    with pytest.raises(ValidationError, match="audio folder not found.*TINYBUILD_DATA"):
        audio({"folder": str(tmp_path / "nowhere")}, tmp_path)


# -- the squeezenet architecture on audio windows -------------------------------------------


def test_squeezenet_on_audio_windows_through_qat_to_int8(clip_folders, tmp_path):
    from tinybuild_plugins.keras.architectures import squeezenet
    from tinybuild_plugins.keras.models import KERAS
    from tinybuild_plugins.keras.qat import QAT
    from tinybuild_plugins.keras.train import TRAIN
    from tinybuild_plugins.tflite.convert import tinybuild_step_types as tflite_types

    assert squeezenet((90, 90, 1), 6, {}).count_params() == 15_510  # the figure the README gives
    with pytest.raises(StepError, match=r"option fire must be a non-empty list of \[squeeze, expand\] pairs"):
        squeezenet((90, 90, 1), 6, {"fire": [8, 16]})

    data = run_step(AUDIO, [], {"folder": str(clip_folders), "sample_rate": 4000, "window_s": 0.25,
                                "split": {"train": 0.5, "val": 0.17, "test": 0.33}}, out_dir=tmp_path / "d")
    model = run_step(KERAS, [], {"architecture": "squeezenet", "options": {"fire": [[4, 8], [4, 8]], "dropout": 0.2}},
                     dataset=data, out_dir=tmp_path / "m")
    trained = run_step(TRAIN, [model], {"epochs": 2, "batch_size": 16}, dataset=data, out_dir=tmp_path / "t")
    qat = run_step(QAT, [trained], {"epochs": 1, "batch_size": 16}, dataset=data, out_dir=tmp_path / "q")
    [tflite] = tflite_types()
    int8 = run_step(tflite, [qat], {"quantize": "int8"}, dataset=data, out_dir=tmp_path / "i")
    assert int8.metrics["weight_dtypes"].get("int8", 0) > 0
    assert int8.metrics["training"] == [{"optimization": "trained", "epochs_run": 2, "batch_size": 16},
                                        {"optimization": "qat", "epochs_run": 1, "batch_size": 16}]


def test_group_spanning_folds_is_an_error(csv_clips, tmp_path):
    rows = (csv_clips / "meta.csv").read_text().splitlines()
    first = rows[1].split(",")
    first[1] = "3" if first[1] != "3" else "1"  # move one take of a recording to another fold
    csv = tmp_path / "meta.csv"
    csv.write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    with pytest.raises(StepError, match=r"group\(s\) 00 have clips in more than one fold"):
        audio({"folder": str(csv_clips / "audio"), "csv": str(csv), "group_column": "src_file",
               "test_folds": [3]}, tmp_path)


def test_nan_samples(one_good_clip_each, tmp_path):
    signal = np.zeros(4000)
    signal[100] = np.nan
    write_wav(one_good_clip_each / "noise" / "nan.wav", signal, 8000, "FLOAT", 1)
    with pytest.raises(StepError, match=r"nan.wav holds NaN or infinite samples"):
        audio({"folder": str(one_good_clip_each), "window_s": 0.25}, tmp_path)


def test_default_groups_follow_src_file_where_the_csv_has_it(csv_clips, tmp_path):
    params = {"folder": str(csv_clips / "audio"), "sample_rate": 8000, "window_s": 0.5,
              "split": {"train": 0.34, "val": 0.33, "test": 0.33}}
    art = audio({**params, "csv": str(csv_clips / "meta.csv")}, tmp_path / "a")
    assert sum(json.loads((art.path / "meta.json").read_text())["groups"].values()) == 9  # recordings
    rows = [",".join(r.split(",")[:5]) for r in (csv_clips / "meta.csv").read_text().splitlines()]
    (tmp_path / "plain.csv").write_text("\n".join(rows) + "\n")  # no src_file column
    art = audio({**params, "csv": str(tmp_path / "plain.csv")}, tmp_path / "b")
    assert sum(json.loads((art.path / "meta.json").read_text())["groups"].values()) == 18  # clips
    with pytest.raises(StepError, match="has no column 'src_file' \\(the dataset's group_column\\)"):
        audio({**params, "csv": str(tmp_path / "plain.csv"), "group_column": "src_file"}, tmp_path / "c")


# -- memory bounds, checked from the headers and the params before any audio is read -------


def test_a_header_declaring_a_1_hz_rate_is_refused_before_resampling(one_good_clip_each, tmp_path):
    """400 frames at 1 Hz is 400 s: 3.2 M samples at 8 kHz here, and a 100 KB
    file of this kind was 4e8 samples (a MemoryError naming nothing)."""
    import time
    import tracemalloc

    bad = write_wav(one_good_clip_each / "tone" / "slow.wav", np.zeros(400), 1, "PCM_16", 1)
    tracemalloc.start()
    start = time.monotonic()
    with pytest.raises(StepError) as err:
        audio({"folder": str(one_good_clip_each), "window_s": 0.25, "sample_rate": 8000}, tmp_path)
    seconds, peak = time.monotonic() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = str(err.value)
    assert str(bad) in message and "400 frames at 1 Hz" in message and "limited to 300 s" in message
    assert "Split the recording" in message and "remove it from its class folder" in message
    assert seconds < 5 and peak < 16 << 20, (seconds, peak)


def test_a_clip_too_large_to_decode_is_refused(one_good_clip_each, tmp_path, monkeypatch):
    from tinybuild_plugins.data import audio as audio_mod

    bad = write_wav(one_good_clip_each / "tone" / "wide.wav", np.zeros(4000), 8000, "PCM_16", 6)
    monkeypatch.setattr(audio_mod, "MAX_CLIP_BYTES", 4000 * 5 * 8)  # the mono clips (4,000 x 8 B) pass
    with pytest.raises(StepError) as err:
        audio({"folder": str(one_good_clip_each), "window_s": 0.25}, tmp_path)
    assert str(bad) in str(err.value) and "4,000 frames x 6 channels" in str(err.value)
    assert "Mix it down to mono or split it" in str(err.value)


@pytest.mark.parametrize("extra", [{"layout": "square"}, {"layout": "1d", "hop_s": 0.01},
                                   {"features": "log-mel", "n_mels": 8}, {"features": "mfcc", "n_mfcc": 5}],
                         ids=["square", "1d", "log-mel", "mfcc"])
def test_the_dataset_size_limit_is_exact_and_computed_from_headers(one_good_clip_each, tmp_path,
                                                                  monkeypatch, extra):
    """The size estimated from the headers and params (before reading) is
    exactly the larger of the float64 windows and the float32 features the
    artifact holds: one byte under it is refused, at it the build passes."""
    from tinybuild_plugins.data import audio as audio_mod

    params = {"folder": str(one_good_clip_each), "window_s": 0.25, "sample_rate": 6000, **extra}
    built = audio(params, tmp_path / "free")
    x, y, meta = arrays(built)
    windows = sum(len(v) for v in y.values())
    size = max(windows * meta["audio"]["window_samples"] * 8, sum(v.size * 4 for v in x.values()))
    monkeypatch.setattr(audio_mod, "MAX_DATASET_BYTES", size)
    audio(params, tmp_path / "at")
    monkeypatch.setattr(audio_mod, "MAX_DATASET_BYTES", size - 1)
    with pytest.raises(StepError) as err:
        audio(params, tmp_path / "over")
    message = str(err.value)
    assert f"{size:,} bytes of windows and features" in message and "Raise hop_s, lower sample_rate" in message
    monkeypatch.setenv("TINYBUILD_AUDIO_MAX_BYTES", str(size))  # the override, for a machine with the memory
    audio(params, tmp_path / "env")
    monkeypatch.setenv("TINYBUILD_AUDIO_MAX_BYTES", "lots")
    with pytest.raises(StepError, match="TINYBUILD_AUDIO_MAX_BYTES = 'lots' is not a positive number"):
        audio(params, tmp_path / "bad-env")


@pytest.mark.parametrize("params, words", [
    ({"hop_s": 0.000125}, ["hop_s = 0.000125 s is below window_s / 100", "raise hop_s"]),
    ({"window_s": 0.5, "hop_s": 0.00499}, ["hop_s = 0.00499 s is below window_s / 100"]),
    ({"window_s": 0.0001, "hop_s": 0.0001, "sample_rate": 2000}, ["less than one sample", "sample_rate = 2000 Hz"]),
    ({"features": "log-mel", "frame_hop_s": 0.0002}, ["frame_hop_s = 0.0002 s is below frame_s / 100"]),
], ids=["1-sample-hop", "just-under", "under-a-sample", "frame-hop"])
def test_hops_that_balloon_the_data_are_refused_at_plan_time(one_good_clip_each, params, words):
    """A 1-sample hop on nine 2 s clips took 2.5 GB and then a MemoryError:
    now it is a params error (exit 2 at plan), with no file read."""
    with pytest.raises(ValidationError) as err:
        AUDIO.params.model_validate({"folder": str(one_good_clip_each), "sample_rate": 8000, **params})
    for word in words:
        assert word in str(err.value), str(err.value)


def test_the_hop_floor_admits_a_hundredth_of_the_window(one_good_clip_each, tmp_path):
    art = audio({"folder": str(one_good_clip_each), "window_s": 0.25, "hop_s": 0.0025, "layout": "1d"}, tmp_path)
    _, y, meta = arrays(art)
    assert meta["audio"]["hop_s"] == 0.0025 and sum(len(v) for v in y.values()) == 6 * 101


def test_log_mel_in_chunks_gives_the_same_values(monkeypatch):
    x = np.random.default_rng(3).standard_normal((9, 2000))
    whole = sig.log_mel(x, 8000, 200, 80, 16)
    monkeypatch.setattr(sig, "STFT_CHUNK_BYTES", 1)  # one window at a time
    np.testing.assert_array_equal(sig.log_mel(x, 8000, 200, 80, 16), whole)
