"""Numerical verification of an optimized graph against the original.

A rewrite is only worth shipping if the model still computes the same
function, so ``graph-optimize`` runs both graphs on the same sample inputs
and compares every output: the dataset's test split when it fits the graph's
input, seeded random inputs otherwise. When the whole sequence fails, each
pass application is checked on its own so the error can name the culprit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tinybuild.api import Artifact, StepError

from tinybuild_plugins.sdk.graph_edit import Graph
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

#: exact passes must agree with the original to this absolute difference
EXACT_TOLERANCE = 1e-6
#: stand-in for unknown non-batch dimensions when inventing random inputs
_UNKNOWN_DIM = 32

Feeds = "list[dict[str, np.ndarray]]"  # one feed dict per batch (a string: NumPy loads lazily)


@dataclass(frozen=True)
class SampleInputs:
    feeds: Feeds
    samples: int
    source: str  # "dataset test split" or "random (seed N)" (+ why)


def sample_inputs(signature: Mapping[str, Any], dataset: Artifact | None, samples: int, seed: int) -> SampleInputs:
    """Inputs for every signature input, batched to fit a fixed batch size."""
    inputs = signature["inputs"]
    data, note = _dataset_samples(inputs, dataset, samples)
    if data is not None:
        arrays, source = [data], "dataset test split"
    else:
        rng = np.random.default_rng(seed)
        arrays = [_random(rng, spec, samples) for spec in inputs]
        source = f"random (seed {seed})" + (f"; {note}" if note else "")
    count = len(arrays[0])
    batch = inputs[0]["shape"][0] if inputs[0].get("shape") else None
    step = count if not batch else int(batch)
    feeds = [
        {spec["tensor"]: array[start:start + step] for spec, array in zip(inputs, arrays)}
        for start in range(0, count - step + 1, step)
    ]
    return SampleInputs(feeds, count, source)


def _dataset_samples(inputs: Sequence[Mapping[str, Any]], dataset: Artifact | None, samples: int) -> tuple[np.ndarray | None, str]:
    if dataset is None:
        return None, ""
    if len(inputs) != 1:
        return None, "dataset not used: the graph has several inputs"
    from tinybuild_plugins.sdk.dataset import load_dataset

    x = load_dataset(dataset.path).x["test"]
    if len(x) == 0:
        return None, "dataset not used: its test split is empty"
    spec = inputs[0]
    shape = list(spec.get("shape") or [])
    if len(shape) != x.ndim or any(d is not None and d != s for d, s in zip(shape[1:], x.shape[1:])):
        return None, f"dataset not used: its samples {list(x.shape[1:])} do not fit input {shape[1:]}"
    count = min(samples, len(x))
    if shape[0]:  # whole batches only, at least one
        count = count // int(shape[0]) * int(shape[0])
        if count == 0:
            return None, "dataset not used: its test split is smaller than one batch"
    return np.ascontiguousarray(x[:count]).astype(spec.get("dtype", "float32")), ""


def _round_to_batch(count: int, batch: int | None) -> int:
    return count if not batch else max(1, math.ceil(count / batch)) * int(batch)


def _random(rng: np.random.Generator, spec: Mapping[str, Any], samples: int) -> np.ndarray:
    shape = list(spec.get("shape") or [None])
    shape[0] = _round_to_batch(samples, shape[0])
    shape = [_UNKNOWN_DIM if d is None else int(d) for d in shape]
    try:
        dtype = np.dtype(spec.get("dtype", "float32"))
    except TypeError:
        dtype = np.dtype(object)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise StepError(f"cannot invent verification inputs for {spec.get('tensor')} of dtype {dtype}; "
                    "give the step a dataset whose samples fit this input")


class Runner:
    """Runs graphs on fixed sample inputs, caching outputs per GraphDef."""

    def __init__(self, inputs: SampleInputs) -> None:
        self.inputs = inputs
        self._cache: dict[int, tuple[Any, list[list[np.ndarray]] | str]] = {}

    def outputs(self, graph: Graph) -> list[list[np.ndarray]] | str:
        """Per batch, every output; or the error message if the graph fails to run."""
        key = id(graph.graph_def)
        if key not in self._cache:
            self._cache[key] = (graph.graph_def, self._run(graph))  # keep the proto alive: ids stay unique
        return self._cache[key][1]

    def _run(self, graph: Graph) -> list[list[np.ndarray]] | str:
        from tinybuild_plugins.sdk import tf as _tf

        from tinybuild_plugins.sdk import tfgraph as _tfgraph

        tf = _tf.tensorflow()
        try:
            return _tfgraph.run_batches(graph.graph_def, graph.outputs, self.inputs.feeds)
        except (tf.errors.OpError, ValueError, TypeError, KeyError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"{type(exc).__name__}: {first_line}"

    def difference(self, a: Graph, b: Graph) -> tuple[float, str | None]:
        """Max absolute output difference between two graphs (inf + reason if one fails)."""
        out_a, out_b = self.outputs(a), self.outputs(b)
        for out in (out_a, out_b):
            if isinstance(out, str):
                return math.inf, f"graph fails to run ({out})"
        return max_abs_diff(out_a, out_b), None


def max_abs_diff(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> float:
    """Largest |a - b| over every batch and output (matching infinities and NaNs count as equal)."""
    worst = 0.0
    for batch_a, batch_b in zip(a, b):
        for x, y in zip(batch_a, batch_b):
            if x.shape != y.shape:
                return math.inf
            if x.size == 0:
                continue
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            same = (x64 == y64) | (np.isnan(x64) & np.isnan(y64))  # inf == inf, NaN "==" NaN
            with np.errstate(invalid="ignore"):
                diff = np.where(same, 0.0, np.abs(x64 - y64))
            diff = np.where(np.isnan(diff), math.inf, diff)
            worst = max(worst, float(diff.max()))
    return worst
