"""One trained model in one folder (a dense trunk, a trunk point, a level, a control branch).

Its files are named by :class:`~prunelab.experiments.paths.ArtifactFiles`; ``metrics.json`` is written
last, so its presence means the artifact is complete. A file that exists but cannot be read is a
:class:`DamagedResults` error naming it and the folder to remove to recompute it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import CheckpointError
from prunelab.experiments.metrics import LevelMetrics
from prunelab.experiments.paths import ArtifactFiles
from prunelab.io import atomic_write_json, check_tensors_file, load_tensors, save_tensors, save_torch


class DamagedResults(CheckpointError):
    """A results file that exists but cannot be read: named with what to remove to recompute it."""


@dataclass(frozen=True)
class Damage:
    """A damaged artifact: what is wrong (with the file's path) and the folder to remove to redo it."""

    problem: str
    folder: Path

    def message(self) -> str:
        return f"{self.problem}; remove {self.folder} and rerun the experiment to recompute it"


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Each state_dict entry's shape: what a stored weights file of ``model`` must hold."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


class Artifact:
    """One trained model in a folder: weights, optional mask, metrics, and an in-progress checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.files = ArtifactFiles(directory)

    @property
    def done(self) -> bool:
        return self.files.metrics.is_file()

    def metrics(self) -> LevelMetrics:
        path = self.files.metrics
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} cannot be read: {exc}") from None
        return LevelMetrics.from_json(values, path)

    def weights(self, like: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
        """The final weights; with ``like`` (entry -> shape of the architecture), a file holding other
        entries or shapes is a :class:`CheckpointError` (before ``load_state_dict`` could fail)."""
        path = self.files.weights
        weights = load_tensors(path)
        if like is not None:
            got = {k: tuple(v.shape) for k, v in weights.items()}
            if got != dict(like):
                wrong = sorted(set(got) ^ set(like)) or [k for k in got if got[k] != like[k]]
                raise CheckpointError(
                    f"{path} does not hold this architecture's weights (entries {wrong[:4]} differ)"
                )
        return weights

    def check_files(self) -> None:
        """Check the files a finished artifact holds (weights, and its mask when it has one) without
        loading them; a damaged one raises :class:`CheckpointError` naming it."""
        check_tensors_file(self.files.weights)
        if self.mask_path.is_file():
            check_tensors_file(self.mask_path)

    def damage_message(self, exc: BaseException) -> str:
        """What is wrong with this artifact and which folder to remove to recompute it."""
        return Damage(str(exc), self.dir).message()

    @property
    def mask_path(self) -> Path:
        return self.files.mask

    def finish(self, weights: dict[str, torch.Tensor], metrics: LevelMetrics) -> None:
        """Weights first, metrics last: metrics.json existing means the artifact is complete."""
        save_tensors(self.files.weights, weights)
        atomic_write_json(self.files.metrics, metrics.to_json())
        self.files.checkpoint.unlink(missing_ok=True)

    def save_checkpoint(self, state: dict) -> None:
        save_torch(self.files.checkpoint, state)

    def load_checkpoint(self) -> dict | None:
        path = self.files.checkpoint
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise CheckpointError(
                f"checkpoint {path} cannot be read safely ({type(exc).__name__}); delete it to restart this level"
            ) from None
