"""Masks and pruning methods.

A pruning method is criterion x structure x scope (x schedule): see :func:`prune`. Each axis is a
registry (:data:`CRITERIA`, :data:`STRUCTURES`, :data:`SCOPES`, :data:`METHODS`, ...), so a new
method is one class or record plus one registration.
"""

from prunelab.pruning import bayesian, coupled, selection, slimming, variational  # methods, before PruneSpec

# isort: split
from prunelab.pruning import nm, owl, rowwise, sparsegpt, wanda  # noqa: F401 - N:M, rows, one-shot LM methods
from prunelab.pruning.context import PruneContext
from prunelab.pruning.criteria import CRITERIA, Criterion
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
from prunelab.pruning.methods import METHODS, Method
from prunelab.pruning.prune import prune
from prunelab.pruning.schedule import density_after, one_shot_rate, rate_for_rounds, rounds_for_rate
from prunelab.pruning.scope import SCOPES
from prunelab.pruning.spec import PruneSpec
from prunelab.pruning.structure import STRUCTURES, UNIT_NORMS, Structure

__all__ = [
    "CRITERIA",
    "DISTRIBUTIONS",
    "LAYER_FILTERS",
    "METHODS",
    "SCOPES",
    "STRUCTURES",
    "UNIT_NORMS",
    "Criterion",
    "LayerInfo",
    "Mask",
    "Method",
    "PruneContext",
    "PruneSpec",
    "SparsityReport",
    "Structure",
    "bayesian",
    "coupled",
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
    "rounds_for_rate",
    "selection",
    "slimming",
    "sparsity_report",
    "variational",
]
