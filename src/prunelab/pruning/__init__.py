"""Masks and pruning methods."""

from prunelab.pruning.mask import (
    Mask,
    SparsityReport,
    from_torch_prune,
    prunable_names,
    sparsity_report,
)

__all__ = ["Mask", "SparsityReport", "from_torch_prune", "prunable_names", "sparsity_report"]
