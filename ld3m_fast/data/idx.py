"""Reading and writing IDX files (the MNIST / Fashion-MNIST array format), plain or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions ``d``; then ``d`` big-endian uint32
sizes; then the values, big-endian, in C order. Compression is recognised by content (gzip's magic
bytes), not by the file name.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from ..errors import InvalidArgumentError, InvalidTypeError

# type code -> big-endian numpy dtype
IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise InvalidArgumentError(f"IDX file {os.fspath(path)!r} is a damaged gzip file ({exc})") from exc
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip or not), in native byte order."""
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise InvalidArgumentError(f"{path!r} is not an IDX file (header bytes {data[:4].hex() or 'missing'}; "
                                   "expected 00 00 <type> <ndim>)")
    dtype, ndim = IDX_TYPES[data[2]], data[3]
    if len(data) < 4 + 4 * ndim:
        raise InvalidArgumentError(f"IDX file {path!r} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    count = int(np.prod(shape, dtype=np.int64))
    expected = 4 + 4 * ndim + count * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgumentError(f"IDX file {path!r} has {len(data)} bytes; its header {shape} of {dtype.name} "
                                   f"needs {expected} (truncated or damaged)")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=4 + 4 * ndim).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzip it when ``compress`` (default: when ``path`` ends in .gz).

    The gzip stream carries no time stamp or file name, so equal arrays give equal files.
    """
    path = os.fspath(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise InvalidTypeError(f"write_idx: dtype {array.dtype} has no IDX type; use one of "
                               f"{sorted(str(d) for d in codes)}")
    if array.ndim > 255 or any(s >= 2**32 for s in array.shape):
        raise InvalidArgumentError(f"write_idx: shape {array.shape} does not fit the IDX header")
    payload = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
               + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes())
    if compress if compress is not None else path.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    with open(path, "wb") as fh:
        fh.write(payload)
