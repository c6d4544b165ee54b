"""Why a step must run: a readable diff of its key material against the lock.

Pure functions, no I/O: given the material a step has now and the material
recorded when it was last built, list the differences the way a person would
say them -- ``params.epochs 10 → 12``, ``input pruned changed``,
``plugin prune 1.0 → 1.1``, ``tensorflow 2.20.0 → 2.21.0``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

MISSING = object()


def _fmt(value: Any) -> str:
    if value is MISSING:
        return "(unset)"
    if isinstance(value, dict) and set(value) == {"sha256"}:
        return f"file {value['sha256'][:8]}"
    if isinstance(value, str):
        return value if value and " " not in value else repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value).replace("'", '"') if isinstance(value, (list, dict)) else str(value)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value and set(value) != {"sha256"}:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else k, out)
    else:
        out[prefix] = value


def diff_params(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(dict(old), "params", a)
    _flatten(dict(new), "params", b)
    reasons = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict) and "sha256" in va:
            reasons.append(f"{key} file changed")
        else:
            reasons.append(f"{key} {_fmt(va)} → {_fmt(vb)}")
    return reasons


def explain(new: Mapping[str, Any], new_inputs: Sequence[str],
            old: Mapping[str, Any] | None, old_inputs: Sequence[str] = ()) -> list[str]:
    """Reasons ``new`` differs from ``old``; empty when the material is equal."""
    if old is None:
        return ["new step"]
    reasons: list[str] = []
    if old.get("step_type") != new.get("step_type"):
        reasons.append(f"step type {old.get('step_type')} → {new.get('step_type')}")
    elif old.get("version") != new.get("version"):
        reasons.append(f"plugin {new.get('step_type')} {old.get('version')} → {new.get('version')}")
    elif old.get("fingerprint") != new.get("fingerprint"):
        reasons.append(f"plugin {new.get('step_type')} source changed")
    reasons += diff_params(old.get("params", {}), new.get("params", {}))
    old_files, new_files = old.get("files", {}), new.get("files", {})
    for label in sorted(set(old_files) | set(new_files)):
        if label not in old_files:
            reasons.append(f"file {label} added")
        elif label not in new_files:
            reasons.append(f"file {label} removed")
        elif old_files[label] != new_files[label]:
            reasons.append(f"file {label} changed")
    old_in, new_in = list(old.get("inputs", [])), list(new.get("inputs", []))
    if list(old_inputs) != list(new_inputs):
        reasons.append(f"inputs {', '.join(old_inputs) or '(none)'} → {', '.join(new_inputs) or '(none)'}")
    else:
        for name, a, b in zip(new_inputs, old_in, new_in):
            if a != b:
                reasons.append(f"input {name} changed")
    if old.get("dataset") != new.get("dataset"):
        reasons.append("input dataset changed")
    old_tc, new_tc = old.get("toolchain", {}), new.get("toolchain", {})
    for dist in sorted(set(old_tc) | set(new_tc)):
        if old_tc.get(dist) != new_tc.get(dist):
            reasons.append(f"{dist} {old_tc.get(dist, '(none)')} → {new_tc.get(dist, '(none)')}")
    for field, label in (("seed", "seed"), ("python", "python")):
        if old.get(field) != new.get(field):
            reasons.append(f"{label} {old.get(field)} → {new.get(field)}")
    if old.get("names") != new.get("names") and list(old_inputs) == list(new_inputs):
        reasons.append("step names changed")
    if old.get("input_metrics") != new.get("input_metrics") and list(old_inputs) == list(new_inputs):
        reasons.append("input metrics changed")
    old_target, new_target = old.get("target") or {}, new.get("target") or {}
    for key in sorted(set(old_target) | set(new_target)):
        if old_target.get(key) != new_target.get(key):
            reasons.append(f"target.{key} {_fmt(old_target.get(key, MISSING))} → {_fmt(new_target.get(key, MISSING))}")
    if old.get("salt") != new.get("salt"):
        reasons.append("cache salt changed")
    if old.get("extras") != new.get("extras"):
        for key in sorted(set(old.get("extras", {})) | set(new.get("extras", {}))):
            a, b = old.get("extras", {}).get(key), new.get("extras", {}).get(key)
            if a != b:
                reasons += diff_named_entries(key, a, b) or [f"{key} changed"]
    return reasons


def _named(value: Any) -> dict[str, list[Any]] | None:
    """``[[name, version, ...], ...]`` as {name: [version, ...]}, else None."""
    if not isinstance(value, list) or not all(isinstance(e, list) and e and isinstance(e[0], str) for e in value):
        return None
    return {e[0]: list(e[1:]) for e in value}


def diff_named_entries(key: str, old: Any, new: Any) -> list[str]:
    """Reasons for a change in a list of ``[name, version, ...]`` entries
    (e.g. the graph passes a step applies), one per entry that changed:
    ``pass fold-batchnorm 1.0 → 1.1``, ``pass my-pass added``. Empty when
    the values do not have that shape."""
    a, b = _named(old if old is not None else []), _named(new if new is not None else [])
    if a is None or b is None:
        return []
    label = "pass" if key.endswith("passes") else key
    reasons = []
    for name in [*a, *(n for n in b if n not in a)]:
        if name not in b:
            reasons.append(f"{label} {name} removed")
        elif name not in a:
            reasons.append(f"{label} {name} added")
        elif a[name][:1] != b[name][:1]:
            reasons.append(f"{label} {name} {_fmt(a[name][0] if a[name] else MISSING)} → "
                           f"{_fmt(b[name][0] if b[name] else MISSING)}")
        elif a[name] != b[name]:
            reasons.append(f"{label} {name} source changed")
    if not reasons and list(a) != list(b):
        reasons.append(f"{key} order {', '.join(a)} → {', '.join(b)}")
    return reasons
