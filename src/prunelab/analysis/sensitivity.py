"""Sensitivity of each layer to pruning (Li et al. 2017, Fig. 2): each layer pruned alone at
10 ... 90% of its units, every other layer untouched, accuracy measured without any retraining.
With a coupled structure (``l1-filter``'s ``channels``), each group is pruned alone: the layer's
filters with every layer sharing their channels (a residual stage's convs, its BatchNorms, the
next layers' input columns), named by the layer whose filters they are.

The per-layer rates it suggests are the largest fractions whose accuracy stays within a tolerance
of the unpruned model's; they are ``--layer-rates`` for a one-shot ``l1-filter`` run (prune once,
then fine-tune), Li et al.'s recipe.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from prunelab.coupling import discover
from prunelab.data import Split
from prunelab.errors import SpecError
from prunelab.pruning import STRUCTURES, Mask, PruneContext, prune
from prunelab.pruning.coupled import CoupledStructure, units_of
from prunelab.pruning.layers import select_layers
from prunelab.pruning.prune import spec_from_keywords
from prunelab.table import Table
from prunelab.training.evaluation import evaluate

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Sensitivity:
    """Accuracy with each layer pruned alone at each fraction; ``base`` with nothing more pruned."""

    base: float
    fractions: tuple[float, ...]
    accuracy: dict[str, tuple[float, ...]]  # layer -> accuracy at each fraction

    def rates(self, tolerance: float) -> dict[str, float]:
        """Per layer, the largest fraction whose accuracy is at least ``base - tolerance`` (0 if none)."""
        out = {}
        for layer, accs in self.accuracy.items():
            ok = [f for f, a in zip(self.fractions, accs, strict=True) if a >= self.base - tolerance]
            out[layer] = max(ok, default=0.0)
        return out

    def table(self, title: str) -> Table:
        columns = ["layer", *(f"{f:.0%}" for f in self.fractions)]
        rows = [[layer, *(round(100 * a, 2) for a in accs)] for layer, accs in self.accuracy.items()]
        return Table(
            title,
            columns,
            rows,
            note=f"accuracy (%) with that layer alone pruned; unpruned {100 * self.base:.2f}%",
        )


def sensitivity(
    model: nn.Module,
    split: Split,
    *,
    mask: Mask | None = None,
    method: str = "l1-filter",
    structure: str | None = None,
    layers: str = "conv-only",
    exclude: Sequence[str] = (),
    fractions: Sequence[float] = FRACTIONS,
) -> Sensitivity:
    """Prune each selected layer of ``model`` (already masked by ``mask``) alone at each fraction
    of its remaining units with ``method``; accuracy on ``split``, no training."""
    fractions = tuple(float(f) for f in fractions)
    bad = [f for f in fractions if not 0 < f < 1]
    if bad or not fractions:
        raise SpecError(f"sensitivity fractions must be in (0, 1), got {list(fractions)[:8]}")
    chosen = select_layers(model, layers, exclude)
    net = copy.deepcopy(model).eval()
    mask = mask if mask is not None else Mask.ones(net)
    mask.apply(net)
    _, base = evaluate(net, split)
    every = [layer.name for layer in select_layers(model, "all")]
    spec = spec_from_keywords(fraction=0.0, method=method, structure=structure)
    struct = STRUCTURES.get(spec.structure_name())
    accuracy = {}
    if isinstance(struct, CoupledStructure):  # each group alone, named by the layer whose filters it prunes
        groups = discover(net, split.x[:1])
        context = PruneContext(groups=groups)
        for units in units_of(net, groups, select_layers(model, "all"), struct.kinds, spec.structure_name()):
            if units.layer.name not in {layer.name for layer in chosen}:
                continue
            accuracy[units.layer.name] = tuple(
                _accuracy(net, prune(net, mask, fraction=0.0, method=method, structure=structure,
                                     layer_rates={units.layer.name: f}, context=context), split)
                for f in fractions
            )  # fmt: skip
        return Sensitivity(base, fractions, accuracy)
    for layer in chosen:
        others = [n for n in every if n != layer.name]
        accuracy[layer.name] = tuple(
            _accuracy(
                net, prune(net, mask, fraction=f, method=method, structure=structure, exclude=others), split
            )
            for f in fractions
        )
    return Sensitivity(base, fractions, accuracy)


def _accuracy(net: nn.Module, mask: Mask, split: Split) -> float:
    trial = copy.deepcopy(net)
    mask.apply(trial)
    return evaluate(trial, split)[1]


def plot_sensitivity(result: Sensitivity, title: str):
    """Li et al.'s Fig. 2: accuracy against the fraction of units pruned, one line per layer."""
    from prunelab.analysis.plots import new_figure

    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    xs = [100 * f for f in result.fractions]
    for layer, accs in result.accuracy.items():
        ax.plot(xs, [100 * a for a in accs], marker="o", markersize=3, label=layer)
    ax.axhline(100 * result.base, color="grey", linestyle=":", linewidth=1, label="unpruned")
    ax.set_xlabel("units pruned away in the layer (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return fig


def level_sensitivity(level, split: str = "val", **options) -> Sensitivity:
    """:func:`sensitivity` of a loaded level (:func:`prunelab.load_level`) on its validation split
    (``split="test"``: the test split; the validation split falls back to test when there is none)."""
    data = level.spec.load_data()
    chosen = data.test if split == "test" or not len(data.val) else data.val
    return sensitivity(level.model, chosen, mask=level.mask, **options)
