"""Weight stability to pruning (Paganini & Forde 2020, Sec. 5): how much surviving weights move between levels.

Paganini & Forde (2020) find that the methods that keep the best accuracy also keep weights closest to the values
they converged to at the previous level (Fig. 8), and show it per weight (Figs. 6, 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunelab.analysis.runs import (
    RunRef,
    average,
    levels_of,
    resolve,
    seeds_of,
)
from prunelab.errors import PrunelabError
from prunelab.pruning.layers import describe, prunable_layers, resolve_layer


def weight_stability(
    run: RunRef, *, root: str | Path | None = None, seeds: Sequence[int] | None = None
) -> list[dict]:
    """Mean |w_i - w_{i-1}| per layer between the final weights of consecutive levels, over the
    weights kept at both levels. Rows: level (i), seed, layer, mean_abs_change, weights (count)."""
    exp = resolve(run, root)
    rows = []
    for seed in seeds_of(exp, seeds):
        finished = levels_of(exp, seed)
        prev_w, prev_m = exp.weights(seed, finished[0]), exp.mask(seed, finished[0])
        for level in finished[1:]:
            w, m = exp.weights(seed, level), exp.mask(seed, level)
            for name, keep in m.items():
                both = keep & prev_m[name]
                n = int(both.sum())
                diff = (w[name] - prev_w[name]).abs()[both]
                rows.append(
                    {
                        "level": level,
                        "seed": seed,
                        "layer": name.removesuffix(".weight"),
                        "mean_abs_change": float(diff.mean()) if n else float("nan"),
                        "weights": n,
                    }
                )
            prev_w, prev_m = w, m
    return rows


def stability_summary(rows: Sequence[dict]) -> list[dict]:
    """Per layer, the mean over levels and seeds (Paganini & Forde 2020, Fig. 8: the lower, the more stable)."""
    usable = [r for r in rows if r["weights"] > 0]
    return [
        {
            "layer": r["layer"],
            "mean_abs_change": r["mean_abs_change"],
            "std": r["mean_abs_change_std"],
            "pairs": r["seeds"],
        }
        for r in average(usable, ("layer",), ("mean_abs_change",))
    ]


@dataclass
class Trajectories:
    """Final values of some weights of one layer at each level; NaN from the level it is pruned."""

    layer: str
    levels: list[int]
    densities: list[float]  # the layer's density at each level
    values: np.ndarray  # (weights, levels)
    indices: np.ndarray  # flat indices of the weights shown, into the layer's weight


def weight_trajectories(
    run: RunRef,
    layer: str,
    *,
    seed: int | None = None,
    root: str | Path | None = None,
    max_weights: int = 300,
) -> Trajectories:
    """One line per weight across levels, ending where it is pruned (Paganini & Forde 2020, Figs. 6, 7).

    Layers with more than ``max_weights`` weights show an evenly spaced subset.
    """
    exp = resolve(run, root)
    seed = seeds_of(exp)[0] if seed is None else seed
    exp.check_level(seed, 0)
    finished = levels_of(exp, seed)
    layers = prunable_layers(exp.build_model())
    try:
        param = resolve_layer(layer, layers).param
    except PrunelabError:
        raise PrunelabError(f"unknown layer {layer!r}; layers: {describe(layers)}") from None
    columns, densities = [], []
    for level in finished:
        w = exp.weights(seed, level)[param].flatten()
        keep = exp.mask(seed, level)[param].flatten()
        columns.append(torch.where(keep, w, torch.full_like(w, float("nan"))))
        densities.append(float(keep.float().mean()))
    values = torch.stack(columns, dim=1).numpy()
    idx = np.linspace(0, values.shape[0] - 1, min(max_weights, values.shape[0])).round().astype(int)
    return Trajectories(layer, finished, densities, values[idx], idx)
