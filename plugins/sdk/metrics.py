"""The ``metrics`` artifact layout: one ``metrics.json``.

Written with sorted keys and fixed indentation, and without NaN/Infinity
(not JSON), so the same figures give the same bytes and early cutoff holds.
Keep run-to-run noise (wall-clock latency, timestamps) out of it: return such
figures from ``run`` as step metrics instead, which do not form the
artifact's digest.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any, Mapping

from tinybuild.api import StepError

METRICS_FILE = "metrics.json"


def write_metrics(out_dir: str | PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` as ``out_dir/metrics.json``; returns the file's path."""
    path = Path(out_dir) / METRICS_FILE
    try:
        text = json.dumps(dict(metrics), indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StepError(f"metrics are not plain JSON (numbers, strings, lists, dicts; no NaN): {exc}") from None
    path.write_text(text + "\n", encoding="utf-8")
    return path


def read_metrics(artifact: str | PathLike[str]) -> dict[str, Any]:
    """``metrics.json`` of a metrics artifact (an ``Artifact`` or its directory)."""
    path = Path(artifact) / METRICS_FILE
    if not path.is_file():
        raise StepError(f"{path} is missing: the input is not a metrics artifact (was it made by 'evaluate'?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StepError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StepError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
