"""How alike two masks are: Jaccard similarity (intersection over union of kept weights) and Hamming.

Paganini & Forde (2020) compare masks found from identical initialisations (same seed) by two methods
(Figs. 3, 4), by rewinding and finetuning (Fig. 9), and one run's masks across levels; a Jaccard
distance near 0 means the same subnetwork, near 1 (at equal density) a disjoint one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from prunelab.analysis.runs import RunRef, levels_of, resolve, seeds_of
from prunelab.errors import PrunelabError
from prunelab.pruning import Mask


def _check_shapes(a: torch.Tensor, b: torch.Tensor, name: str = "mask") -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise PrunelabError(
            f"cannot compare {name}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ "
            "(masks must come from the same architecture)"
        )


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∧ b| / |a ∨ b| of two keep-masks; 1.0 when both keep nothing (they agree)."""
    _check_shapes(a, b)
    a, b = a.bool(), b.bool()
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def hamming(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of positions where the masks differ (0 = identical)."""
    _check_shapes(a, b)
    return int((a.bool() ^ b.bool()).sum()) / a.numel() if a.numel() else 0.0


def compare_masks(a: Mask, b: Mask) -> list[dict]:
    """Per layer and overall (last row, layer "overall"): counts, Jaccard similarity/distance, Hamming."""
    if a.names() != b.names():
        only_a = [n for n in a if n not in b]
        only_b = [n for n in b if n not in a]
        raise PrunelabError(
            f"the masks cover different layers: only in the first {only_a}, only in the second {only_b}"
        )
    rows = []
    totals = dict.fromkeys(("kept_a", "kept_b", "intersection", "union", "total", "differ"), 0)
    for name, ma in a.items():
        mb = b[name]
        _check_shapes(ma, mb, f"masks for {name!r}")
        ma, mb = ma.bool().cpu(), mb.bool().cpu()
        counts = {
            "kept_a": int(ma.sum()),
            "kept_b": int(mb.sum()),
            "intersection": int((ma & mb).sum()),
            "union": int((ma | mb).sum()),
            "total": ma.numel(),
            "differ": int((ma ^ mb).sum()),
        }
        rows.append({"layer": name.removesuffix(".weight"), **counts})
        for k, v in counts.items():
            totals[k] += v
    rows.append({"layer": "overall", **totals})
    for row in rows:
        row["jaccard"] = row["intersection"] / row["union"] if row["union"] else 1.0
        row["jaccard_distance"] = 1.0 - row["jaccard"]
        row["hamming"] = row["differ"] / row["total"] if row["total"] else 0.0
    return rows


def _level_rows(ma: Mask, mb: Mask, **keys: object) -> list[dict]:
    return [
        {**keys, **{k: r[k] for k in ("layer", "jaccard", "jaccard_distance", "hamming")}}
        | {"density_a": r["kept_a"] / r["total"], "density_b": r["kept_b"] / r["total"]}
        for r in compare_masks(ma, mb)
    ]


def similarity_between(
    run_a: RunRef,
    run_b: RunRef,
    *,
    root: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    levels: Sequence[int] | None = None,
) -> list[dict]:
    """Masks of two experiments compared at each pruned level, seed by seed (same seed = same init).

    Rows: level, seed, layer, jaccard, jaccard_distance, hamming, density_a, density_b. Use it for
    two methods (Paganini & Forde 2020, Figs. 3, 4) or rewinding against finetuning (Fig. 9).
    """
    a, b = resolve(run_a, root), resolve(run_b, root)
    common = [s for s in seeds_of(a, seeds) if s in b.levels]
    if not common:
        raise PrunelabError(
            f"experiments {a.id} and {b.id} share no seed with results "
            f"({sorted(a.levels)} vs {sorted(b.levels)}); masks are compared seed by seed"
        )
    rows = []
    for seed in common:
        both = [lv for lv in levels_of(a, seed) if lv in b.levels[seed] and lv > 0]
        for level in levels if levels is not None else both:
            if level not in both:
                raise PrunelabError(
                    f"level {level} is not finished in both experiments for seed {seed}; both have {both}"
                )
            rows += _level_rows(a.mask(seed, level), b.mask(seed, level), level=level, seed=seed)
    return rows


def similarity_across_levels(
    run: RunRef,
    *,
    reference: str | int = "previous",
    root: str | Path | None = None,
    seeds: Sequence[int] | None = None,
) -> list[dict]:
    """Each level's mask against the previous level's (``reference="previous"``) or a fixed level's.

    Rows: level, reference, seed, layer, jaccard, jaccard_distance, hamming, density_a (this level),
    density_b (the reference).
    """
    exp = resolve(run, root)
    if reference != "previous" and not isinstance(reference, int):
        raise PrunelabError(f"reference must be 'previous' or a level number, not {reference!r}")
    rows = []
    for seed in seeds_of(exp, seeds):
        finished = levels_of(exp, seed)
        masks = {lv: exp.mask(seed, lv) for lv in finished}
        if isinstance(reference, int) and reference not in masks:
            raise PrunelabError(
                f"experiment {exp.id} seed {seed} has no finished level {reference}; finished: {finished}"
            )
        for level in finished[1:]:
            ref = level - 1 if reference == "previous" else int(reference)
            if ref != level:
                rows += _level_rows(masks[level], masks[ref], level=level, reference=ref, seed=seed)
    return rows
