"""Reading arrays from a ``.npz`` archive without trusting it.

``np.load`` on an archive someone else made trusts three things this module
checks instead: that the member's ``.npy`` header declares a sane size (it
preallocates whatever the header says), that the compressed member is not a
zip bomb (it decompresses all of it), and that the dtype is plain data (object
arrays need pickle; structured ones are no samples). Here every member is
read as a stream: the header first, checked against ``sdk.dataset.MAX_ARRAY_BYTES``
and against the member's size, then exactly the declared number of bytes and
one more (to tell trailing data apart), so memory never exceeds the cap.
Only a regular file is opened (a FIFO or a device never hangs the step).

Pure NumPy and the standard library.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

from tinybuild.api import StepError, open_input_file

from tinybuild_plugins.sdk import dataset as _dataset
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free


def load_npz_arrays(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """``{name: array}`` for the ``required`` arrays and those of ``optional``
    present in the archive; a :class:`StepError` naming the file otherwise."""
    path = Path(path)
    try:
        with open_input_file(path) as raw, zipfile.ZipFile(raw) as archive:
            members = {info.filename[: -len(".npy")]: info for info in archive.infolist()
                       if info.filename.endswith(".npy")}
            missing = [k for k in required if k not in members]
            if missing:
                raise StepError(
                    f"{path}: no array named {', '.join(repr(m) for m in missing)}; the archive has "
                    f"{', '.join(sorted(members)) or 'no arrays'} (set x_key / y_key / group_key)"
                )
            wanted = [*required, *(k for k in optional if k in members)]
            return {name: _read_member(archive, members[name], path, name) for name in wanted}
    except FileNotFoundError:
        raise StepError(f"npz file not found: {path}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise StepError(f"{path} is not a readable .npz archive: {exc}") from None
    except OSError as exc:
        raise StepError(f"cannot read npz file {path}: {exc.strerror or exc}") from None


#: What ``np.savez`` (stored) and ``np.savez_compressed`` (deflate) write. The
#: standard library bounds deflate output by the size asked for, but inflates
#: a bzip2 or LZMA chunk whole: a few KiB of bzip2 can hold gigabytes.
SAFE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, name: str) -> np.ndarray:
    where = f"{path}: array '{name}'"
    if info.compress_type not in SAFE_METHODS:
        raise StepError(f"{where} is compressed with zip method {info.compress_type}; only stored and deflate "
                        "members are read (what np.savez and np.savez_compressed write): save it again with one")
    from numpy.lib import format as npy_format

    with archive.open(info) as member:
        try:
            version = npy_format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(member)
            else:
                raise StepError(f"{where}: .npy format version {version} is not supported; save it with np.savez")
        except StepError:
            raise
        except Exception as exc:  # NumPy parses the header with ast: SyntaxError, TokenError, ValueError...
            raise StepError(f"{where} has a broken .npy header ({type(exc).__name__}); save it again with np.savez") from None
        _check_dtype(dtype, where)
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        limit = _dataset.MAX_ARRAY_BYTES
        if nbytes > limit:
            raise StepError(
                f"{where} declares shape {list(shape)} of {dtype}, {nbytes:,} bytes; the limit is "
                f"{limit:,} bytes per array: the archive is corrupt, or split the data"
            )
        if nbytes > info.file_size:
            raise StepError(f"{where} declares {nbytes:,} bytes of data but the archive member holds "
                            f"{info.file_size:,}; the archive is corrupt")
        data = member.read(nbytes + 1)
    if len(data) != nbytes:
        raise StepError(f"{where} declares {nbytes:,} bytes of data but holds "
                        f"{'fewer' if len(data) < nbytes else 'more'}; the archive is corrupt")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _check_dtype(dtype: Any, where: str) -> None:
    if dtype.hasobject:
        raise StepError(f"{where} holds Python objects, which cannot be loaded without pickle "
                        "(refused); store plain numeric arrays")
    if dtype.names is not None or dtype.subdtype is not None:
        raise StepError(f"{where} has a structured dtype {dtype}; store one plain numeric array per key")
