"""Which experiments, seeds and levels an analysis covers, and the names that tell them apart.

Masks, weights and metrics come from :class:`~prunelab.experiments.store.StoredExperiment`, the
store's one reader; level 0 is the shared dense trunk, whose mask keeps everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.experiments.store import StoredExperiment, find_experiment
from prunelab.stats import mean_std

RunRef = str | Path | StoredExperiment


def resolve(run: RunRef, root: str | Path | None = None) -> StoredExperiment:
    """An experiment from an id, prefix, label, folder, or an already loaded one; damaged results are
    refused, naming the file (an analysis never quietly leaves a level out)."""
    exp = run if isinstance(run, StoredExperiment) else find_experiment(run, root)
    exp.require_intact()
    return exp


def resolve_all(runs: Iterable[RunRef], root: str | Path | None = None) -> list[StoredExperiment]:
    exps = [resolve(r, root) for r in runs]
    if not exps:
        raise PrunelabError("give at least one experiment")
    return exps


def seeds_of(exp: StoredExperiment, seeds: Sequence[int] | None = None) -> list[int]:
    """The seeds with results (all, or those asked for, refusing ones without results)."""
    have = exp.seeds()
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
