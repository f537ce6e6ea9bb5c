"""Where dataset files are searched for, in order, and what to tell the user when they are not found.

Order (first hit wins): the explicit ``data_dir``, a command's ``--data-dir``, ``$PRUNELAB_DATA``, the prunelab cache, then
system folders (the Debian package of Fashion-MNIST). Each user-given root may hold the files
directly, in ``<root>/<name>``, or in the torchvision layout below it.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunelab.cache import cache_base, data_search_dirs
from prunelab.data.base import DATASETS, DatasetLoader

ENV_VAR = "PRUNELAB_DATA"


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/prunelab/datasets`` (default ``~/.cache/prunelab/datasets``; see :func:`cache_base`)."""
    return cache_base() / "datasets"


def cache_dir(name: str) -> Path:
    """Where ``prunelab data get NAME`` puts a dataset."""
    return cache_root() / name


def user_roots(data_dir: Path | None) -> list[Path]:
    """The explicit ``data_dir``, a command line's ``--data-dir`` (:func:`prunelab.cache.search_data_in`)
    and the folders of ``$PRUNELAB_DATA`` (``os.pathsep``-separated)."""
    roots = [Path(data_dir).expanduser()] if data_dir is not None else []
    roots += [p for p in data_search_dirs() if p not in roots]
    env = os.environ.get(ENV_VAR, "")
    roots += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return roots


def candidate_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Every folder searched for dataset ``name``, in search order (empty when it needs no files)."""
    loader = DATASETS.get(name)
    if not loader.needs_files:
        return []
    layouts = getattr(loader, "torchvision_dirs", ())
    dirs: list[Path] = []
    for root in user_roots(Path(data_dir) if data_dir not in (None, "") else None):
        dirs += [root, root / name, *(root / sub for sub in layouts)]
    dirs += [cache_dir(name), *(cache_root() / sub for sub in layouts)]
    dirs += list(getattr(loader, "system_dirs", ()))
    return list(dict.fromkeys(dirs))


def find_data(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The first place holding dataset ``name`` (a folder, or an archive file), or None."""
    loader = DATASETS.get(name)
    for folder in candidate_dirs(name, data_dir):
        found = _find_in(loader, folder)
        if found is not None:
            return found
    return None


def ways_to_get(name: str, include_download: bool = True) -> str:
    """Bullet lines saying how to obtain dataset ``name``; shared by every 'not found' message."""
    loader = DATASETS.get(name)
    layouts = " or ".join(f"DIR/{sub}" for sub in getattr(loader, "torchvision_dirs", ()))
    lines = []
    if loader.downloads and include_download:
        lines.append(f"run `prunelab data get {name}` (downloads into {cache_dir(name)})")
    lines.append(
        f"put the files in a folder DIR and pass --data-dir DIR or set ${ENV_VAR}=DIR; they may sit in DIR, "
        f"DIR/{name}" + (f" or the torchvision layout {layouts}" if layouts else "")
    )
    lines.append(loader.info.how_to_get)
    return "\n".join(f"  - {line}" for line in lines)


def short_how(name: str) -> str:
    """One line on how to get dataset ``name``, for tables such as ``prunelab data list``."""
    loader = DATASETS.get(name)
    places = ", ".join([f"DIR/{name}", *(f"DIR/{sub}" for sub in getattr(loader, "torchvision_dirs", ()))])
    get = f"`prunelab data get {name}`, or " if loader.downloads else ""
    return f"not found: {get}--data-dir DIR / ${ENV_VAR}=DIR (files in DIR, {places})"


def missing_message(name: str, data_dir: str | Path | None = None) -> str:
    """Says the dataset was not found, every place searched, and how to get it."""
    searched = "\n".join(f"  - {d}" for d in candidate_dirs(name, data_dir))
    return f"dataset {name!r} not found. Searched:\n{searched}\nWays to get it:\n{ways_to_get(name)}"


def _find_in(loader: DatasetLoader, folder: Path) -> Path | None:
    find_in = getattr(loader, "find_in", None)
    if find_in is None or not folder.is_dir():
        return None
    return find_in(folder)
