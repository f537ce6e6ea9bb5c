"""Download a dataset from its official mirror into the cache, verified by checksum.

Each file goes to a temporary file beside its destination and is renamed into place only after
its checksum matches, so an interrupted or tampered download never looks like a dataset.
Network failures fail fast (short timeout) and say how else to get the data: many machines
that run experiments have no internet.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from prunelab.data.base import DATASETS, DatasetLoader
from prunelab.data.locate import cache_root, ways_to_get
from prunelab.errors import DataError
from prunelab.io import atomic_path

CHUNK = 1 << 20


def download(name: str, dest_root: str | Path | None = None, timeout: float = 10) -> Path:
    """Fetch dataset ``name`` into ``dest_root/name`` (default the prunelab cache); return that folder.

    Files already there with the right checksum are kept.
    """
    loader = DATASETS.get(name)
    if not loader.downloads:
        raise DataError(f"dataset {name!r} needs no download: {loader.info.how_to_get}")
    dest = (Path(dest_root).expanduser() if dest_root is not None else cache_root()) / name
    for file_name, algorithm, digest in loader.downloads:
        target = dest / file_name
        if target.is_file() and file_digest(target, algorithm) == digest:
            continue
        _fetch_verified(loader, file_name, algorithm, digest, target, timeout)
    return dest


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (MD5 is what the official mirrors publish; it checks integrity only)."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_verified(
    loader: DatasetLoader, file_name: str, algorithm: str, digest: str, target: Path, timeout: float
) -> None:
    url = loader.url_base + file_name
    with atomic_path(target) as tmp:
        _fetch(url, tmp, timeout, loader.info.name)
        actual = file_digest(tmp, algorithm)
        if actual != digest:
            raise DataError(
                f"download of {url} is corrupt: {algorithm} {actual} differs from the official {digest}; "
                "the partial file was removed, try again"
            )


def _fetch(url: str, dest: Path, timeout: float, name: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        others = ways_to_get(name, include_download=False)
        raise DataError(
            f"could not download {name} from {url}: {reason}\nOther ways to get it:\n{others}"
        ) from None
