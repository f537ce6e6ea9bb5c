"""``per-row``: single weights compared within each output row, every row losing the same share
(Sun et al. 2023, Wanda's comparison group), and ``magnitude-row``, magnitude pruned so.

Each row (an output neuron's incoming weights, a filter's weights) loses ``round(rate * its alive
weights)``: a layer can never lose one neuron's inputs wholesale while keeping another's. Wanda
found this group matters for language models even for plain magnitude; ``magnitude`` itself stays
per layer (``--scope layerwise``), the usual baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.pruning.methods import Method, add_method
from prunelab.pruning.rowgroups import RowGroups
from prunelab.pruning.structure import STRUCTURES


@dataclass(frozen=True)
class PerRow(RowGroups):
    """Each output row is one group, losing ``round(rate * alive)`` of its weights."""

    def group_view(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(tensor.shape[0], -1)

    def ungroup(self, groups: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return groups.reshape(shape)

    def counts(self, alive: torch.Tensor, rate: float) -> torch.Tensor:
        return torch.round(rate * alive.sum(1).to(torch.float64)).to(torch.int64)


STRUCTURES.add(
    "per-row", PerRow(None, None, "single weights, each output row losing the same share (Wanda's groups)")
)
add_method(
    "magnitude-row",
    Method(
        scorer="magnitude",
        description="smallest |w| of each output row (the per-output baseline)",
        structure="per-row",
    ),
)
