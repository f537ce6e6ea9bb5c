"""Wanda (Sun, Liu, Bair & Kolter 2023, "A Simple and Effective Pruning Approach for Large Language
Models"): a weight's score is ``|W_ij| * ||X_j||_2``, its magnitude times the L2 norm of its input
feature over every calibration token, compared within each output row (``per-row``, the paper's
comparison group) and never updated.

The norms of a block's layers are taken on the outputs of the blocks before it, already pruned
(:mod:`prunelab.pruning.blockwise`), as the paper's code does. ``--structure 2:4`` (any N:M) compares
within each group of M inputs instead, ``unstructured`` over each whole layer.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.pruning.blockwise import BlockwiseMethod
from prunelab.pruning.methods import register_method
from prunelab.pruning.rowgroups import layer_keep


class SquaredNorms:
    """The sum over tokens of each input feature's square (float64)."""

    def __init__(self, features: int, device: torch.device) -> None:
        self.total = torch.zeros(features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        self.total += x.detach().double().pow(2).sum(0)
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` of each input feature j over every token seen."""
        return self.total.sqrt()


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2`` for a Linear weight ``(out, in)`` and input norms ``(in,)``."""
    return weight.detach().double().abs() * norms.to(weight.device, torch.float64).reshape(1, -1)


@register_method("wanda")
class Wanda(BlockwiseMethod):
    """|W| x ||X||_2 per input feature, compared within each output row; weights not updated."""

    description = "|W| x ||X||, per output row, block by block (Sun et al. 2023)"
    structure = "per-row"

    def stats(self, name: str, module: nn.Module) -> SquaredNorms:
        return SquaredNorms(module.in_features, module.weight.device)

    def prune_layer(self, name, weight, stats, alive, rate, structure, spec):
        return layer_keep(structure, name, wanda_scores(weight, stats.norms()), alive, rate), None
