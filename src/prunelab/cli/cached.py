"""Listings kept between runs, so that the commands a newcomer types first answer at once.

``methods``, ``treatments``, ``controls`` and ``data list`` read registries whose entries live in
modules that import torch and every method: a second or more before the first line. Their tables
depend only on prunelab's own code, and, for ``data list``, on the folders searched for datasets. So
each listing's tables are kept in the cache (``<cache>/listings/NAME.json``) under a key of
prunelab's files (each one's path, size and modification time) and of the inputs the listing takes;
with the folders it searched and their modification times. A listing is built afresh (from the
registries, as ever) whenever any of these changed: an edited or upgraded prunelab, another
``--data-dir``, a dataset put in place or removed. Reading it back imports neither torch nor the
registries. A cache that cannot be read or written only costs the time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prunelab.cache import cache_base
from prunelab.table import Table

__all__ = ["listing"]

#: Bump when the stored form changes.
FORMAT = 1


def listing(
    name: str,
    build: Callable[[], tuple[list[Table], Iterable[Path]]],
    registries: str,
    inputs: Mapping[str, object] = {},
) -> list[Table]:
    """The tables of listing ``name``: read back when nothing they depend on changed, else
    ``build()`` (the tables, and the folders whose content they depend on) and kept.

    When the module ``registries`` (whose import fills the registries read) is imported already,
    code in this process may have registered more entries: the listing is built then, not read."""
    if registries in sys.modules:
        return build()[0]
    path = cache_base() / "listings" / f"{name}.json"
    key = _key(name, inputs)
    kept = _read(path)
    if kept is not None and kept.get("key") == key and kept.get("folders") == _stamps(kept.get("paths", [])):
        try:
            return [Table(**t) for t in kept["tables"]]
        except (TypeError, KeyError):
            pass  # another form: built again below
    tables, folders = build()
    paths = [str(p) for p in folders]
    record = {
        "key": key,
        "paths": paths,
        "folders": _stamps(paths),
        "tables": [vars(t) for t in tables],
    }
    _write(path, record)
    return tables


def _key(name: str, inputs: Mapping[str, object]) -> str:
    """A hash of prunelab's files (path, size, modification time), Python's version and ``inputs``."""
    root = Path(__file__).resolve().parents[1]
    files = []
    for folder, _, names in os.walk(root):
        for file in names:
            if file.endswith(".py"):
                full = os.path.join(folder, file)
                st = os.stat(full)
                files.append((os.path.relpath(full, root), st.st_size, st.st_mtime_ns))
    text = json.dumps([FORMAT, name, sys.version, str(root), sorted(files), dict(inputs)], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _stamps(paths: list[str]) -> list:
    """Each folder's modification time and its sub-folders' (None when absent): what a file put in
    or taken out of them changes."""
    out = []
    for path in paths:
        try:
            with os.scandir(path) as entries:
                subs = sorted([e.name, e.stat().st_mtime_ns] for e in entries if e.is_dir())
            out.append([path, os.stat(path).st_mtime_ns, subs])
        except OSError:
            out.append([path, None, []])
    return out


def _read(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write(path: Path, record: dict) -> None:
    from prunelab.errors import OutputError
    from prunelab.io import atomic_write_json

    with contextlib.suppress(OSError, OutputError):  # a read-only cache: built each time
        atomic_write_json(path, json.loads(json.dumps(record, default=str)))
