"""prunelab's own CSR x dense kernel (prunelab/native/csr_linear.c), compiled on first use and loaded with ctypes.

MKL's sparse product, the one torch offers on CPU, runs a 95%-sparse LeNet layer at about a
quarter of dense time, and needs its input transposed first; this kernel does the transposition
in cache-sized blocks and keeps its sums in registers, which is ~2x faster again (``bench/infer_speed.py``).
How it is built and cached is :mod:`prunelab.native`'s job. Where it cannot be built,
:func:`csr_kernel` returns None and sparse layers use torch's MKL path instead.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from prunelab import native

__all__ = ["csr_kernel", "csr_linear"]


@functools.cache
def csr_kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where it cannot be built here (callers fall back to MKL)."""
    lib = native.load("csr_linear")
    if lib is None:
        return None
    fn = lib.prunelab_csr_linear
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3
    fn.restype = ctypes.c_int
    return lib


def csr_linear(
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    out_features: int,
) -> torch.Tensor:
    """``x @ W.T + bias`` with W given by int32 CSR arrays; ``x`` 2-D, contiguous float32 on the CPU."""
    lib = csr_kernel()
    if lib is None:
        raise RuntimeError("the native CSR kernel is not available here")
    n, in_features = x.shape
    y = torch.empty(n, out_features)
    status = lib.prunelab_csr_linear(
        crow.data_ptr(),
        col.data_ptr(),
        values.data_ptr(),
        None if bias is None else bias.data_ptr(),
        x.data_ptr(),
        y.data_ptr(),
        n,
        in_features,
        out_features,
    )
    if status:
        raise MemoryError("the native CSR kernel could not allocate its scratch block")
    return y
