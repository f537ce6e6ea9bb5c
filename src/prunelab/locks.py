"""File locks: one writer per folder, released if its process dies (``fcntl.flock``), beside :mod:`prunelab.io`.

A lock is a file in the folder it guards (its name from :mod:`prunelab.experiments.paths`); it holds
who took it ("pid N on HOST since TIME"), which a refused or waiting process names.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.experiments.paths import LOCK, lock_branch
from prunelab.io import write_error

__all__ = ["ExperimentLocked", "is_locked", "locked"]


class ExperimentLocked(PrunelabError):
    """Another live process is writing this experiment."""


@contextmanager
def locked(
    directory: Path,
    *,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.5,
    name: str = LOCK,
) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (released if the process dies); ``name``, its file,
    tells apart the locks of parts written apart (a seed's branches).

    If another live process holds it: with ``wait``, wait for it (telling ``on_wait`` once, naming
    the holder); else refuse, naming the holder. A read-only folder is an :class:`OutputError`.
    """
    path = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held for the lifetime of the lock
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                if not wait:
                    branch = lock_branch(name)
                    what = directory if branch is None else f"{directory} ({branch})"
                    raise ExperimentLocked(
                        f"{what} is being written by {holder}; wait for it or stop it"
                    ) from None
                if not told and on_wait is not None:
                    on_wait(f"waiting for {holder}, which is writing {directory} (--no-wait to stop instead)")
                    told = True
                time.sleep(poll)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
            )
            handle.flush()
        except OSError as exc:
            raise write_error(path, exc) from None
        yield
    finally:
        handle.close()


def is_locked(directory: Path, name: str = LOCK) -> bool:
    """Whether a live process holds ``directory``'s lock ``name`` now (without taking it)."""
    path = directory / name
    if not path.is_file():
        return False
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False
