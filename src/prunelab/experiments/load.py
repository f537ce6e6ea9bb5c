"""Loading one trained level of an experiment back as a model and its mask (no pickle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from prunelab.experiments.metrics import LevelMetrics
from prunelab.experiments.store import StoredExperiment, find_experiment
from prunelab.pruning import Mask

if TYPE_CHECKING:
    from prunelab.experiments.spec import ExperimentSpec


@dataclass
class LoadedLevel:
    """A trained level: ``model`` holds its final weights (pruned ones exactly zero), ``mask`` beside it."""

    experiment: StoredExperiment
    seed: int
    level: int
    control: str | None
    model: nn.Module
    mask: Mask
    metrics: LevelMetrics
    directory: Path

    @property
    def spec(self) -> ExperimentSpec:
        return self.experiment.spec


def load_level(
    run: str | Path | StoredExperiment,
    level: int | None = None,
    *,
    seed: int | None = None,
    control: str | None = None,
    root: str | Path | None = None,
) -> LoadedLevel:
    """Load ``level`` (default: the last finished) of ``seed`` (default: the first) of experiment ``run``.

    ``run`` is an id (or unique prefix), a label, an experiment folder, or an experiment already read.
    ``control`` picks a control branch ("reinit", "random-mask") instead of the ticket.
    """
    exp = run if isinstance(run, StoredExperiment) else find_experiment(run, root)
    seeds = exp.seeds()
    seed = (seeds[0] if seeds else 0) if seed is None else seed
    if level is None:  # the last finished level, unless a damaged one hides later ones
        exp.require_intact(seed)
        exp.check_level(seed, 0)
        level = max(exp.levels[seed])
    exp.check_level(seed, level, control)
    model = exp.build_model()
    model.load_state_dict(exp.weights(seed, level, control))
    mask = exp.mask(seed, level, control, full=True)
    mask.apply(model)
    return LoadedLevel(
        exp,
        seed,
        level,
        control,
        model,
        mask,
        exp.metrics(seed, level, control),
        exp.artifact(seed, level, control).dir,
    )
