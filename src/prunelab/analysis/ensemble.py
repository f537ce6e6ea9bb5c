"""Ensembles of subnetworks and how often they agree (Paganini & Forde 2020, Table 2 and Fig. 14).

Different methods find different subnetworks that learn partly complementary functions; averaging
their predicted probabilities can beat every member. Members are combined seed by seed (the
same initialisation), and accuracies and agreements are then averaged over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelab.analysis.runs import (
    RunRef,
    resolve_all,
    series_names,
)
from prunelab.errors import PrunelabError
from prunelab.experiments.store import StoredExperiment
from prunelab.stats import mean_std


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Softmax probabilities of ``model`` on inputs ``x`` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]).float().softmax(1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return float((probs.argmax(1) == y).float().mean())


def ensemble_accuracy(probs: Sequence[torch.Tensor], y: torch.Tensor) -> float:
    """Accuracy of the averaged predicted probabilities."""
    return accuracy(torch.stack(list(probs)).mean(0), y)


def agreement_matrix(probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(k, k): fraction of examples on which members i and j predict the same class."""
    preds = torch.stack([p.argmax(1) for p in probs])
    return (preds[:, None, :] == preds[None, :, :]).float().mean(-1)


@dataclass
class EnsembleResult:
    """Members' and the ensemble's accuracy (mean over seeds) and the mean agreement matrix."""

    names: list[str]
    levels: list[int]  # the level chosen in each member
    densities: list[float]  # mean density of each member
    member_acc: list[float]
    member_acc_std: list[float]
    ensemble_acc: float
    ensemble_acc_std: float
    agreement: torch.Tensor
    seeds: list[int]


class Predictions:
    """Test-set probabilities of experiment levels, computed once and cached."""

    def __init__(self, data_dir: str | Path | None = None, split: str = "test") -> None:
        self.data_dir, self.split = data_dir, split
        self._data: dict[tuple, object] = {}
        self._cache: dict[tuple[str, int, int], torch.Tensor] = {}

    def split_of(self, exp: StoredExperiment):
        key = (exp.spec.data, exp.spec.val_size, exp.spec.model, exp.spec.weights)
        if key not in self._data:
            data = exp.spec.load_data(self.data_dir)
            self._data[key] = getattr(data, self.split)
        return self._data[key]

    def __call__(self, exp: StoredExperiment, seed: int, level: int) -> torch.Tensor:
        key = (str(exp.directory), seed, level)
        if key not in self._cache:
            model = exp.build_model()
            model.load_state_dict(exp.weights(seed, level))
            self._cache[key] = predict_proba(model, self.split_of(exp).x)
        return self._cache[key]


def _check_same_data(exps: Sequence[StoredExperiment]) -> None:
    data = {(e.spec.data, e.spec.val_size) for e in exps}
    if len(data) > 1:
        raise PrunelabError(
            f"ensemble members must share a dataset and split; these use {sorted(map(str, data))}"
        )


def common_seeds(exps: Sequence[StoredExperiment], seeds: Sequence[int] | None = None) -> list[int]:
    common = sorted(set.intersection(*(set(e.levels) for e in exps)))
    if seeds is not None:
        missing = [s for s in seeds if s not in common]
        if missing:
            raise PrunelabError(
                f"seeds {missing} do not have results in every experiment; common seeds: {common}"
            )
        common = list(seeds)
    if not common:
        raise PrunelabError(
            "the experiments share no seed with results; ensembles combine members seed by seed"
        )
    return common


def closest_level(exp: StoredExperiment, seed: int, density: float) -> int:
    """The finished level whose density is closest to ``density`` on a log scale."""
    levels = exp.levels[seed]
    return min(levels, key=lambda lv: abs(math.log(levels[lv].density) - math.log(density)))


def ensemble(
    runs: Sequence[RunRef],
    *,
    level: int | None = None,
    density: float | None = None,
    seeds: Sequence[int] | None = None,
    root: str | Path | None = None,
    predictions: Predictions | None = None,
) -> EnsembleResult:
    """Average the members' probabilities at the same ``level`` index, or at the level of each
    member closest to ``density`` (default: the last level all members finished)."""
    exps = resolve_all(runs, root)
    _check_same_data(exps)
    if level is not None and density is not None:
        raise PrunelabError("choose members by level or by density, not both")
    if density is not None and not 0 < density <= 1:
        raise PrunelabError(f"density must be in (0, 1], not {density}")
    seeds = common_seeds(exps, seeds)
    if level is None and density is None:
        level = min(max(e.levels[s]) for e in exps for s in seeds)
    predict = predictions or Predictions()
    per_seed_members, per_seed_ens, agreements, chosen = [], [], [], []
    for seed in seeds:
        lv = [closest_level(e, seed, density) if density is not None else level for e in exps]
        for e, lvl in zip(exps, lv, strict=True):
            e.check_level(seed, lvl)
        probs = [predict(e, seed, lvl) for e, lvl in zip(exps, lv, strict=True)]
        y = predict.split_of(exps[0]).y
        per_seed_members.append([accuracy(p, y) for p in probs])
        per_seed_ens.append(ensemble_accuracy(probs, y))
        agreements.append(agreement_matrix(probs))
        chosen.append(lv)
    member = [mean_std([m[i] for m in per_seed_members]) for i in range(len(exps))]
    ens = mean_std(per_seed_ens)
    return EnsembleResult(
        names=series_names(exps),
        levels=chosen[0],
        densities=[
            mean_std([e.levels[s][chosen[k][i]].density for k, s in enumerate(seeds)])[0]
            for i, e in enumerate(exps)
        ],
        member_acc=[m[0] for m in member],
        member_acc_std=[m[1] for m in member],
        ensemble_acc=ens[0],
        ensemble_acc_std=ens[1],
        agreement=torch.stack(agreements).mean(0),
        seeds=list(seeds),
    )


def ensemble_table(
    runs: Sequence[RunRef],
    *,
    levels: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    root: str | Path | None = None,
    predictions: Predictions | None = None,
) -> list[dict]:
    """Paganini & Forde 2020, Table 2: at each pruning iteration, each member's mean accuracy and the ensemble's.

    Rows: level, then one key per member name, then "ensemble" (all members averaged).
    """
    exps = resolve_all(runs, root)
    seeds = common_seeds(exps, seeds)
    if levels is None:
        last = min(max(e.levels[s]) for e in exps for s in seeds)
        levels = range(1, last + 1)
    predict = predictions or Predictions()
    rows = []
    for level in levels:
        r = ensemble(exps, level=level, seeds=seeds, predictions=predict)
        rows.append(
            {"level": level, **dict(zip(r.names, r.member_acc, strict=True)), "ensemble": r.ensemble_acc}
        )
    return rows
