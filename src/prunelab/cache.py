"""prunelab's cache folder, shared by the dataset downloads and the compiled C kernels.

A leaf module (it imports nothing from prunelab), so that ``native/`` and ``data/`` can both ask it
where the cache is without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_base"]


def cache_base() -> Path:
    """``$XDG_CACHE_HOME/prunelab``, default ``~/.cache/prunelab`` (read at every call).

    Only an absolute ``$XDG_CACHE_HOME`` counts, as the XDG base-directory specification says: a
    relative one would move the cache with the working directory.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "prunelab"
