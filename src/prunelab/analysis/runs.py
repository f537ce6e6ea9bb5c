"""Reading what analyses need from stored experiments: masks and weights per seed and level, names.

Masks and weights are read straight from the safetensors files (no model is built) so that
comparing many levels stays cheap. Level 0 is the shared dense trunk: its mask keeps everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.experiments.load import level_directory
from prunelab.experiments.store import Artifact
from prunelab.experiments.summary import StoredExperiment, find_experiment
from prunelab.experiments.summary import mean_std as summary_mean_std
from prunelab.pruning import Mask

RunRef = str | Path | StoredExperiment


def resolve(run: RunRef, root: str | Path | None = None) -> StoredExperiment:
    """An experiment from an id, prefix, label, folder, or an already loaded one."""
    return run if isinstance(run, StoredExperiment) else find_experiment(str(run), root)


def resolve_all(runs: Iterable[RunRef], root: str | Path | None = None) -> list[StoredExperiment]:
    exps = [resolve(r, root) for r in runs]
    if not exps:
        raise PrunelabError("give at least one experiment")
    return exps


def dataset_info(exp: StoredExperiment):
    return exp.spec.data_info


def build_for(exp: StoredExperiment) -> nn.Module:
    """An untrained model of the experiment's architecture (to know its layers and shapes)."""
    from prunelab.models import build_model

    info = dataset_info(exp)
    return build_model(
        exp.spec.model, num_classes=info.num_classes, input_shape=info.input_shape, init=exp.spec.init
    )


def seeds_of(exp: StoredExperiment, seeds: Sequence[int] | None = None) -> list[int]:
    """The seeds with results (all, or those asked for, refusing ones without results)."""
    have = sorted(exp.levels)
    if not have:
        raise PrunelabError(f"experiment {exp.id} ({exp.spec.label()}) has no finished level yet")
    if seeds is None:
        return have
    missing = [s for s in seeds if s not in exp.levels]
    if missing:
        raise PrunelabError(
            f"experiment {exp.id} has no results for seeds {missing}; seeds with results: {have}"
        )
    return list(seeds)


def levels_of(exp: StoredExperiment, seed: int) -> list[int]:
    return sorted(exp.levels.get(seed, {}))


def check_level(exp: StoredExperiment, seed: int, level: int) -> None:
    if seed not in exp.levels:
        raise PrunelabError(
            f"experiment {exp.id} has no results for seed {seed}; seeds: {sorted(exp.levels)}"
        )
    finished = levels_of(exp, seed)
    if level not in finished:
        raise PrunelabError(
            f"experiment {exp.id} ({exp.spec.label()}) seed {seed} has no finished level {level}; "
            f"finished levels: {finished[0]}..{finished[-1]}"
        )


def level_weights(exp: StoredExperiment, seed: int, level: int) -> dict[str, torch.Tensor]:
    """Final weights of a level (pruned ones exactly zero)."""
    check_level(exp, seed, level)
    return Artifact(level_directory(exp, seed, level)).weights()


def level_mask(exp: StoredExperiment, seed: int, level: int) -> Mask:
    """The mask a level trained with; level 0 keeps every prunable weight."""
    check_level(exp, seed, level)
    if level == 0:
        return Mask.ones(build_for(exp))
    return Mask.load(level_directory(exp, seed, level) / "mask.safetensors")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN for none (plots draw gaps)."""
    return summary_mean_std([float(v) for v in values]) or (float("nan"), float("nan"))


def average(rows: Sequence[dict], keys: Sequence[str], values: Sequence[str]) -> list[dict]:
    """Group ``rows`` by ``keys`` and give each value's mean and std (``v`` and ``v_std``), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, group in groups.items():
        row = dict(zip(keys, key, strict=True))
        row["seeds"] = len(group)
        for v in values:
            row[v], row[f"{v}_std"] = mean_std([g[v] for g in group])
        out.append(row)
    return out


def series_names(exps: Sequence[StoredExperiment]) -> list[str]:
    """Short names that tell the experiments apart: their own names, else method, treatment, label, id."""
    if all(e.spec.name for e in exps) and len({e.spec.name for e in exps}) == len(exps):
        return [str(e.spec.name) for e in exps]
    candidates = [
        lambda e: e.spec.pruning.method,
        lambda e: f"{e.spec.pruning.method}/{e.spec.treatment.kind}",
        lambda e: e.spec.label(),
        lambda e: f"{e.spec.label()} [{e.id[:6]}]",
    ]
    for name in candidates:
        names = [name(e) for e in exps]
        if len(set(names)) == len(names):
            return names
    return [f"{e.spec.label()} [{e.id}]" for e in exps]
