"""A small reader for the IDX format of (Fashion-)MNIST, raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions ``d``; then ``d`` big-endian
uint32 sizes; then the values, big-endian, row-major. See LeCun et al.'s MNIST page.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ofa_search.data._errors import DatasetError

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode one IDX payload into an array (native byte order).

    Raises :class:`DatasetError` naming ``source`` when the magic number, the type code or
    the length does not fit.
    """
    if len(data) < 4:
        raise DatasetError(f"{source}: not an IDX file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{source}: not an IDX file (magic number {data[:4].hex()})")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES:
        raise DatasetError(f"{source}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{source}: truncated IDX header ({len(data)} < {header} bytes)")
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(
            f"{source}: IDX file {state}: shape {shape} needs {expected} bytes, "
            f"found {len(data)}"
        )
    values = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path, *, expect_type: int | None = None,
             expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed) and check its type code and rank."""
    path = Path(path)
    data = _read_bytes(path)
    array = parse_idx(data, source=str(path))
    if expect_type is not None and data[2] != expect_type:
        raise DatasetError(
            f"{path}: IDX type code 0x{data[2]:02x}, expected 0x{expect_type:02x}"
        )
    if expect_ndim is not None and array.ndim != expect_ndim:
        raise DatasetError(
            f"{path}: IDX array has {array.ndim} dimensions, expected {expect_ndim} "
            f"(magic number {data[:4].hex()})"
        )
    return array
