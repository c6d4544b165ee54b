"""Group-aware train/val/test splitting, shared by every dataset step.

Why groups: samples cut from the same source (windows of one audio clip,
frames of one recording, photos of one object) are near copies of each
other. A sample-by-sample split puts neighbours of a test sample into the
train split, and the test accuracy measures memory, not generalization. Here
every sample carries a *group* id and a whole group lands in exactly one
split. Predefined folds (ESC-50's ``fold`` column) are groups of groups: the
listed ``test_folds`` / ``val_folds`` go to test / val, the rest to train.

The cut is a pure function of (groups, labels, fractions, seed), so the same
data and seed give the same bytes. With ``stratify`` each class's groups are
cut separately (a group's class is its most frequent label), so every split
keeps the class balance as far as whole groups allow.

The split report (``class_counts`` in meta.json) counts samples per class per
split; :func:`coverage_problems` turns gaps into an error (a class with no
train samples cannot be learned) or warnings (a class missing from val/test
is simply not measured there).

Pure NumPy; no TensorFlow.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

SPLITS = ("train", "val", "test")


class Fractions(Protocol):
    train: float
    val: float
    test: float


def _cut(items: np.ndarray, fractions: Fractions) -> dict[str, np.ndarray]:
    """Consecutive slices of ``items`` with sizes rounded per split, the
    remainder going to test (the rule ``datasets.split_indices`` uses)."""
    n = len(items)
    n_train = int(round(n * fractions.train))
    n_val = min(int(round(n * fractions.val)), n - n_train)
    return {"train": items[:n_train], "val": items[n_train:n_train + n_val], "test": items[n_train + n_val:]}


def group_labels(groups: np.ndarray, y: np.ndarray) -> dict[int, int]:
    """Each group's class: its most frequent label (ties: the smaller label)."""
    out: dict[int, int] = {}
    for g in np.unique(groups):
        labels, counts = np.unique(y[groups == g], return_counts=True)
        out[int(g)] = int(labels[np.argmax(counts)])
    return out


def group_split_indices(
    groups: np.ndarray,
    y: np.ndarray,
    fractions: Fractions,
    seed: int,
    *,
    stratify: bool,
    folds: np.ndarray | None = None,
    test_folds: Sequence[int] = (),
    val_folds: Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """Sample indices per split such that no group is in two splits.

    ``groups``: one integer group id per sample. With ``folds`` (one fold
    number per sample, constant within a group) and ``test_folds`` or
    ``val_folds``, folds decide: listed folds go to test / val, every other
    fold to train, and ``fractions`` are not used. Otherwise groups are
    shuffled with ``seed`` and cut by ``fractions`` (per class with
    ``stratify``). Indices within a split are shuffled with the seed so
    classes and groups are interleaved.
    """
    groups = np.asarray(groups, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    if folds is not None and (test_folds or val_folds):
        folds = np.asarray(folds, dtype=np.int64)
        assigned: dict[str, list[int]] = {s: [] for s in SPLITS}
        for g in unique:
            fold = int(folds[np.flatnonzero(groups == g)[0]])
            split = "test" if fold in test_folds else "val" if fold in val_folds else "train"
            assigned[split].append(int(g))
        chosen = {s: np.asarray(v, dtype=np.int64) for s, v in assigned.items()}
    elif stratify:
        by_class = group_labels(groups, y)
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for label in sorted(set(by_class.values())):
            members = np.asarray([g for g, c in by_class.items() if c == label], dtype=np.int64)
            for s, part in _cut(rng.permutation(members), fractions).items():
                parts[s].append(part)
        chosen = {s: np.concatenate(parts[s]) if parts[s] else np.zeros(0, np.int64) for s in SPLITS}
    else:
        chosen = _cut(rng.permutation(unique), fractions)
    return {s: rng.permutation(np.flatnonzero(np.isin(groups, chosen[s]))).astype(np.int64) for s in SPLITS}


def folds_within_groups(groups: np.ndarray, folds: np.ndarray) -> list[int]:
    """Groups whose samples sit in more than one fold (their folds would leak)."""
    bad = []
    for g in np.unique(groups):
        if len(np.unique(folds[groups == g])) > 1:
            bad.append(int(g))
    return bad


def class_counts(y: np.ndarray, indices: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{split: {class name: samples}}``: the split report for meta.json."""
    return {
        s: {str(name): int(np.count_nonzero(y[indices[s]] == c)) for c, name in enumerate(class_names)}
        for s in SPLITS
    }


def group_counts(groups: np.ndarray, indices: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Distinct groups per split."""
    return {s: int(len(np.unique(groups[indices[s]]))) for s in SPLITS}


def coverage_problems(counts: Mapping[str, Mapping[str, int]], where: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) for classes missing from a split.

    A class absent from train cannot be learned: an error. A class absent from
    a non-empty val or test split is not measured there: a warning (small data
    sets with few groups per class hit this honestly)."""
    errors, warnings = [], []
    for split in SPLITS:
        per_class = counts[split]
        if split != "train" and not any(per_class.values()):
            continue  # an empty split (fraction 0) is a choice, not a gap
        missing = [name for name, n in per_class.items() if n == 0]
        if not missing:
            continue
        text = (f"{where}: class{'es' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"{'have' if len(missing) > 1 else 'has'} no samples in the {split} split")
        if split == "train":
            errors.append(text + "; add clips of that class, give train a larger fraction, or change the folds")
        else:
            warnings.append(text + f"; its {split} figures will not cover that class")
    return errors, warnings


def split_summary(y: np.ndarray, groups: np.ndarray, indices: Mapping[str, np.ndarray],
                  class_names: Sequence[str]) -> dict[str, Any]:
    """What meta.json records about a group split."""
    return {"class_counts": class_counts(y, indices, class_names), "groups": group_counts(groups, indices)}
