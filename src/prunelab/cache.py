"""Where prunelab keeps and looks for files: its cache folder, shared by the dataset downloads and
the compiled C kernels, and the data folders a command line named (``--data-dir``).

A leaf module (it imports nothing from prunelab, nor torch), so that ``native/``, ``data/`` and the
command line's options can all ask it without importing each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

__all__ = ["cache_base", "data_search_dirs", "search_data_in"]

_DATA_DIRS: ContextVar[tuple[Path, ...]] = ContextVar("prunelab_data_dirs", default=())


def search_data_in(folder: str | os.PathLike) -> Callable[[], None]:
    """Search ``folder`` for dataset files first, in every lookup of this context (a command's);
    returns the function that undoes it."""
    token = _DATA_DIRS.set((Path(folder).expanduser(), *_DATA_DIRS.get()))
    return lambda: _DATA_DIRS.reset(token)


def data_search_dirs() -> tuple[Path, ...]:
    """The folders :func:`search_data_in` added, the latest first."""
    return _DATA_DIRS.get()


def cache_base() -> Path:
    """``$XDG_CACHE_HOME/prunelab``, default ``~/.cache/prunelab`` (read at every call).

    Only an absolute ``$XDG_CACHE_HOME`` counts, as the XDG base-directory specification says: a
    relative one would move the cache with the working directory.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "prunelab"
