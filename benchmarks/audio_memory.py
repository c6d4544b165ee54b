"""Peak memory of the ``audio`` dataset step against the size its limit checks.

Usage: python benchmarks/audio_memory.py [--clips 60] [--seconds 5] [--hop 0.1]

The step refuses a data set whose *windowed bytes* -- windows x the larger of
(window samples x 8: the float64 windows it cuts) and (values per window x 4:
the float32 features it writes), computed from the WAV headers before any
clip is read -- exceed ``MAX_DATASET_BYTES``. This script shows what that
figure means in memory: it writes synthetic 16 kHz clips (two classes), runs
the step through the ``tinybuild`` CLI in a child process per layout, and
prints the child's peak RSS, the peak of a child that only imports the same
libraries (the baseline), and (peak - baseline) / windowed bytes. The README
quotes the largest ratio ("up to ~4x").

Prints a table; exits 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"square": 'layout = "square"', "1d": 'layout = "1d"', "log-mel": 'features = "log-mel"'}
BASELINE = ("import numpy, scipy.signal, scipy.fft, soundfile, soxr; "
            "import tinybuild.cli, tinybuild_plugins.data.audio, tinybuild_plugins.data.audio_signal")


def peak_rss_mib(argv: list[str], cwd: Path) -> float:
    """Peak resident memory (MiB) of one child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYBUILD_")}
    env["TINYBUILD_CACHE_DIR"] = str(cwd / "cache")
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"{argv} failed: {child.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60, help="clips in all (two classes)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per clip")
    parser.add_argument("--hop", type=float, default=0.1, help="hop_s (window_s is 1.0)")
    args = parser.parse_args()

    import numpy as np
    import soundfile

    from tinybuild_plugins.data import audio as audio_mod
    from tinybuild_plugins.data.audio import AUDIO, list_clips

    rate = 16000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(args.clips):
            folder = work / "clips" / "ab"[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            soundfile.write(str(folder / f"{i}.wav"), rng.uniform(-0.5, 0.5, int(args.seconds * rate)), rate,
                            subtype="PCM_16")
        baseline = peak_rss_mib([sys.executable, "-c", BASELINE], work)
        print(f"{args.clips} clips of {args.seconds} s at {rate} Hz, window_s 1.0, hop_s {args.hop}; "
              f"baseline (imports only) {baseline:.0f} MiB")
        print("| layout | windowed bytes (checked) | peak RSS | (peak - baseline) / windowed bytes |")
        print("|---|---|---|---|")
        for name, line in LAYOUTS.items():
            params = {"folder": str(work / "clips"), "sample_rate": rate, "window_s": 1.0, "hop_s": args.hop}
            key, value = line.split(" = ")
            params[key] = value.strip('"')
            p = AUDIO.params.model_validate(params)
            clips, _ = list_clips(p)
            _, checked = audio_mod.check_sizes(p, clips, "fix")  # the figure the step compares with its limit
            recipe = work / f"{name}.toml"
            recipe.write_text(f'[recipe]\nname = "{name}"\n[dataset]\nuse = "audio"\nfolder = "clips"\n'
                              f"sample_rate = {rate}\nwindow_s = 1.0\nhop_s = {args.hop}\n{line}\n")
            peak = peak_rss_mib([sys.executable, "-m", "tinybuild", "build", str(recipe)], work)
            print(f"| {name} | {checked / 2**20:,.0f} MiB | {peak:,.0f} MiB | {(peak - baseline) * 2**20 / checked:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
