"""prunelab's sparse Linear kernel (prunelab/native/sparse_linear.c), compiled on first use and loaded with ctypes.

How it is built and cached is :mod:`prunelab.native`'s job (here with AVX-512 where torch runs it).
Where it cannot be built, :func:`sparse_kernel` returns None, :func:`fallback_message` says so in one
line naming the compiler and the fallback, and sparse layers run torch's sparse CSR product (MKL).
A layer's packed arrays are described to the kernel by one :class:`Packed` struct, built once.
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import torch

from prunelab import native

__all__ = ["CHANNELS", "ROWS", "Packed", "fallback_message", "run", "sparse_kernel", "warn_fallback"]

ROWS, CHANNELS = 0, 1  # x (n, in) -> y (n, out); x groups x (in, n) -> y groups x (out, n)
NAME = "sparse_linear"


class Packed(ctypes.Structure):
    """The kernel's ``sparse_t``: one layer's format, shape and packed arrays (kept alive by the caller)."""

    _fields_ = [
        ("format", ctypes.c_int32),
        ("nm_n", ctypes.c_int32),
        ("nm_m", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("indptr", ctypes.c_void_p),
        ("index", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
    ]


@functools.cache
def sparse_kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where it cannot be built here (callers fall back to MKL)."""
    lib = native.load(NAME, wide=True)
    if lib is None:
        return None
    if lib.prunelab_sparse_abi() != ctypes.sizeof(Packed) * 100 + 1:
        native.mark_unusable(NAME, f"the built {NAME} library does not match this prunelab (struct layout)")
        return None
    fn = lib.prunelab_sparse_linear
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int32] * 2
    fn.restype = ctypes.c_int
    return lib


def fallback_message() -> str | None:
    """None where the kernel runs; else one line: why not (naming the compiler) and what runs instead."""
    if sparse_kernel() is not None:
        return None
    why = native.why_not(NAME) or "it could not be loaded"
    return (
        f"prunelab's sparse kernel is not available: {why}; sparse layers use torch.sparse CSR (MKL) instead"
    )


@functools.cache
def _entry():
    return sparse_kernel().prunelab_sparse_linear


@functools.cache
def warn_fallback() -> None:
    """Say once per process that sparse layers fall back to MKL (a no-op where the kernel runs)."""
    message = fallback_message()
    if message:
        warnings.warn(message, stacklevel=3)


def run(desc: Packed, x: torch.Tensor, y: torch.Tensor, n: int, groups: int, layout: int) -> None:
    """Fill ``y`` from ``x`` (contiguous float32, CPU) with the layer ``desc`` on torch's thread count."""
    status = _entry()(
        ctypes.byref(desc), x.data_ptr(), y.data_ptr(), n, groups, layout, torch.get_num_threads()
    )
    if status:
        raise MemoryError("the sparse kernel could not allocate its scratch tile")
