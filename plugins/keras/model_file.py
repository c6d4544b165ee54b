"""Vet a model file from outside (``file = "model.keras"`` / ``.h5``) before
tf_keras reads it: it must not run code, and loading it must take bounded
memory.

Why tf_keras' own safe mode is not enough: it refuses marshalled lambdas,
but imports any module a config names (see
:mod:`tinybuild_plugins.sdk.keras_config_check`), and it reads HDF5
datasets whole, so a 37 KB file holding a gzip-compressed 400-million-entry
dataset of zeros inflates to gigabytes before any shape check.

So, before loading, from metadata only (nothing is deserialized, no dataset
is read):

* the format is decided from the content: a zip (``.keras``) or an HDF5
  file (``.h5``), never both (the loader picks by name, the check would
  look at the other format);
* a ``.keras`` archive holds exactly the members Keras writes
  (``config.json``, ``metadata.json``, ``model.weights.h5``), unique, stored
  or deflated, declaring at most :data:`MAX_MODEL_BYTES` unpacked;
* the config (``config.json``, or the HDF5 root attribute ``model_config``)
  is at most :data:`MAX_CONFIG_BYTES` and passes
  :func:`~tinybuild_plugins.sdk.keras_config_check.check_config`;
* every HDF5 dataset (the ``.h5`` file, or the archive's weights file) is
  numeric, stored in the file (no external or virtual storage), reached by
  exactly one hard link (no soft/external links, nothing linked twice: the
  loader would read it twice), and their shapes times item sizes add up to
  at most :data:`MAX_MODEL_BYTES`.

The checks run on a private copy of the file, which is then the file
loaded: what was checked is what is loaded, whatever happens to the user's
file meanwhile, and the copy's name gives the loader the format that was
checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tinybuild.api import StepError

from tinybuild_plugins.sdk.keras_config_check import check_config

#: Most bytes a model file may unpack to (1 GiB): the zip members' declared
#: sizes, and the HDF5 datasets' shapes times item sizes. The models
#: tinybuild targets are kilobytes to megabytes.
MAX_MODEL_BYTES = 1 << 30
#: Most bytes of a model's JSON config (real ones are kilobytes).
MAX_CONFIG_BYTES = 16 << 20

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
#: what tf_keras writes into a .keras archive (metadata.json is optional)
KERAS_MEMBERS = frozenset({CONFIG_MEMBER, "metadata.json", WEIGHTS_MEMBER})


def vetted_copy(path: Path, folder: Path, where: str) -> Path:
    """Copy ``path`` into ``folder`` as ``model.keras`` or ``model.h5`` (by
    content), vet the copy, and return it; raise :class:`StepError` naming
    ``path`` when it could run code or unpack past the limits."""
    import zipfile

    import h5py

    source = str(path)
    copy = folder / "model.bin"
    _copy_bounded(path, copy, MAX_MODEL_BYTES + MAX_CONFIG_BYTES, where)
    is_zip, is_hdf5 = zipfile.is_zipfile(copy), h5py.is_hdf5(str(copy))
    if is_zip and is_hdf5:
        raise StepError(f"{where}: {source} is both a zip archive and an HDF5 file; Keras writes one or the "
                        "other: the file was crafted or corrupted")
    if not (is_zip or is_hdf5):
        raise StepError(f"{where}: {source} is neither a .keras archive (zip) nor an HDF5 .h5 model file")
    target = copy.rename(folder / ("model.keras" if is_zip else "model.h5"))
    if is_zip:
        _vet_keras_archive(target, where, source)
    else:
        _vet_hdf5_model(target, where, source)
    return target


def _copy_bounded(path: Path, copy: Path, limit: int, where: str) -> None:
    """Copy a regular file of at most ``limit`` bytes (a model within the
    limits cannot be bigger on disk), reading at most ``limit + 1``: a FIFO
    swapped in, or a file growing meanwhile, cannot hang or fill the disk."""
    from tinybuild.safeio import open_regular

    try:
        with open_regular(path, max_bytes=limit) as src, open(copy, "wb") as dst:
            left = limit + 1
            while chunk := src.read(min(left, 1 << 20)):
                dst.write(chunk)
                left -= len(chunk)
                if left <= 0:
                    raise StepError(f"{where}: {path} grew past {limit:,} bytes while being read")
    except OSError as exc:
        raise StepError(f"{where}: model file {path} {exc.strerror}") from None


# -- .keras ----------------------------------------------------------------------


def _vet_keras_archive(path: Path, where: str, source: str) -> None:
    import zipfile

    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            _check_members(infos, where, source)
            config = archive.getinfo(CONFIG_MEMBER)
            if config.file_size > MAX_CONFIG_BYTES:
                raise StepError(f"{where}: {source}: {CONFIG_MEMBER} is {config.file_size:,} bytes, over the "
                                f"limit of {MAX_CONFIG_BYTES:,} for a model config")
            check_config(_parse_json(archive.read(CONFIG_MEMBER), where, f"{source}: {CONFIG_MEMBER}"), where,
                         source)
            with archive.open(WEIGHTS_MEMBER) as member, h5py.File(member, "r") as weights:
                _check_hdf5(weights, where, f"{source}: {WEIGHTS_MEMBER}")
    except StepError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise StepError(f"{where}: {source} is not a readable .keras archive: {type(exc).__name__}: {exc}") from None


def _check_members(infos: list[Any], where: str, source: str) -> None:
    """Only the members Keras writes, each once, stored or deflated, and at
    most :data:`MAX_MODEL_BYTES` declared in all (zipfile never inflates a
    member past its declared size, so the declaration bounds the cost)."""
    import zipfile

    methods = {info.compress_type for info in infos} - {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    if methods:  # bzip2/LZMA chunks are inflated whole, whatever the declared size
        raise StepError(f"{where}: {source} uses zip compression method {min(methods)}; Keras writes stored or "
                        "deflate members only: the file is not a Keras model, or was repacked")
    declared = sum(info.file_size for info in infos)
    if declared > MAX_MODEL_BYTES:
        raise StepError(f"{where}: {source} unpacks to {declared:,} bytes, over the limit of {MAX_MODEL_BYTES:,} "
                        "for a model file; it is corrupt or a zip bomb")
    from collections import Counter

    names = [info.filename for info in infos]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise StepError(f"{where}: {source} holds the member(s) {', '.join(duplicates)} more than once; Keras "
                        "writes each once: the file was crafted or repacked")
    unknown = sorted(set(names) - KERAS_MEMBERS)
    missing = sorted({CONFIG_MEMBER, WEIGHTS_MEMBER} - set(names))
    if unknown or missing:
        raise StepError(f"{where}: {source} is not a .keras model as tf_keras writes it: "
                        + "; ".join(filter(None, [unknown and f"unexpected member(s) {', '.join(unknown)}",
                                                  missing and f"missing {', '.join(missing)}"]))
                        + f" (expected {', '.join(sorted(KERAS_MEMBERS))})")


# -- .h5 ---------------------------------------------------------------------------


def _vet_hdf5_model(path: Path, where: str, source: str) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise StepError(f"{where}: {source} is an HDF5 file without a model_config: a weights-only "
                                "file, not a whole Keras model")
            size = f.attrs.get_id("model_config").get_storage_size()
            if size > MAX_CONFIG_BYTES:
                raise StepError(f"{where}: {source}: model_config is {size:,} bytes, over the limit of "
                                f"{MAX_CONFIG_BYTES:,} for a model config")
            text = f.attrs["model_config"]
            if not isinstance(text, (bytes, str)):
                raise StepError(f"{where}: {source}: model_config is not a JSON string")
            check_config(_parse_json(text, where, f"{source}: model_config"), where, source)
            _check_hdf5(f, where, source)
    except StepError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise StepError(f"{where}: {source} is not a readable HDF5 model: {type(exc).__name__}: {exc}") from None


def _parse_json(text: bytes | str, where: str, source: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise StepError(f"{where}: {source} is not valid JSON: {type(exc).__name__}: {exc}") from None


def _check_hdf5(root: Any, where: str, source: str) -> None:
    """Refuse links and storage Keras never writes, and datasets whose shapes
    times item sizes add up past :data:`MAX_MODEL_BYTES` (metadata only:
    reading a compressed dataset is what inflates it)."""
    import h5py

    total, stack = 0, [root]
    while stack:  # no cycles: every group below the root is reached by exactly one hard link
        group = stack.pop()
        for name in group:
            path = f"{group.name.rstrip('/')}/{name}"
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise StepError(f"{where}: {source}: {path} is a {type(link).__name__}; Keras writes no links: "
                                "the file was crafted")
            item = group[name]
            if h5py.h5o.get_info(item.id).rc != 1:
                raise StepError(f"{where}: {source}: {path} is linked more than once; Keras writes each object "
                                "once (the loader would read it once per link): the file was crafted")
            if isinstance(item, h5py.Group):
                stack.append(item)
            elif isinstance(item, h5py.Dataset):
                total += _dataset_bytes(item, path, where, source)
                if total > MAX_MODEL_BYTES:
                    raise StepError(
                        f"{where}: {source}: dataset {path} (shape {list(item.shape or ())}, {item.dtype}) brings "
                        f"the model's weights to {total:,} bytes, over the limit of {MAX_MODEL_BYTES:,} for a "
                        "model file; it is corrupt or a decompression bomb")


def _dataset_bytes(dataset: Any, path: str, where: str, source: str) -> int:
    if dataset.is_virtual or dataset.external:
        raise StepError(f"{where}: {source}: dataset {path} keeps its data outside the file (external or virtual "
                        "storage); Keras never writes that: the file was crafted")
    if dataset.dtype.kind not in "biufc":
        raise StepError(f"{where}: {source}: dataset {path} holds {dataset.dtype} values; Keras weights are "
                        "numbers: the file was crafted or is not a Keras model")
    shape = dataset.shape
    return 0 if shape is None else math.prod(shape) * dataset.dtype.itemsize


__all__ = ["MAX_CONFIG_BYTES", "MAX_MODEL_BYTES", "vetted_copy"]
