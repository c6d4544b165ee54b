"""Per-class one-vs-rest accuracy, beside precision/recall/F1.

Why a separate figure: for class ``c`` the multi-class problem is read as
"c or not c", and its accuracy (TP + TN) / all counts the samples correctly
*not* called ``c`` too. It is what the thesis tables report per class; it is
high whenever a class is rare, so it is shown next to precision and recall,
never instead of them.
"""

from __future__ import annotations

from typing import Any

from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free


def one_vs_rest_accuracy(matrix: np.ndarray) -> list[float]:
    """``(TP_c + TN_c) / N`` for every class ``c`` of a confusion matrix
    (rows = true class, columns = predicted); 0 for an empty matrix."""
    matrix = np.asarray(matrix, dtype=np.int64)
    total = int(matrix.sum())
    if total == 0:
        return [0.0] * len(matrix)
    out = []
    for c in range(len(matrix)):
        tp = int(matrix[c, c])
        fp = int(matrix[:, c].sum()) - tp
        fn = int(matrix[c, :].sum()) - tp
        out.append(float((total - fp - fn) / total))
    return out


def add_one_vs_rest_accuracy(scores: dict[str, Any]) -> dict[str, Any]:
    """Put ``accuracy`` (one-vs-rest) into each ``per_class`` entry of
    ``evaluate.classification_metrics`` output; returns ``scores``."""
    for entry, accuracy in zip(scores["per_class"], one_vs_rest_accuracy(np.asarray(scores["confusion_matrix"]))):
        entry["accuracy"] = accuracy
    return scores
