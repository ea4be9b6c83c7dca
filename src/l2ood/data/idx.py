"""Reader for the IDX format used by MNIST and Fashion-MNIST (LeCun et al., 1998).

Format: big-endian header ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` uint32 dimension sizes, then
the data. Only dtype ``0x08`` (unsigned byte) occurs in these data sets. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataFormatError

_UBYTE = 0x08
MAX_IDX_BYTES = 1 << 30  # MNIST's largest file is 47 MB uncompressed


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``) into a uint8 NumPy array of the header's shape."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_IDX_BYTES:
            raise DataFormatError(f"{path}: {path.stat().st_size} bytes is larger than any IDX file l2ood reads "
                                  f"(limit {MAX_IDX_BYTES})")
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # decompressed with a cap: a gzip bomb stops at the limit
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:
                raw = g.read(MAX_IDX_BYTES + 1)
            if len(raw) > MAX_IDX_BYTES:
                raise DataFormatError(f"{path}: decompresses to more than {MAX_IDX_BYTES} bytes (refused)")
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype != _UBYTE:
        raise DataFormatError(f"{path}: only unsigned-byte IDX files are supported (type 0x{dtype:02x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims)) if dims else 1
    if len(raw) - header != expected:
        raise DataFormatError(
            f"{path}: IDX header promises {expected} bytes of data for shape {dims}, "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as IDX (gzip when ``compress`` or when the name ends in ``.gz``)."""
    path = Path(path)
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, _UBYTE, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)
