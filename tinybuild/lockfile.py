"""The lock file beside a recipe: what each step was last built from, and into.

``mnist_cnn.toml`` → ``mnist_cnn.lock.json``. It is deterministic JSON (sorted
keys, no timestamps, one line per step) so it can be committed and diffed; ``plan`` compares the
current key material against it to explain why a step reruns, and ``gc``
keeps every object a known lock file references.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .cache import atomic_write_bytes
from .hashing import stat_signature

FORMAT = 1
#: A lock file holds one entry per step: far below this even for big recipes.
MAX_LOCK_BYTES = 64 << 20


#: what this process last read or wrote, per lock file: (identity, steps, text;
#: the text for :func:`entry_texts`). A build reads its lock file three times
#: (claiming the build folder, planning, stamping); at thousands of steps each
#: parse is a tenth of a second. The identity includes the inode, and every
#: write replaces the file (new inode), so another writer's file is never
#: mistaken for the remembered one.
_seen: dict[str, tuple[list[int], dict[str, dict[str, Any]], str]] = {}


def read_lock(path: Path) -> dict[str, dict[str, Any]]:
    """Step entries of a lock file; empty when absent or malformed. Only a
    regular file of at most :data:`MAX_LOCK_BYTES` is read (a FIFO or a device
    in its place would hang the build): anything else counts as malformed.
    Other read errors (permissions) still raise, so ``gc`` never mistakes an
    unreadable lock file for one that references nothing. The result is
    shared with later calls for the same unchanged file: never mutate it."""
    from .safeio import FileTooLarge, NotRegularFile, read_regular

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    known = _seen.get(str(path))
    if known is not None and known[0] == stat_signature(st):
        return known[1]
    try:
        text = read_regular(path, MAX_LOCK_BYTES).decode("utf-8")
        data = json.loads(text)
    except (FileNotFoundError, NotRegularFile, FileTooLarge, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    steps = data.get("steps")
    if not isinstance(steps, dict):
        return {}
    steps = {name: entry for name, entry in steps.items() if _well_formed(entry)}  # a hand-edited entry: absent
    _seen[str(path)] = (stat_signature(st), steps, text)
    return steps


def _well_formed(entry: Any) -> bool:
    """Whether a step's entry has the shape :func:`lock_entry` gives it (the
    file is the user's to edit: a wrong shape must mean "no entry", never a traceback)."""
    if not isinstance(entry, dict):
        return False
    output = entry.get("output")
    return (isinstance(entry.get("key"), str) and isinstance(entry.get("material"), dict)
            and isinstance(entry.get("input_steps"), list) and isinstance(output, dict)
            and isinstance(output.get("kind"), str) and isinstance(output.get("digest"), str)
            and isinstance(output.get("files"), dict))


def entry_texts(path: Path) -> dict[str, str]:
    """Each step's entry as JSON text, cut from the lock file's lines as last
    read or written, if it is still that file; else empty. Only for a caller that knows
    the file is one :func:`lock_text` wrote (a delta rebuild: the no-op stamp
    vouched for its signature), so that each line is exactly one step's
    canonical entry: :func:`write_lock` then reuses the text of the entries
    it was given unchanged instead of encoding them again (70 ms at 5,000 steps)."""
    try:
        identity = stat_signature(os.stat(path))
    except OSError:
        return {}
    known = _seen.get(str(path))
    if known is None or known[0] != identity:
        return {}
    out = {}
    for line in known[2].split("\n"):
        end = line.find('":{')
        if line.startswith('"') and end > 0:
            out[line[1:end]] = line[end + 2:].removesuffix(",")
    return out


def lock_entry(key: str, material: dict[str, Any], input_names: list[str], kind: str,
               files: dict[str, str], digest: str) -> dict[str, Any]:
    return {"key": key, "material": material, "input_steps": input_names,
            "output": {"kind": kind, "digest": digest, "files": files}}


def lock_text(recipe_name: str, steps: dict[str, dict[str, Any]], reuse: dict[str, str] | None = None) -> str:
    """The lock file's JSON with one line per step: a rebuild's diff shows
    exactly the steps that changed, and each line is encoded by the C JSON
    encoder (indented JSON goes through the pure-Python one: a quarter of a
    second per thousand steps). ``reuse``: entries already encoded, by step."""
    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    texts = reuse or {}
    lines = [f"{dump(name)}:{texts.get(name) or dump(steps[name])}" for name in sorted(steps)]
    body = ",\n".join(lines)
    return (f'{{\n"format":{FORMAT},\n"recipe":{dump(recipe_name)},\n"steps":{{'
            + (f"\n{body}\n" if lines else "") + "}\n}\n")


def write_lock(path: Path, recipe_name: str, steps: dict[str, dict[str, Any]], reuse: dict[str, str] | None = None) -> None:
    text = lock_text(recipe_name, steps, reuse)
    atomic_write_bytes(path, text.encode("utf-8"))
    try:
        _seen[str(path)] = (stat_signature(os.stat(path)), {name: steps[name] for name in sorted(steps)}, text)
    except OSError:
        _seen.pop(str(path), None)


def referenced_digests(path: Path, limit: int = 256 << 20) -> tuple[set[str], set[str]]:
    """(action keys, object digests) a lock file references. ValueError when
    it is unreadable or not what :func:`write_lock` writes: ``gc`` must not
    guess, since a guess of "nothing" would delete a recipe's live entries."""
    from .safeio import read_own_file

    data = read_own_file(path, limit)
    if data is None:
        raise ValueError(f"{path}: not a readable regular file")
    keys, objects = set(), set()
    try:
        steps = json.loads(data.decode("utf-8"))["steps"]
        for entry in steps.values():
            keys.add(str(entry["key"]))
            objects.update(str(d) for d in entry["output"]["files"].values())
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not a tinybuild lock file ({type(exc).__name__})") from None
    return keys, objects
