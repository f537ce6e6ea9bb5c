"""Loading one trained level of an experiment back as a model and its mask (no pickle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from prunelab.errors import PrunelabError
from prunelab.experiments.spec import ExperimentSpec
from prunelab.experiments.store import Artifact
from prunelab.experiments.summary import StoredExperiment, find_experiment
from prunelab.models import build_model
from prunelab.pruning import Mask


@dataclass
class LoadedLevel:
    """A trained level: ``model`` holds its final weights (pruned ones exactly zero), ``mask`` beside it."""

    experiment: StoredExperiment
    seed: int
    level: int
    control: str | None
    model: nn.Module
    mask: Mask
    metrics: dict
    directory: Path

    @property
    def spec(self) -> ExperimentSpec:
        return self.experiment.spec


def level_directory(exp: StoredExperiment, seed: int, level: int, control: str | None = None) -> Path:
    if level == 0:
        if control is not None:
            raise PrunelabError("level 0 is the dense network; it has no control branches")
        return exp.directory.parent.parent / "trunks" / exp.trunk / f"seed-{seed}" / "dense"
    base = exp.directory / f"seed-{seed}" / f"level-{level:02d}"
    return base / "controls" / control if control else base


def load_level(
    run: str | Path,
    level: int | None = None,
    *,
    seed: int | None = None,
    control: str | None = None,
    root: str | Path | None = None,
) -> LoadedLevel:
    """Load ``level`` (default: the last finished) of ``seed`` (default: the first) of experiment ``run``.

    ``run`` is an id (or unique prefix), a label, or an experiment folder. ``control`` picks a control
    branch ("reinit", "random-mask") instead of the ticket.
    """
    exp = find_experiment(str(run), root)
    seeds = sorted(exp.levels)
    if not seeds:
        raise PrunelabError(f"experiment {exp.id} has no finished level yet")
    seed = seeds[0] if seed is None else seed
    if seed not in exp.levels:
        raise PrunelabError(
            f"experiment {exp.id} has no results for seed {seed}; seeds with results: {seeds}"
        )
    finished = sorted(exp.levels[seed])
    level = finished[-1] if level is None else level
    if level not in finished:
        raise PrunelabError(
            f"experiment {exp.id} seed {seed} has no finished level {level}; finished levels: "
            f"{finished[0]}..{finished[-1]}"
        )
    if control is not None and control not in exp.spec.controls:
        raise PrunelabError(
            f"experiment {exp.id} has no control {control!r}; its controls: {list(exp.spec.controls)}"
        )
    directory = level_directory(exp, seed, level, control)
    art = Artifact(directory)
    info = exp.spec.data_info
    model = build_model(
        exp.spec.model, num_classes=info.num_classes, input_shape=info.input_shape, init=exp.spec.init
    )
    model.load_state_dict(art.weights())
    mask_path = directory / "mask.safetensors"
    if not mask_path.is_file() and level > 0:
        mask_path = level_directory(exp, seed, level) / "mask.safetensors"
    mask = Mask.load(mask_path) if mask_path.is_file() else Mask.ones(model)
    mask.apply(model)
    return LoadedLevel(exp, seed, level, control, model, mask, art.metrics(), directory)
