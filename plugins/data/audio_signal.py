"""Signal processing for the ``audio`` dataset step: read, mix down, resample,
cut into windows, reshape, and (optionally) compute spectral features.

Why these libraries: ``soundfile`` (libsndfile) reads every WAV flavour a
recorder writes (8/16/24/32-bit PCM, float, any channel count, WAVE_FORMAT_
EXTENSIBLE) and reports broken files as errors instead of noise; ``soxr`` is
a well-kept, deterministic high-quality resampler. Both are imported inside
the functions, so planning and cached builds never load them.

The log-mel filterbank is written out here (a dozen lines of NumPy on top of
``scipy.signal.stft``): the usual library for it (librosa) is not a
dependency of this project, and the HTK mel formula is short and standard.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tinybuild.api import StepError

from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

#: libsndfile major formats that are WAV containers
WAV_FORMATS = ("WAV", "WAVEX", "RF64", "W64")


@dataclass(frozen=True)
class WavHeader:
    """What a WAV file's header declares: enough to bound the cost of a clip
    (samples read, samples after resampling) before reading any audio."""

    frames: int
    rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def probe(path: Path, fix: str) -> WavHeader:
    """The header of a WAV file, checked: a regular file, not truncated, a WAV
    container, a positive sample rate, at least one frame.

    ``fix`` is appended to every error: what the user can do about a bad file
    (e.g. "fix or remove its row in meta.csv")."""
    import soundfile

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise StepError(f"audio file not found: {path}; {fix}") from None
    except OSError as exc:
        raise StepError(f"cannot read audio file {path}: {exc.strerror or exc}; {fix}") from None
    if not stat.S_ISREG(mode):
        raise StepError(f"{path} is not a regular file (only regular files are read); {fix}")
    truncation = riff_truncation(path)
    if truncation:
        raise StepError(f"{path} is truncated: {truncation}; re-export the file (or copy it again), or {fix}")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, ValueError, OSError) as exc:  # LibsndfileError is a RuntimeError
        raise _unreadable(path, exc, fix) from None
    if info.format not in WAV_FORMATS:
        raise StepError(f"{path} is a {info.format_info} file, not a WAV file; convert it to WAV or {fix}")
    if info.samplerate <= 0:
        raise StepError(f"{path}: its header declares a sample rate of {info.samplerate} Hz; "
                        f"re-export the file with its real sample rate, or {fix}")
    if info.frames <= 0:
        raise StepError(f"{path} holds no audio samples (a header without data, or truncated); "
                        f"re-export it, or {fix}")
    return WavHeader(frames=int(info.frames), rate=int(info.samplerate), channels=int(info.channels))


def _unreadable(path: Path, exc: BaseException, fix: str) -> StepError:
    size = path.stat().st_size
    what = "is empty (0 bytes)" if size == 0 else f"is not a readable WAV file ({_short(exc)})"
    return StepError(f"{path} {what}; re-export it as WAV (PCM or float), or {fix}")


def read_mono(path: Path, fix: str) -> tuple[np.ndarray, int]:
    """(float64 samples in [-1, 1], sample rate) of a WAV file, channels averaged
    (checked first with :func:`probe`; callers bound its size from the header)."""
    import soundfile

    probe(path, fix)
    try:
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, ValueError, OSError) as exc:  # LibsndfileError is a RuntimeError
        raise _unreadable(path, exc, fix) from None
    if data.shape[0] == 0:
        raise StepError(f"{path} holds no audio samples (a header without data, or truncated); "
                        f"re-export it, or {fix}")
    if not np.isfinite(data).all():
        raise StepError(f"{path} holds NaN or infinite samples; re-export it, or {fix}")
    return data.mean(axis=1), int(rate)


def resampled_length(frames: int, rate: int, target: int) -> int:
    """Samples :func:`resample` returns for ``frames`` at ``rate`` (soxr keeps
    the duration: ``ceil(frames * target / rate)``, exactly, in integers)."""
    return frames if rate == target else -(-frames * target // rate)


#: a RIFF size field a streaming writer leaves unset (it could not seek back)
_UNSET_SIZES = (0, 0xFFFFFFFF)


def riff_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is shorter than its header says, or None.

    libsndfile reads a cut WAV file without complaint: it returns the samples
    that are there, so a 60-byte stub of a one-second clip became a 0.001 s
    clip, silently padded into a window. The header knows better: the RIFF
    chunk size and the ``data`` chunk size declare how long the file is. One
    missing pad byte (the RIFF chunk of an odd-sized chunk) is tolerated;
    sizes a streaming writer left unset (0 or 0xFFFFFFFF) and files that are
    not RIFF/WAVE (RF64, W64...) are not judged here."""
    actual = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        riff = int.from_bytes(head[4:8], "little")
        data_offset = data_size = None
        offset = 12
        while offset + 8 <= actual:  # walk the chunks to the data chunk
            f.seek(offset)
            chunk = f.read(8)
            size = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                data_offset, data_size = offset + 8, size
                break
            offset += 8 + size + (size & 1)
    riff_short = riff not in _UNSET_SIZES and actual < riff + 8 - 1
    data_short = (data_size is not None and data_size not in _UNSET_SIZES
                  and actual < data_offset + data_size)
    if not (riff_short or data_short):
        return None
    declared = [f"{riff + 8:,} bytes in all (RIFF chunk size {riff:,})"] if riff not in _UNSET_SIZES else []
    if data_size is not None and data_size not in _UNSET_SIZES:
        declared.append(f"{data_size:,} bytes of samples (data chunk)")
    return f"its header declares {' and '.join(declared)}, but the file has {actual:,} bytes in all"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def resample(signal: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``signal`` at ``target`` Hz (soxr, high quality; unchanged if equal)."""
    if rate == target:
        return signal
    import soxr

    return np.asarray(soxr.resample(signal, rate, target, quality="HQ"), dtype=np.float64)


def window_count(length: int, window: int, hop: int, pad_final: bool) -> int:
    """Windows cut from ``length`` samples: every full window at multiples of
    ``hop``, plus (with ``pad_final``) one zero-padded window covering the
    tail that the full ones miss (or the whole clip, if shorter than a window)."""
    if length < window:
        return 1 if pad_final else 0
    full = 1 + (length - window) // hop
    covered = (full - 1) * hop + window
    return full + (1 if pad_final and covered < length else 0)


def windows(signal: np.ndarray, window: int, hop: int, pad_final: bool, out: np.ndarray | None = None) -> np.ndarray:
    """``(n, window)`` windows of ``signal`` (see :func:`window_count`), written
    into ``out`` (zeros of that shape) when given, so a caller can fill one
    preallocated array for every clip."""
    n = window_count(len(signal), window, hop, pad_final)
    if out is None:
        out = np.zeros((n, window), dtype=np.float64)
    for i in range(n):
        part = signal[i * hop:i * hop + window]
        out[i, :len(part)] = part
    return out


def square_side(length: int) -> int:
    """Side of the smallest square holding ``length`` samples: ceil(sqrt(n))."""
    return math.isqrt(length - 1) + 1 if length > 0 else 0


def to_square(x: np.ndarray) -> np.ndarray:
    """``(n, length)`` rows -> ``(n, side, side)``, zero-padded at the end of each row
    (the thesis's 1-D to 2-D reshape, so a 2-D CNN can read a window)."""
    side = square_side(x.shape[1])
    padded = np.zeros((x.shape[0], side * side), dtype=x.dtype)
    padded[:, :x.shape[1]] = x
    return padded.reshape(x.shape[0], side, side)


def mel_filterbank(rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` triangular filters equally spaced on the HTK
    mel scale (mel = 2595 log10(1 + f / 700)), each peaking at 1."""
    def to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    bins = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
    bank = np.zeros((n_mels, len(bins)))
    for m in range(n_mels):
        lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (bins - lo) / max(centre - lo, 1e-9)
        falling = (hi - bins) / max(hi - centre, 1e-9)
        bank[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


#: Bytes of STFT intermediates (complex spectrum + power, 24 bytes a bin) that
#: :func:`log_mel` holds at once: windows are processed in chunks under it.
#: Each window's features are computed on their own, so chunking changes no value.
STFT_CHUNK_BYTES = 256 << 20


def log_mel(x: np.ndarray, rate: int, frame: int, hop: int, n_mels: int) -> np.ndarray:
    """``(n, frames, n_mels)`` log mel energies of ``(n, length)`` windows
    (Hann frames of ``frame`` samples every ``hop``; log(energy + 1e-10)),
    in chunks of windows so the spectra never take more than
    :data:`STFT_CHUNK_BYTES` (they are ~30x the size of the features)."""
    if frame > x.shape[1]:
        raise ValueError(f"frame of {frame} samples is longer than the window ({x.shape[1]} samples)")
    bank = mel_filterbank(rate, frame, n_mels, 0.0, rate / 2.0)
    frames = 1 + (x.shape[1] - frame) // hop
    rows = max(1, STFT_CHUNK_BYTES // ((frame // 2 + 1) * frames * 24))
    out = np.empty((x.shape[0], frames, n_mels), dtype=np.float64)
    for start in range(0, x.shape[0], rows):
        out[start:start + rows] = _log_mel_rows(x[start:start + rows], rate, frame, hop, bank)
    return out


def _log_mel_rows(x: np.ndarray, rate: int, frame: int, hop: int, bank: np.ndarray) -> np.ndarray:
    from scipy import signal as sps

    _, _, spec = sps.stft(x, fs=rate, window="hann", nperseg=frame, noverlap=frame - hop,
                          boundary=None, padded=False, axis=-1)
    power = np.abs(spec) ** 2  # (n, freqs, frames)
    mel = np.einsum("mf,nft->ntm", bank, power)
    return np.log(mel + 1e-10)


def mfcc(x: np.ndarray, rate: int, frame: int, hop: int, n_mels: int, n_mfcc: int) -> np.ndarray:
    """``(n, frames, n_mfcc)`` MFCCs: DCT-II (orthonormal) of the log mel energies."""
    from scipy import fft

    return fft.dct(log_mel(x, rate, frame, hop, n_mels), type=2, norm="ortho", axis=-1)[..., :n_mfcc]
