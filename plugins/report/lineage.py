"""Facts an evaluation passes on to the report: how the model was trained,
and what data it saw.

``evaluate`` keeps only scalar facts of the evaluated step's metrics
(``upstream_facts``). Two structured ones matter to a report, so they are
carried explicitly, after a shape check (cache metadata of the wrong shape is
treated as absent, never trusted):

* ``history`` -- per-epoch ``loss``/``accuracy``/``val_loss``/``val_accuracy``
  of a training step (train, prune, qat, cluster), for learning curves;
* ``training`` -- the training lineage (epochs and batch size of each
  training step that led to the model), which a .tflite inherits from its
  Keras source, for the ShrinkLog's "epochs, pruning epochs, batch size".

``dataset_facts`` picks the dataset's shape and, for audio, its sample rate,
window and 2-D side length from meta.json.
"""

from __future__ import annotations

from typing import Any, Mapping

_NUMBER = (int, float)


def _history(value: Any) -> dict[str, list[float]] | None:
    if not isinstance(value, Mapping) or not value:
        return None
    out = {}
    for key, curve in value.items():
        if not isinstance(key, str) or not isinstance(curve, list):
            return None
        if not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in curve):
            return None
        out[key] = [float(v) for v in curve]
    return out


def _training(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list) or not value:
        return None
    out = []
    for entry in value:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("optimization"), str):
            return None
        out.append({k: entry[k] for k in ("optimization", "epochs_run", "batch_size")
                    if isinstance(entry.get(k), (str, int)) and not isinstance(entry.get(k), bool)})
    return out


def carried_facts(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``history`` and ``training`` of a step's metrics, where well-formed."""
    out: dict[str, Any] = {}
    history = _history(metrics.get("history"))
    if history is not None:
        out["history"] = history
    training = _training(metrics.get("training"))
    if training is not None:
        out["training"] = training
    return out


def dataset_facts(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a report says about the data: input shape, classes, split sizes,
    and the ``audio`` block of an audio dataset (sample rate, window, side)."""
    out: dict[str, Any] = {k: meta[k] for k in ("input_shape", "num_classes", "splits") if k in meta}
    if isinstance(meta.get("audio"), Mapping):
        out["audio"] = dict(meta["audio"])
    return out
