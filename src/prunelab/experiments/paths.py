"""Where everything of a results root lives: the one module that spells its folder and file names.

The layout (as OpenLTH's ``foundations/paths.py`` keeps its own)::

    ROOT/trunks/<trunk-id>/seed-<s>/dense/              dense level 0, shared by every experiment
    ROOT/trunks/<trunk-id>/seed-<s>/rewind-<k>it/       trunk weights at iteration k (late rewinding)
    ROOT/experiments/<experiment-id>/spec.json          the spec, its id, trunk id, label, every seed run
    ROOT/experiments/<experiment-id>/seed-<s>/level-<k>/
        mask.safetensors, weights.safetensors, metrics.json, checkpoint.pt while training
    ROOT/experiments/<experiment-id>/seed-<s>/level-<k>/controls/<name>/   the same, per control

and the locks: ``.lock`` in an experiment's folder and in a trunk's seed folder, ``.lock-<branch>``
in an experiment's seed folder (each branch of a seed written apart). The store, the runner, the
sweeps, the thread check and the output-folder guard all ask here; none spells a name itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXPERIMENTS, TRUNKS = "experiments", "trunks"
#: The folders of a results root that hold results (an output folder is never put inside them).
FOLDERS = (EXPERIMENTS, TRUNKS)
SPEC = "spec.json"
LOCK = ".lock"


def branch_lock(branch: str) -> str:
    """The lock file of one branch (the levels, or a control) of a seed."""
    return f"{LOCK}-{branch}"


def lock_branch(name: str) -> str | None:
    """The branch a lock file name is of (None for a folder's whole lock)."""
    return name.removeprefix(f"{LOCK}-") if name.startswith(f"{LOCK}-") else None


@dataclass(frozen=True)
class ArtifactFiles:
    """The files of one trained model's folder; ``metrics.json`` last: its presence means complete."""

    dir: Path

    @property
    def weights(self) -> Path:
        return self.dir / "weights.safetensors"

    @property
    def mask(self) -> Path:
        return self.dir / "mask.safetensors"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"


@dataclass(frozen=True)
class Paths:
    """Every folder of the results root ``root``."""

    root: Path

    def experiment(self, experiment: str) -> Path:
        return self.root / EXPERIMENTS / experiment

    def spec(self, experiment: str) -> Path:
        return self.experiment(experiment) / SPEC

    def seed(self, experiment: str, seed: int) -> Path:
        return self.experiment(experiment) / f"seed-{seed}"

    def level(self, experiment: str, seed: int, level: int) -> Path:
        """A pruned level (``level`` >= 1) of an experiment."""
        return self.seed(experiment, seed) / f"level-{level:02d}"

    def control(self, experiment: str, seed: int, level: int, name: str) -> Path:
        return self.level(experiment, seed, level) / "controls" / name

    def trunk(self, trunk: str, seed: int) -> Path:
        return self.root / TRUNKS / trunk / f"seed-{seed}"

    def dense(self, trunk: str, seed: int) -> Path:
        return self.trunk(trunk, seed) / "dense"

    def trunk_point(self, trunk: str, seed: int, iteration: int) -> Path:
        """The trunk's weights after ``iteration`` iterations (a rewind point)."""
        return self.trunk(trunk, seed) / f"rewind-{iteration}it"

    def spec_files(self) -> list[Path]:
        """The ``spec.json`` of every experiment folder, sorted."""
        base = self.root / EXPERIMENTS
        return sorted(base.glob(f"*/{SPEC}")) if base.is_dir() else []

    def lock_files(self) -> list[Path]:
        """Every lock file under the root: experiments', their seeds' branches', trunks'."""
        if not self.root.is_dir():
            return []
        patterns = (f"{EXPERIMENTS}/*/{LOCK}", f"{EXPERIMENTS}/*/seed-*/{LOCK}*", f"{TRUNKS}/*/seed-*/{LOCK}")
        return [lock for pattern in patterns for lock in sorted(self.root.glob(pattern))]


def root_of(experiment: Path) -> Path:
    """The results root an experiment's folder is in."""
    return experiment.parent.parent


def spec_file(directory: Path) -> Path:
    """The ``spec.json`` of an experiment folder."""
    return directory / SPEC
