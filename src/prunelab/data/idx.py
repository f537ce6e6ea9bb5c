"""IDX files (the MNIST format), raw or gzipped, read with every header field checked.

A truncated download or a corrupt archive must fail with the file's name and what is wrong,
never with a reshape error deep in training.
"""

from __future__ import annotations

import gzip as gzip_module
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from prunelab.errors import DataError
from prunelab.io import atomic_path

GZIP_MAGIC = b"\x1f\x8b"
UINT8 = 0x08
TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def read_idx(path: str | Path, ndim: int | None = None) -> torch.Tensor:
    """Read an IDX file of unsigned bytes into a uint8 tensor; ``ndim`` checks the number of dims."""
    path = Path(path)
    data = _read_bytes(path)
    dims, offset = _parse_header(path, data)
    if ndim is not None and len(dims) != ndim:
        raise DataError(
            f"{path} holds a {len(dims)}-dimensional array ({_shape(dims)}); expected {ndim} dimensions "
            f"(magic 0x0000080{ndim})"
        )
    _check_size(path, dims, len(data) - offset)
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)
    return torch.from_numpy(array.copy())


def write_idx(path: str | Path, array: torch.Tensor | np.ndarray, gzip: bool) -> None:
    """Write a uint8 array as an IDX file (gzipped if ``gzip``), atomically."""
    arr = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.dtype != np.uint8 or not 1 <= arr.ndim <= 255:
        raise ValueError(f"write_idx takes a uint8 array of 1 to 255 dims, got {arr.dtype} {arr.shape}")
    header = bytes([0, 0, UINT8, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr).tobytes()
    if gzip:
        payload = gzip_module.compress(payload, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it starts with the gzip magic (whatever its suffix)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip_module.decompress(data)
    except EOFError:
        raise DataError(f"{path} is a truncated gzip file (the compressed stream ends early)") from None
    except (gzip_module.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is a corrupt gzip file: {exc}") from None


def _parse_header(path: Path, data: bytes) -> tuple[tuple[int, ...], int]:
    """Check the magic number and return the dims and where the payload starts."""
    if len(data) < 4:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than the 4-byte IDX magic number")
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise DataError(
            f"{path} is not an IDX file: bad magic number 0x{data[:4].hex()} "
            "(expected 0x000008NN: two zero bytes, type code, number of dims)"
        )
    if type_code != UINT8:
        kind = TYPE_NAMES.get(type_code, "unknown")
        raise DataError(f"{path} holds IDX type 0x{type_code:02x} ({kind}); only 0x08 (uint8) is supported")
    if ndim == 0:
        raise DataError(f"{path} has a bad magic number 0x{data[:4].hex()}: zero dimensions")
    end = 4 + 4 * ndim
    if len(data) < end:
        raise DataError(
            f"{path} is truncated: the header needs {end} bytes for {ndim} dims, file holds {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return dims, end


def _check_size(path: Path, dims: tuple[int, ...], size: int) -> None:
    expected = math.prod(dims)
    if size < expected:
        raise DataError(
            f"{path} is truncated: header says {_shape(dims)} = {expected} bytes of data "
            f"but the file holds {size}"
        )
    if size > expected:
        raise DataError(
            f"{path} is corrupt: header says {_shape(dims)} = {expected} bytes of data "
            f"but the file holds {size} ({size - expected} extra)"
        )


def _shape(dims: tuple[int, ...]) -> str:
    return "x".join(map(str, dims))
