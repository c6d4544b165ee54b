"""Reader for IDX files, the format of the MNIST distribution.

Layout (big-endian): two zero bytes, a type code, the number of dimensions,
one uint32 per dimension, then the data. Files may be gzip-compressed; that
is detected from the content (gzip magic), not from the file name.
Pure NumPy: planning never needs TensorFlow for this.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from tinybuild.api import StepError, open_input_file

from tinybuild_plugins.sdk import dataset as _dataset
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

#: IDX type code -> big-endian NumPy dtype (by name: naming NumPy here would import it)
IDX_DTYPES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"
#: Most dimensions an IDX header may declare (MNIST uses 1 and 3; the byte
#: allows 255, which no real data needs).
MAX_DIMS = 8
def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (gzip or raw), in native byte order.

    Only a regular file is read; the header is checked (dimensions, declared
    size against ``sdk.dataset.MAX_ARRAY_BYTES``) before the data, and compressed data
    is decompressed as a stream bounded by the declared size."""
    path = Path(path)
    try:
        with open_input_file(path) as raw:
            size = os.fstat(raw.fileno()).st_size
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not compressed:
                return _parse(raw, path, size)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _parse(stream, path, None)
    except FileNotFoundError:
        raise StepError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)):
            raise StepError(f"{path} looks gzip-compressed but cannot be decompressed: {exc}") from None
        raise StepError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None


def _parse(stream: Any, path: Path, size: int | None) -> np.ndarray:
    """Header, checks, then exactly the declared data (``size``: the file's
    size when uncompressed, to refuse a mismatch before reading)."""
    head = stream.read(4)
    if len(head) < 4:
        raise StepError(f"{path} is not an IDX file: only {len(head)} bytes, a header needs at least 4")
    zero, type_code, ndim = struct.unpack(">HBB", head)
    if zero != 0:
        raise StepError(
            f"{path} is not an IDX file: it must start with two zero bytes, found 0x{zero:04x} "
            "(is it an image or an archive of another format?)"
        )
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise StepError(f"{path}: unknown IDX data type code 0x{type_code:02x} (known: {known})")
    if ndim == 0:
        raise StepError(f"{path}: IDX header declares 0 dimensions")
    if ndim > MAX_DIMS:
        raise StepError(f"{path}: IDX header declares {ndim} dimensions; at most {MAX_DIMS} are supported "
                        "(the file is corrupt or not IDX)")
    header = 4 + 4 * ndim
    packed = stream.read(4 * ndim)
    if len(packed) < 4 * ndim:
        raise StepError(f"{path}: truncated IDX header ({ndim} dimensions need {header} bytes, file has {4 + len(packed)})")
    dims = struct.unpack(f">{ndim}I", packed)
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    limit = _dataset.MAX_ARRAY_BYTES  # read at call time: one documented limit for every format
    if expected > limit:
        raise StepError(
            f"{path}: IDX header declares shape {list(dims)} of {dtype.name}, {expected:,} bytes of data; "
            f"the limit is {limit:,} bytes per file: the file is corrupt, or split the data"
        )
    if size is not None and size - header != expected:
        raise StepError(
            f"{path}: IDX header declares shape {list(dims)} of {dtype.name} ({expected} bytes of data) "
            f"but the file holds {size - header} bytes; the file is truncated or not IDX"
        )
    data = stream.read(expected + 1)  # one byte more tells trailing data apart
    if len(data) != expected:
        actual = f"{len(data)} bytes" if len(data) <= expected else "more"
        raise StepError(
            f"{path}: IDX header declares shape {list(dims)} of {dtype.name} ({expected} bytes of data) "
            f"but the file holds {actual}; the file is truncated, not IDX, or a decompression bomb"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    """Write ``array`` as IDX (used by tests and to export data)."""
    array = np.asarray(array)
    codes = {np.dtype(dt).newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(IDX_DTYPES[code]).tobytes()
    if compress:
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)
