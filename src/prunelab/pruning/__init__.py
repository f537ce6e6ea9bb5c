"""Masks and pruning methods.

A pruning method (:data:`METHODS`) is either a scorer's scores ranked by structure x scope (x
schedule), or one class that chooses its mask itself: see :func:`prune` and
:mod:`prunelab.pruning.methods`. Each axis is a registry (:data:`SCORERS`, :data:`STRUCTURES`,
:data:`SCOPES`, :data:`METHODS`, ...), filled by the modules of this package when first read, so a
new method is one file. :class:`PruneSpec` is built from them when first asked for.
"""

from typing import Any

from prunelab.pruning.context import PruneContext
from prunelab.pruning.densities import DISTRIBUTIONS, layer_densities, random_mask
from prunelab.pruning.heads import head_importance, heads_mask
from prunelab.pruning.layers import LAYER_FILTERS, LayerInfo, prunable_layers
from prunelab.pruning.macs import masked_macs
from prunelab.pruning.mask import (
    Mask,
    SparsityReport,
    from_torch_prune,
    prunable_names,
    sparsity_report,
)
from prunelab.pruning.methods import METHODS, Method, PruningMethod, TrainingMethod, register_method
from prunelab.pruning.prune import prune
from prunelab.pruning.schedule import density_after, one_shot_rate, rate_for_rounds, rounds_for_rate
from prunelab.pruning.scope import SCOPES
from prunelab.pruning.scorers import SCORERS, Scorer
from prunelab.pruning.structure import STRUCTURES, UNIT_NORMS, Structure


def __getattr__(name: str) -> Any:
    if name == "PruneSpec":  # built from the registries when first asked for
        from prunelab.pruning.spec import prune_spec

        return prune_spec()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DISTRIBUTIONS",
    "LAYER_FILTERS",
    "METHODS",
    "SCOPES",
    "SCORERS",
    "STRUCTURES",
    "UNIT_NORMS",
    "LayerInfo",
    "Mask",
    "Method",
    "PruneContext",
    "PruneSpec",
    "PruningMethod",
    "Scorer",
    "SparsityReport",
    "Structure",
    "TrainingMethod",
    "density_after",
    "from_torch_prune",
    "head_importance",
    "heads_mask",
    "layer_densities",
    "masked_macs",
    "one_shot_rate",
    "prunable_layers",
    "prunable_names",
    "prune",
    "random_mask",
    "rate_for_rounds",
    "register_method",
    "rounds_for_rate",
    "sparsity_report",
]
