"""The ``evaluate`` step type: score a Keras model or a .tflite model on held-out data.

Both kinds are measured the same way on the dataset's test split (or ``val``):
accuracy, per-class precision/recall/F1, confusion matrix (rows = true class,
columns = predicted), parameter count, kernel sparsity, file size and gzip
size. A .tflite model runs in the LiteRT interpreter exactly as deployed
(int8 inputs quantized with the input tensor's scale/zero-point, int8 outputs
dequantized) and also gets a tensor-arena estimate (see ``_arena``).

Sizes: for a .tflite, the file; for a Keras model, its weight files
(``weights/*.npy`` in name order; the architecture JSON is not a deployable
byte). gzip uses level 9 and mtime 0, so the figure is reproducible.

Latency is different from everything else: it depends on the machine and on
the load at the moment, so it is NOT written to ``metrics.json``. It is part
of the metrics the step returns (kept by the cache next to the artifact, and
visible to the ``report`` step through ``Artifact.metrics``). That keeps
``metrics.json`` byte-reproducible, and -- more importantly -- keeps early
cutoff working: re-running an evaluation gives the same artifact digest, so
the report downstream stays cached instead of being rebuilt for a latency
jitter nobody asked about.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field

from tinybuild.api import Artifact, Kind, ParamProblem, Params, StepError, StepType, StepView, hookimpl

from tinybuild_plugins.report import classification as _classification
from tinybuild_plugins.report import lineage as _lineage
from tinybuild_plugins.sdk import tf as _tf
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

METRICS_FILE = "metrics.json"

#: upstream metric keys that describe the machine or the moment, not the model
_VOLATILE_KEY = re.compile(r"(second|time|latency|duration|elapsed|date|_ms\Z|_s\Z|host|path)", re.IGNORECASE)


class EvaluateParams(Params):
    split: Literal["test", "val"] = Field("test", description="dataset split to evaluate on")
    latency_runs: int = Field(
        50, ge=0, le=100_000,
        description="timed single-sample (batch 1) inferences; the median is reported. "
                    "0 skips the latency measurement",
    )
    warmup_runs: int = Field(5, ge=0, le=10_000, description="untimed inferences before timing")
    tflm: bool = Field(
        False,
        description="also run the .tflite model on TensorFlow Lite Micro (in a child process): "
                    "whether it runs, its measured arena, accuracy, agreement with LiteRT "
                    "(metrics.json 'tflm')",
    )
    tflm_arena_kb: float = Field(
        1024, gt=0, le=1 << 20,
        description="arena TFLM is given (KiB); a model that needs more is reported as not running",
    )


# -- pure metric computations (tested against hand computations) --------------------------


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def classification_metrics(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 (0 where undefined), macro F1.

    Macro F1 averages over the classes that occur in the labels *or* the
    predictions (scikit-learn's convention): a class absent from both has no
    F1 to speak of, and counting it as 0 would punish a perfect model on a
    split that happens to miss a class (e.g. a small val split)."""
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    per_class = []
    for c, name in enumerate(class_names):
        tp = int(matrix[c, c])
        predicted = int(matrix[:, c].sum())
        actual = int(matrix[c, :].sum())
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, actual)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class.append({"class": str(name), "precision": precision, "recall": recall, "f1": f1, "support": actual})
    present = [p for c, p in enumerate(per_class) if matrix[c, :].sum() or matrix[:, c].sum()]
    return {
        "accuracy": _ratio(correct, total),
        "correct": correct,
        "samples": total,
        "macro_f1": _ratio(sum(p["f1"] for p in present), len(present)),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def kernel_sparsity(arrays: Sequence[np.ndarray]) -> float:
    """Fraction of exact zeros among kernel weights (arrays of rank >= 2): what
    pruning sets to zero. Biases and normalization statistics are excluded."""
    kernels = [np.asarray(a) for a in arrays if np.ndim(a) >= 2]
    total = sum(k.size for k in kernels)
    return _ratio(sum(int(np.count_nonzero(k == 0)) for k in kernels), total)


def gzip_size(data: bytes) -> int:
    """Size after gzip -9 with a zero mtime (reproducible)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def upstream_facts(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The producing step's own metrics, minus anything machine- or time-dependent
    (so that metrics.json stays reproducible). Scalars and short scalar lists only."""
    facts: dict[str, Any] = {}
    for key in sorted(metrics):
        value = metrics[key]
        if _VOLATILE_KEY.search(str(key)):
            continue
        if isinstance(value, (str, bool, int, float)) or value is None:
            facts[str(key)] = value
        elif isinstance(value, list) and len(value) <= 32 and all(
            isinstance(v, (str, bool, int, float)) for v in value
        ):
            facts[str(key)] = list(value)
    return facts


# -- the two model kinds ----------------------------------------------------------------


def _evaluate_tflite(ctx: Any, artifact: Artifact, x: np.ndarray, params: EvaluateParams) -> tuple[np.ndarray, dict, float | None]:
    from tinybuild_plugins.report import macs as _macs
    from tinybuild_plugins.tflite import arena as _arena
    from tinybuild_plugins.tflite import litert as _litert

    data = artifact.file("model.tflite").read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise StepError(f"model.tflite of '{artifact.step}' is not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        runner, litert_error = _litert.interpreter(data), None
    except StepError as exc:  # e.g. TFLM's DECODE ops (tflm-compress): TFLM scores it instead
        if not params.tflm:
            raise
        runner, litert_error = None, str(exc)
    outputs = None if runner is None else _litert.predict(
        runner, x, on_progress=lambda done, total: ctx.progress(done, total, "inference"))
    facts = _litert.describe(data)
    arena = _arena.estimate_arena(data)
    latency = None
    if params.latency_runs and len(x) and runner is not None:
        latency = _litert.tflite_latency_ms(runner, x[:1], params.warmup_runs, params.latency_runs)
    info = {
        "param_count": facts["param_count"],
        "sparsity": facts["sparsity"],
        "size_bytes": len(data),
        "gzip_bytes": gzip_size(data),
        "arena": arena.as_dict(),
        "macs": _macs.tflite_macs(data)["total"],  # multiply-accumulates per inference, see report/macs.py
        "tflite": {k: facts[k] for k in ("input_dtypes", "output_dtypes", "weight_dtypes", "ops")},
        **({"scored_on": "tflm", "litert_error": litert_error} if runner is None else {}),
    }
    return outputs, info, latency


def _evaluate_keras(ctx: Any, artifact: Artifact, x: np.ndarray, params: EvaluateParams) -> tuple[np.ndarray, dict, float | None]:
    from tinybuild_plugins.report import macs as _macs
    from tinybuild_plugins.tflite import litert as _litert
    from tinybuild_plugins.sdk.keras_model import load_keras_model, read_model_meta

    tf = _tf.tensorflow()
    model = load_keras_model(artifact.path)
    if len(model.inputs) != 1:
        raise StepError(f"model '{artifact.step}' has {len(model.inputs)} inputs; evaluate supports "
                        "single-input models only")
    expected = tuple(None if d is None else int(d) for d in model.input_shape[1:])  # None: any size
    if len(expected) != x.ndim - 1 or any(e is not None and e != d for e, d in zip(expected, x.shape[1:])):
        raise StepError(
            f"model '{artifact.step}' expects inputs of shape {list(expected)} but the dataset "
            f"has {list(x.shape[1:])}"
        )
    ctx.progress(0, 1, "inference")
    outputs = np.asarray(model.predict(x, batch_size=256, verbose=0)) if len(x) else np.zeros((0, 0))
    weight_files = sorted(name for name in artifact.files if name.startswith("weights/"))
    blob = b"".join(artifact.file(name).read_bytes() for name in weight_files)
    latency = None
    if params.latency_runs and len(x):
        infer = tf.function(lambda v: model(v, training=False))
        sample = tf.constant(x[:1])
        infer(sample)  # trace once, so tracing never lands in a timed run
        latency = _litert.median_latency_ms(lambda: infer(sample).numpy(), params.warmup_runs, params.latency_runs)
    info = {
        "param_count": int(model.count_params()),
        "sparsity": kernel_sparsity([w.numpy() for w in model.weights]),
        "size_bytes": len(blob),
        "gzip_bytes": gzip_size(blob),
        "arena": None,
        "macs": _macs.keras_macs(model)["total"],  # multiply-accumulates per inference, see report/macs.py
        "keras": {"optimization": read_model_meta(artifact.path).get("optimization", "none"),
                  "weight_files": len(weight_files)},
    }
    return outputs, info, latency


def check_tflm_input(params: EvaluateParams, inputs: Sequence[StepView]) -> list[ParamProblem]:
    """``tflm = true`` on a Keras model fails at plan time (exit 2), not after
    the model trained; ``run`` checks again."""
    if params.tflm and inputs and inputs[0].produces != Kind.TFLITE:
        source = inputs[0]
        return [ParamProblem("tflm", f"tflm = true runs a .tflite model on TFLite Micro, but '{source.name}' "
                                     f"produces a {source.produces}",
                             f"evaluate a 'tflite' conversion of '{source.name}', or remove tflm = true")]
    return []


def run(ctx: Any, inputs: Sequence[Artifact], params: EvaluateParams) -> dict[str, Any]:
    from tinybuild_plugins.sdk.dataset import load_dataset

    source = inputs[0]
    if ctx.dataset is None:  # the core guarantees it for uses_dataset; run_step may not
        raise StepError(f"step '{ctx.step}': evaluate needs the recipe's [dataset]")
    dataset = load_dataset(ctx.dataset.path)
    x, y = dataset.x[params.split], dataset.y[params.split]
    if len(y) == 0:
        raise StepError(f"step '{ctx.step}': the dataset's {params.split} split is empty")
    _tf_seed(ctx, source)

    if params.tflm and source.kind != Kind.TFLITE:
        raise StepError(f"step '{ctx.step}': tflm = true runs a .tflite model on TFLite Micro, but "
                        f"'{source.step}' is a {source.kind}; convert it with a 'tflite' step first")
    if source.kind == Kind.TFLITE:
        outputs, info, latency = _evaluate_tflite(ctx, source, x, params)
    else:
        outputs, info, latency = _evaluate_keras(ctx, source, x, params)
    names = dataset.meta.get("class_names") or [str(c) for c in range(dataset.num_classes)]
    if params.tflm:
        info["tflm"], tflm_outputs = _tflm_section(ctx, source, x, y, outputs, names, params.tflm_arena_kb)
        if outputs is None:  # LiteRT cannot load it: the scores are TFLM's ("scored_on")
            if tflm_outputs is None:
                raise StepError(f"step '{ctx.step}': neither LiteRT ({info['litert_error']}) nor TFLM "
                                f"({info['tflm']['reason']}) runs '{source.step}'")
            outputs = tflm_outputs
    if outputs.ndim != 2 or outputs.shape[0] != len(y):
        raise StepError(f"step '{ctx.step}': model '{source.step}' returned outputs of shape "
                        f"{list(outputs.shape)} for {len(y)} samples; expected one score per class")
    num_classes = dataset.num_classes
    if outputs.shape[1] != num_classes:
        raise StepError(f"step '{ctx.step}': model '{source.step}' has {outputs.shape[1]} outputs but the "
                        f"dataset has {num_classes} classes")
    if y.min() < 0 or y.max() >= num_classes:
        raise StepError(f"step '{ctx.step}': labels of the {params.split} split fall outside 0..{num_classes - 1}")
    predictions = np.argmax(outputs, axis=1)
    scores = classification_metrics(confusion_matrix(y, predictions, num_classes), names)
    _classification.add_one_vs_rest_accuracy(scores)  # per_class[i]["accuracy"]

    metrics = {
        "variant": source.step,
        "model_kind": source.kind,
        "split": params.split,
        **scores,
        **info,
        "class_names": [str(n) for n in names],
        "upstream": {**upstream_facts(source.metrics), **_lineage.carried_facts(source.metrics)},
        "dataset": _lineage.dataset_facts(dataset.meta),
        **_compression(source),
        "latency": "not stored here (machine-dependent): see the evaluate step's returned metrics",
    }
    (ctx.out_dir / METRICS_FILE).write_text(
        json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
    )
    arena = info["arena"]["peak_bytes"] if info["arena"] else None
    ctx.log(
        f"{source.step}: accuracy {scores['accuracy']:.4f}, {info['size_bytes']} B "
        f"({info['gzip_bytes']} B gzip)"
        + (f", arena ~{arena} B" if arena is not None else "")
        + (f", {latency:.3f} ms/inference" if latency is not None else "")
    )
    return {
        "variant": source.step,
        "model_kind": source.kind,
        "accuracy": scores["accuracy"],
        "size_bytes": info["size_bytes"],
        "gzip_bytes": info["gzip_bytes"],
        "param_count": info["param_count"],
        "sparsity": info["sparsity"],
        "macs": info["macs"],
        "arena_bytes": arena,
        "latency_ms": latency,
        "latency_runs": params.latency_runs if latency is not None else 0,
        **({"tflm_runs": info["tflm"]["runs"], "tflm_arena_bytes": info["tflm"]["arena_bytes"]}
           if "tflm" in info else {}),
    }


def _tflm_section(ctx: Any, source: Artifact, x: np.ndarray, y: np.ndarray, outputs: np.ndarray | None,
                 names: Sequence[str], arena_kb: float) -> tuple[dict[str, Any], np.ndarray | None]:
    """The same split on TFLite Micro, scored like the LiteRT run (see ``tflm``):
    (the ``tflm`` section, TFLM's outputs or None)."""
    from tinybuild_plugins.tflite import tflm


    def score(predicted: np.ndarray) -> dict[str, Any]:
        if len(predicted) != len(y) or (len(predicted) and int(predicted.max()) >= len(names)):
            raise StepError(f"step '{ctx.step}': on TFLM, '{source.step}' gives outputs that do not match the "
                            f"{len(y)} samples and {len(names)} classes of the dataset")
        scores = classification_metrics(confusion_matrix(y, predicted, len(names)), names)
        _classification.add_one_vs_rest_accuracy(scores)  # as for the LiteRT run: per_class[i]["accuracy"]
        return scores

    try:
        section, tflm_outputs = tflm.evaluate_on_tflm(source.file("model.tflite"), x, y, outputs, arena_kb, score)
    except StepError as exc:
        raise StepError(f"step '{ctx.step}': '{source.step}' on TFLite Micro: {exc}") from None
    ctx.log(f"{source.step}: " + (_tflm_log_line(section) if section["runs"] else
                                  "does not run on TFLM: " + _cause(section.get("reason"))))
    return section, tflm_outputs


def _cause(reason: str | None) -> str:
    """tflm_child words a refusal "does not run on TFLM: <cause>": the cause alone."""
    reason = reason or "no reason given"
    prefix = "does not run on TFLM: "
    return reason[len(prefix):] if reason.startswith(prefix) else reason


def _tflm_log_line(section: Mapping[str, Any]) -> str:
    """What a TFLM run found; the agreement with LiteRT only where LiteRT ran
    (a model LiteRT cannot load is scored on TFLM alone)."""
    agreement = section.get("argmax_agreement")
    return (f"on TFLM: accuracy {section['accuracy']:.4f}, arena {section['arena_bytes']:,} B, "
            + (f"argmax agreement with LiteRT {agreement:.4f}" if agreement is not None
               else "scored on TFLM only (LiteRT cannot load it)"))


def _compression(source: Artifact) -> dict[str, Any]:
    """A ``tflm-compress`` model's compression facts (flash saved, arena added)."""
    section = source.metrics.get("compression")
    return {"compression": section} if isinstance(section, dict) else {}


def key_extras(params: EvaluateParams, passes: Mapping[str, Any]) -> dict[str, Any]:
    """``gzip_bytes`` comes from the zlib library Python links against, not
    from a distribution the toolchain can name: another zlib build (or
    zlib-ng) may compress to a different size, so its version is in the key."""
    return {"zlib": zlib.ZLIB_RUNTIME_VERSION}


def _tf_seed(ctx: Any, source: Artifact) -> None:
    """Keras inference under op determinism; .tflite evaluation never imports TF."""
    if source.kind != Kind.TFLITE:
        _tf.seed_everything(ctx.seed)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [
        StepType(
            name="evaluate",
            version="1.0",
            produces=Kind.METRICS,
            consumes=(Kind.KERAS_MODEL, Kind.TFLITE),
            params=EvaluateParams,
            run=run,
            uses_dataset=True,
            toolchain=("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "tflite-micro"),
            uses_input_metrics=True,  # metrics.json records facts from the evaluated step's metrics
            volatile_metrics=("latency_ms",),  # a new timing on every run: kept out of downstream keys
            key_extras=key_extras,
            check_inputs=check_tflm_input,  # tflm = true needs a .tflite input
            description="Accuracy, per-class scores, size, gzip size, arena estimate and latency "
                        "of a Keras or .tflite model (metrics.json)",
            fingerprint_modules=(
                "tinybuild_plugins.sdk.tf", "tinybuild_plugins.sdk.keras_model", "tinybuild_plugins.sdk.keras_builder",
                "tinybuild_plugins.tflite.litert",
                "tinybuild_plugins.tflite.arena", "tinybuild_plugins.sdk.dataset",
                "tinybuild_plugins.report.classification", "tinybuild_plugins.report.lineage",
                "tinybuild_plugins.report.macs",
                "tinybuild_plugins.tflite.tflm", "tinybuild_plugins.tflite.tflm_child",
                "tinybuild_plugins.tflite.op_resolver",
            ),
        )
    ]
