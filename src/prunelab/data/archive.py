"""Safe extraction of dataset archives (tar, optionally compressed).

A tar member may name an absolute path, climb out with ``..`` or be a link to anywhere; such an
archive is refused instead of writing outside the destination.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from prunelab.errors import DataError


def extract_folder(archive: Path, folder: str, dest: Path) -> Path:
    """Extract the members under ``folder/`` of ``archive`` to ``dest/folder`` atomically; return that path.

    Members outside ``folder/`` are skipped. The folder appears only once complete, so a crash
    part-way never leaves a half-extracted dataset that later looks found.
    """
    target = dest / folder
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=dest))
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {dest}: {exc.strerror or exc}") from None
    try:
        _extract(archive, folder, tmp)
        if not (tmp / folder).is_dir():
            raise DataError(f"{archive} holds no folder {folder}/; it is not the expected archive")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract(archive: Path, folder: str, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if _check_member(archive, m, folder)]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters; members are checked above
                tar.extractall(dest, members=members)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"{archive} is not a readable archive ({exc}); it may be truncated or corrupt"
        ) from None


def _check_member(archive: Path, member: tarfile.TarInfo, folder: str) -> bool:
    """True to extract ``member``; False to skip it; :class:`DataError` when it is unsafe."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise DataError(
            f"refusing to extract {archive}: member {member.name!r} points outside the destination"
        )
    if not (member.isfile() or member.isdir()):
        raise DataError(f"refusing to extract {archive}: member {member.name!r} is a link or special file")
    return path.parts[:1] == (folder,)
