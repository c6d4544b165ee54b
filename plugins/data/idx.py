"""Reader for IDX files, the format of the MNIST distribution.

Layout (big-endian): two zero bytes, a type code, the number of dimensions,
one uint32 per dimension, then the data. Files may be gzip-compressed; that
is detected from the content (gzip magic), not from the file name.
Pure NumPy: planning never needs TensorFlow for this.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from tinybuild.api import StepError

#: IDX type code -> big-endian NumPy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StepError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise StepError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise StepError(f"{path} looks gzip-compressed but cannot be decompressed: {exc}") from None
    return raw


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (gzip or raw), in native byte order."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise StepError(f"{path} is not an IDX file: only {len(data)} bytes, a header needs at least 4")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
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
    header = 4 + 4 * ndim
    if len(data) < header:
        raise StepError(f"{path}: truncated IDX header ({ndim} dimensions need {header} bytes, file has {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        raise StepError(
            f"{path}: IDX header declares shape {list(dims)} of {dtype.name} ({expected} bytes of data) "
            f"but the file holds {actual} bytes; the file is truncated or not IDX"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    """Write ``array`` as IDX (used by tests and to export data)."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(IDX_DTYPES[code]).tobytes()
    if compress:
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)
