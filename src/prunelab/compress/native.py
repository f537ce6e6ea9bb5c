"""prunelab's own CSR x dense kernel (kernels/csr_linear.c), compiled on first use and loaded with ctypes.

MKL's sparse product, the one torch offers on CPU, runs a 95%-sparse LeNet layer at about a
quarter of dense time, and needs its input transposed first; this kernel does the transposition
in cache-sized blocks and keeps its sums in registers, which is ~2x faster again (``bench/infer_speed.py``).
It is plain C with no Python or torch headers: one ``cc`` call of well under a second, cached
under ``$XDG_CACHE_HOME/prunelab/kernels`` (default ``~/.cache/...``) by a hash of the source and
flags, and written atomically. Where no C compiler is found, or it fails, :func:`csr_kernel` returns None and
sparse layers use torch's MKL path instead; ``PRUNELAB_NO_NATIVE=1`` forces that.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from prunelab.data.locate import cache_root

SOURCE = Path(__file__).with_name("kernels") / "csr_linear.c"


def cache_dir() -> Path:
    return cache_root().parent / "kernels"


def _flags() -> list[str]:
    simd = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return ["-O3", "-shared", "-fPIC", *(["-mavx2", "-mfma"] if simd else [])]


def _build(compiler: str, flags: list[str]) -> Path:
    tag = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"csr_linear-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *flags, "-o", str(built), str(SOURCE)], check=True, capture_output=True)
        os.replace(built, target)  # atomic: a concurrent build or a kill leaves no half-written library
    return target


@functools.cache
def csr_kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where it cannot be built here (callers fall back to MKL)."""
    if os.environ.get("PRUNELAB_NO_NATIVE") == "1" or not torch.backends.cpu.get_cpu_capability():
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler, _flags())))
    except (OSError, subprocess.CalledProcessError):
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
