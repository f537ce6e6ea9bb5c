"""Where results live, written atomically, and a lock so that one process writes an experiment.

ROOT/trunks/<trunk-id>/seed-<s>/        dense level 0 and rewind points, shared by experiments
ROOT/experiments/<experiment-id>/       spec.json
    seed-<s>/level-<k>/                 mask.safetensors, weights.safetensors, metrics.json,
                                        checkpoint.pt while training (removed when done)
    seed-<s>/level-<k>/controls/<name>/ the same for control branches
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from prunelab.errors import CheckpointError, PrunelabError
from prunelab.io import atomic_path, atomic_write_json, load_tensors, save_tensors

DEFAULT_ROOT = Path("~/.prunelab/runs")


def results_root(root: str | Path | None = None) -> Path:
    """``--root``, else ``$PRUNELAB_HOME``, else ``~/.prunelab/runs``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("PRUNELAB_HOME")
    return Path(env).expanduser() if env else DEFAULT_ROOT.expanduser()


class ExperimentLocked(PrunelabError):
    """Another live process is writing this experiment."""


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (released if the process dies); say who holds it if taken."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    handle = open(path, "a+")  # noqa: SIM115 - held for the lifetime of the lock
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ExperimentLocked(
                f"{directory} is being written by {holder}; wait for it or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        handle.flush()
        yield
    finally:
        handle.close()


class Artifact:
    """One trained model in a folder: weights, optional mask, metrics, and an in-progress checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def done(self) -> bool:
        return (self.dir / "metrics.json").is_file()

    def metrics(self) -> dict:
        try:
            return json.loads((self.dir / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.dir / 'metrics.json'} cannot be read: {exc}") from None

    def weights(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.dir / "weights.safetensors")

    def finish(self, weights: dict[str, torch.Tensor], metrics: dict) -> None:
        """Weights first, metrics last: metrics.json existing means the artifact is complete."""
        save_tensors(self.dir / "weights.safetensors", weights)
        atomic_write_json(self.dir / "metrics.json", metrics)
        (self.dir / "checkpoint.pt").unlink(missing_ok=True)

    def save_checkpoint(self, state: dict) -> None:
        with atomic_path(self.dir / "checkpoint.pt") as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> dict | None:
        path = self.dir / "checkpoint.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise CheckpointError(
                f"checkpoint {path} cannot be read safely ({type(exc).__name__}); delete it to restart this level"
            ) from None
