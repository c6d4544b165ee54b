"""``shrinklog.txt``: a plain-text run log in the spirit of the thesis's "ShrinkLog".

What it lists: audio length, sample rate, window and the 2-D side length
(from the dataset facts ``evaluate`` records), epochs, pruning epochs, QAT
epochs and batch size (from the training lineage a model carries through
prune, QAT and conversion), and accuracy and size of the original model (the
report's baseline) and of the final model (the last variant).

Why no date: the thesis log began with one, but every report file must be
byte-reproducible (the same metrics give the same bytes, so the cache's
early cutoff works and a cached report is not stale). A date would either
break that or, taken from the cache, be wrong. tinybuild records no build
date; a CI log has one.

Facts a recipe does not have (no audio, no pruning step) are written as
"-", so the file has the same lines for every recipe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from tinybuild.api import Artifact

FILE = "shrinklog.txt"


def _load(artifact: Artifact) -> dict[str, Any]:
    try:
        data = json.loads(artifact.file("metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _epochs(training: Sequence[Mapping[str, Any]], optimization: str) -> str:
    runs = [e.get("epochs_run") for e in training if e.get("optimization") == optimization]
    runs = [r for r in runs if isinstance(r, int)]
    return " + ".join(str(r) for r in runs) if runs else "-"


def _model_line(m: Mapping[str, Any]) -> str:
    if not m:
        return "-"
    kind = "TFLite" if m.get("model_kind") == "tflite" else "Keras"
    quant = (m.get("upstream") or {}).get("quantize")
    what = f"{kind} {quant}" if quant else kind
    return (f"{m.get('variant')} ({what}): accuracy {float(m.get('accuracy', 0.0)):.4f} "
            f"on the {m.get('split', 'test')} split, {int(m.get('size_bytes', 0)):,} B")


def text(title: str, original: Mapping[str, Any], final: Mapping[str, Any]) -> str:
    """The log's text (pure: same metrics, same bytes)."""
    dataset = final.get("dataset") or original.get("dataset") or {}
    audio = dataset.get("audio") or {}
    training = (final.get("upstream") or {}).get("training") or (original.get("upstream") or {}).get("training") or []
    batch = sorted({e["batch_size"] for e in training if isinstance(e.get("batch_size"), int)})
    clip = audio.get("clip_seconds") or {}
    if clip:
        length = (f"{clip['mean']:.3f} s" if clip.get("min") == clip.get("max")
                  else f"{clip['min']:.3f}-{clip['max']:.3f} s (mean {clip['mean']:.3f} s)")
        length += f", {audio.get('clips', '?')} clips"
    else:
        length = "-"
    side = audio.get("side")
    shape = dataset.get("input_shape")
    ratio = "-"
    if original.get("size_bytes") and final.get("size_bytes"):
        ratio = f"{original['size_bytes'] / final['size_bytes']:.2f}x smaller"
    lines = [
        f"ShrinkLog: {title}",
        "(no date: the same build gives the same bytes, so a cached log is never stale)",
        "",
        f"Audio length:       {length}",
        f"Sample rate:        {str(audio['sample_rate']) + ' Hz' if 'sample_rate' in audio else '-'}",
        f"Window / hop:       {audio['window_s']:g} s / {audio['hop_s']:g} s ({audio['window_samples']} samples)"
        if "window_s" in audio else "Window / hop:       -",
        f"2-D side length:    {side} ({side} x {side}, {side * side - audio['window_samples']} zero-padded samples)"
        if side and "window_samples" in audio else "2-D side length:    -",
        f"Model input shape:  {shape if shape else '-'}",
        f"Epochs:             {_epochs(training, 'trained')}",
        f"Pruning epochs:     {_epochs(training, 'pruned')}",
        f"QAT epochs:         {_epochs(training, 'qat')}",
        f"Batch size:         {', '.join(map(str, batch)) if batch else '-'}",
        f"Original model:     {_model_line(original)}",
        f"Final model:        {_model_line(final)}",
        f"Size ratio:         {ratio}",
    ]
    return "\n".join(lines) + "\n"


def write(out_dir: Path, title: str, inputs: Sequence[Artifact], baseline: str | None) -> None:
    """Write ``shrinklog.txt``: original = the ``baseline`` variant (default
    the first input), final = the last input."""
    loaded = [_load(a) for a in inputs]
    original = next((m for m in loaded if baseline is not None and m.get("variant") == baseline), loaded[0])
    (Path(out_dir) / FILE).write_text(text(title, original, loaded[-1]), encoding="utf-8")
