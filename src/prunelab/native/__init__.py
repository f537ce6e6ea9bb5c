"""prunelab's C kernels (the ``*.c`` files beside this module), compiled on first use, loaded with ctypes.

They are plain C with no Python or torch headers: one ``cc`` call of well under a second each,
cached under ``$XDG_CACHE_HOME/prunelab/kernels`` (default ``~/.cache/...``) by a hash of the
source and flags, and written atomically. Where no C compiler is found, or it fails, :func:`load`
returns None and callers use their torch path instead; ``PRUNELAB_NO_NATIVE=1`` forces that.
Callers cache what :func:`load` returns (it rebuilds nothing, but reopens the library).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from prunelab.cache import cache_base

SOURCES = Path(__file__).parent


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$XDG_CACHE_HOME/prunelab/kernels`` (see :func:`~prunelab.cache.cache_base`)."""
    return cache_base() / "kernels"


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, in order.

    First with ``-fopenmp`` where torch runs on GNU OpenMP: the kernels' parallel loops then share
    torch's libgomp (already loaded, same soname) and thread count rather than start a second pool.
    Then without: a compiler lacking OpenMP ignores the pragmas, and the loops run on one thread.
    """
    simd = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    base = ["-O3", "-shared", "-fPIC", *(["-mavx2", "-mfma"] if simd else [])]
    openmp = sys.platform.startswith("linux") and torch.backends.openmp.is_available()
    return [[*base, "-fopenmp"], base] if openmp else [base]


def _build(name: str, compiler: str, flags: list[str]) -> Path:
    source = SOURCES / f"{name}.c"
    tag = hashlib.sha256(source.read_bytes() + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        cmd = [compiler, *flags, "-o", str(built), str(source), "-lm"]
        subprocess.run(cmd, check=True, capture_output=True)
        os.replace(built, target)  # atomic: a concurrent build or a kill leaves no half-written library
    return target


def enabled() -> bool:
    """False where ``PRUNELAB_NO_NATIVE=1`` asks for the torch paths (read at every call)."""
    return os.environ.get("PRUNELAB_NO_NATIVE") != "1" and bool(torch.backends.cpu.get_cpu_capability())


def load(name: str) -> ctypes.CDLL | None:
    """The kernel library ``name`` (``native/<name>.c``), or None where it cannot be built here."""
    if not enabled():
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    for flags in _flag_sets():
        try:
            return ctypes.CDLL(str(_build(name, compiler, flags)))
        except (OSError, subprocess.CalledProcessError):
            continue
    return None
