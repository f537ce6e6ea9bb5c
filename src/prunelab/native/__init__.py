"""prunelab's C kernels (the ``*.c`` files beside this module), compiled on first use, loaded with ctypes.

They are plain C with no Python or torch headers: one ``cc`` call of about a second each,
cached under ``$XDG_CACHE_HOME/prunelab/kernels`` (default ``~/.cache/...``) by a hash of the
source and flags, and written atomically. Where no C compiler is found, or it fails, :func:`load`
returns None, :func:`why_not` says why in one line naming the compiler, and callers use their
torch path instead; ``PRUNELAB_NO_NATIVE=1`` forces that. Callers cache what :func:`load` returns
(it rebuilds nothing, but reopens the library).
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


def _flag_sets(wide: bool = False) -> list[list[str]]:
    """Compiler flags to try, in order.

    The vector instructions are those torch itself found on this CPU (AVX2 + FMA, and with
    ``wide`` AVX-512 F/BW/VL/DQ where torch runs AVX-512), never ``-march=native``: the flags are in
    the cache key, so a cache shared by machines of another CPU builds their own library. First
    with ``-fopenmp`` where torch runs on GNU OpenMP: the kernels' parallel loops then share torch's
    libgomp (already loaded, same soname) and thread count rather than start a second pool. Then
    without: a compiler lacking OpenMP ignores the pragmas, and the loops run on one thread. A
    compiler that does not know AVX-512 gets the AVX2 flags next.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    simd = capability in ("AVX2", "AVX512")
    base = ["-O3", "-shared", "-fPIC", *(["-mavx2", "-mfma"] if simd else [])]
    bases = [base]
    if wide and capability == "AVX512":
        bases.insert(0, [*base, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"])
    openmp = sys.platform.startswith("linux") and torch.backends.openmp.is_available()
    return [flags for b in bases for flags in ([[*b, "-fopenmp"], b] if openmp else [b])]


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


_failures: dict[str, str] = {}


def load(name: str, *, wide: bool = False) -> ctypes.CDLL | None:
    """The kernel library ``name`` (``native/<name>.c``), or None where it cannot be built here
    (then :func:`why_not` says why). ``wide``: with AVX-512 where torch uses it."""
    _failures.pop(name, None)
    if not enabled():
        _failures[name] = (
            "PRUNELAB_NO_NATIVE=1 is set"
            if os.environ.get("PRUNELAB_NO_NATIVE") == "1"
            else "torch reports no vector capability for this CPU"
        )
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        _failures[name] = "no C compiler was found (looked for $CC, cc, gcc and clang)"
        return None
    for flags in _flag_sets(wide):
        try:
            return ctypes.CDLL(str(_build(name, compiler, flags)))
        except subprocess.CalledProcessError as exc:
            _failures[name] = f"{compiler} could not build {name}.c ({_first_error(exc.stderr)})"
        except OSError as exc:  # a compiler that is not there, a library that does not load
            _failures[name] = f"{compiler} could not build or load {name}.c ({exc.strerror or exc})"
    return None


def mark_unusable(name: str, why: str) -> None:
    """Record that a library that loaded cannot be used (:func:`why_not` then says ``why``)."""
    _failures[name] = why


def why_not(name: str) -> str | None:
    """Why the last :func:`load` of ``name`` returned None, in one line naming the compiler; None
    if it loaded."""
    return _failures.get(name)


def _first_error(stderr: bytes | str | None) -> str:
    """The line of a compiler's output that says what went wrong (else its first line)."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = next((x for x in lines if "error" in x.lower()), lines[0] if lines else "no message")
    return line if len(line) <= 200 else line[:197] + "..."
