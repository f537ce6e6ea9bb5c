"""Safe file writing and loading: atomic writes, output folders that never replace what they should
not, and weights that never execute code when read.

Every file prunelab writes goes through :func:`atomic_path`: written beside its target under a
temporary name, synced, renamed onto the target in one step, with the mode the umask gives (not
``tempfile``'s 0600). A failure names the target and says why (the disk is full, the folder is
read-only), and leaves the old file, or none, never a truncated one. Folders of results meant for
people (an export, a report, a training's output) go through :func:`output_folder`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes

from prunelab.errors import CheckpointError, OutputError

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def os_reason(exc: BaseException) -> str:
    """What an OSError means, in words."""
    return {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the folder is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENAMETOOLONG: "the name is too long",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder",
    }.get(getattr(exc, "errno", None), getattr(exc, "strerror", None) or str(exc))


def write_error(path: str | os.PathLike, exc: BaseException) -> OutputError:
    """An :class:`OutputError` naming ``path`` and the reason, for an OSError while writing it."""
    return OutputError(f"cannot write {path}: {os_reason(exc)}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    A crash part-way leaves the old file (or none) and at most an orphan ``.NAME.*.tmp``, which the
    next run removes under its lock (:func:`remove_orphans`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_orphans(directory: Path, recursive: bool = True) -> int:
    """Remove the temporary files that killed writers left below ``directory`` (only in it, without
    ``recursive``); call it under the lock."""
    removed = 0
    for tmp in (directory.rglob if recursive else directory.glob)(f".*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so that it is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Valid JSON (NaN and infinities written as null), written atomically."""
    text = json.dumps(finite(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None
) -> None:
    """Save tensors as safetensors, atomically. Booleans are kept as bool."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save_safetensors_bytes(flat, metadata=metadata))


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to memory, then an atomic write: a full disk is an OSError naming ``path``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or foreign file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    if path.suffix in {".pt", ".pth", ".ckpt"}:
        return load_torch(path)
    try:
        return load_file(str(path))  # keys in the file's (sorted) order; the bytes loader's order varies
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or of another format"
        ) from None


def check_tensors_file(path: str | os.PathLike) -> None:
    """Check a safetensors file without reading its tensors: its header reads, and the file is as
    long as the header says; a missing, truncated or foreign file raises :class:`CheckpointError`
    (what :func:`load_tensors` would raise), at the cost of reading the header."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= size - 8:
                raise ValueError(f"{size} bytes cannot hold a header")
            header = json.loads(f.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        expected = 8 + length + max(ends, default=0)
        if expected != size:
            raise ValueError(f"{size} bytes where its header describes {expected}")
    except FileNotFoundError:
        raise CheckpointError(f"no such file: {path}") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or of another format"
        ) from None


def load_torch(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a torch file with ``weights_only=True``: plain tensors only, never code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} cannot be loaded safely as tensors: {first}") from None
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a mapping of names to tensors")
    return dict(obj)


def user_path(text: str | os.PathLike) -> Path:
    """``text`` as a path with ``~`` expanded; ``~name`` of no such user stays as written."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "Could not determine home directory"
        return Path(text)


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's content (16 hex digits), read in blocks; cached while the file's size and
    modification time stay the same, so an identity computed again costs a ``stat``. A file modified
    in the last two seconds is hashed afresh: file-system clocks are coarse, and an edit within the
    same tick could keep both (git's "racy" case). Raises ``OSError`` for a file that cannot be read
    (callers say what the file was for)."""
    st = Path(path).stat()
    if time.time_ns() - st.st_mtime_ns < RACY_NS:
        return _hash_file(path)
    return _content_hash(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


RACY_NS = 2_000_000_000


@functools.lru_cache(maxsize=64)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    return _hash_file(path)


def _hash_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_folder_path(path: str | os.PathLike, what: str) -> Path:
    """Refuse a path that cannot be a folder: a file, inside a file, or with a name too long."""
    path = user_path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise OutputError(f"{what} {str(path)[:80]}...: a name in it is longer than 255 bytes")
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == path else f"is inside the file {place}"
                raise OutputError(f"{what} {path} {where}, not a folder")
            break
    return path


# output folders -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputKind:
    """What one kind of output folder holds: ``--force`` replaces a folder only if it is one of these."""

    name: str  # "export", "report", "training output"
    marker: str  # the file that shows a folder is one (plan.json, report.html, ...)
    members: tuple[str, ...]  # everything such a folder may hold


def _within(path: Path, other: Path) -> bool:
    """Whether ``other`` is ``path`` or inside it."""
    try:
        other.relative_to(path)
        return True
    except ValueError:
        return False


def check_output_folder(
    path: str | os.PathLike, kind: OutputKind, *, force: bool = False, protect: Sequence[Path] = ()
) -> Path:
    """Refuse, before any work, an output folder that could hold something of value.

    A new or empty folder is fine. An existing one is replaced only with ``force``, and only if it
    is an earlier output of the same kind (its ``marker`` and nothing but ``members``). Never the
    current folder, a folder holding it, a folder holding any of ``protect`` (the results root), or
    a folder inside the store's own result folders (:data:`~prunelab.experiments.paths.FOLDERS`).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder; choose another output folder")
    check_folder_path(path, f"the {kind.name} folder")
    resolved = path.expanduser().resolve()
    guarded = [(Path.cwd().resolve(), "the current folder")] + [
        (Path(p).expanduser().resolve(), f"the results folder {p}") for p in protect
    ]
    for place, what in guarded:
        if _within(resolved, place):
            raise OutputError(f"{path} is or holds {what}; write the {kind.name} to a folder of its own")
    from prunelab.experiments.paths import FOLDERS

    for p in protect:
        root = Path(p).expanduser().resolve()
        for store_part in FOLDERS:
            if _within(root / store_part, resolved):
                raise OutputError(
                    f"{path} is inside the results store ({root / store_part}); write the {kind.name} elsewhere"
                )
    if path.is_dir():
        contents = sorted(c.name for c in path.iterdir())
        if contents and not force:
            raise OutputError(
                f"{path} exists and is not empty; choose another folder, or pass --force to replace an "
                f"earlier {kind.name} there"
            )
        foreign = [c for c in contents if c not in kind.members]
        if contents and (foreign or kind.marker not in contents):
            shown = ", ".join(foreign[:5]) or f"no {kind.marker}"
            raise OutputError(
                f"{path} is not an earlier {kind.name} ({shown}); --force replaces only a folder holding "
                f"{kind.marker} and nothing but {', '.join(kind.members)}"
            )
    return path


@contextmanager
def output_folder(
    path: str | os.PathLike, kind: OutputKind, *, force: bool = False, protect: Sequence[Path] = ()
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block ends without error it replaces ``path``.

    A failure part-way (a full disk) leaves ``path`` as it was and no partial folder.
    """
    path = check_output_folder(path, kind, force=force, protect=protect)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        _swap_in(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, path: Path) -> None:
    """Move the finished folder into place; an earlier one is removed only after that succeeded."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{tmp.name}")
        path.rename(old)
    try:
        tmp.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
