"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot"): each Linear layer pruned by optimal-brain-surgeon updates from its calibration Hessian,
the kept weights refitted to make up for the pruned ones.

Per layer, from the inputs ``X`` of its block's calibration pass (the blocks before it already
pruned, :mod:`prunelab.pruning.blockwise`): ``H = 2 X X^T / n`` (n the tokens), dampened by
``dampening`` (1%) of its mean diagonal, ``U`` the upper Cholesky factor of ``H^-1``. Columns are
processed left to right in blocks of ``blocksize`` (128) with lazy updates: within a block, each
column's pruned weights are removed with the update ``-w / U_jj * U_j,j:`` on the columns after it,
whose weights are later ones still free to move (the closed form of OBS for the Hessian of the
columns not yet fixed), and the block's accumulated error updates the columns after the block at
once. The mask is chosen as it goes: unstructured, the ``round(rate * alive)`` weights of smallest
``w^2 / U_jj^2`` in each column block, over all rows (at the block's start); N:M, the N smallest of
each group of M columns of a row, when the group is reached (its weights already updated). A
layer's loss, ``sum (w - q)^2 / (2 U_jj^2)``, is the increase of ``||W X - W' X||^2 / n`` it predicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.blockwise import BlockwiseMethod
from prunelab.pruning.methods import register_method
from prunelab.pruning.nm import NM
from prunelab.pruning.rowgroups import RowGroups, drop_in_groups
from prunelab.spec import FrozenSpec


class Hessian:
    """``2 X X^T / n`` of a layer's inputs (float32 as in the paper's code; float64 for float64 layers)."""

    def __init__(self, features: int, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.sum = torch.zeros(features, features, dtype=dtype, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().to(self.sum.dtype)
        self.sum += x.T @ x
        self.tokens += x.shape[0]

    def value(self) -> torch.Tensor:
        return self.sum * (2.0 / max(1, self.tokens))


@dataclass
class Result:
    """A layer pruned by SparseGPT: its new weight (zeros where pruned), keep mask and the loss per row."""

    weight: torch.Tensor
    keep: torch.Tensor
    losses: torch.Tensor


def _block_mask(w1: torch.Tensor, d: torch.Tensor, alive: torch.Tensor, rate: float) -> torch.Tensor:
    """Unstructured: prune the ``round(rate * alive)`` smallest ``w^2 / d^2`` of the block (and its dead)."""
    score = w1.pow(2) / d.reshape(1, -1).pow(2)
    count = torch.tensor([round(rate * int(alive.sum()))], device=w1.device)
    return ~drop_in_groups(score.reshape(1, -1), alive.reshape(1, -1), count).reshape(alive.shape)


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    alive: torch.Tensor,
    rate: float,
    *,
    nm: NM | None = None,
    blocksize: int = 128,
    dampening: float = 0.01,
    prune: torch.Tensor | None = None,
) -> Result:
    """Prune one Linear weight ``(out, in)`` with Hessian ``hessian`` ``(in, in)`` (see the module
    docstring); ``alive``: weights not pruned yet. ``prune`` fixes the weights to remove instead of
    choosing them (for checks against a brute-force OBS)."""
    dtype = hessian.dtype
    w = weight.detach().to(dtype).clone()
    h = hessian.clone()
    alive = alive.bool().to(w.device)
    dead = torch.diagonal(h) == 0  # an input that is always 0: its weights do nothing
    h[dead, dead] = 1
    w[:, dead] = 0
    columns = w.shape[1]
    diagonal = torch.arange(columns, device=w.device)
    h[diagonal, diagonal] += dampening * torch.mean(torch.diagonal(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned = torch.zeros_like(alive)
    losses = torch.zeros(w.shape[0], dtype=dtype, device=w.device)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diagonal(hinv1)
        if prune is not None:
            mask1 = prune[:, i1:i2].bool().clone()
        elif nm is None:
            mask1 = _block_mask(w1, d, alive[:, i1:i2], rate)
        else:
            mask1 = ~alive[:, i1:i2].clone()
        for i in range(i2 - i1):
            if prune is None and nm is not None and (i1 + i) % nm.m == 0:
                group = slice(i, i + nm.m)
                score = w1[:, group].pow(2) / d[group].reshape(1, -1).pow(2)
                keep = nm.keep(score, alive[:, i1:i2][:, group], 0.0)
                mask1[:, group] = ~keep
            col = w1[:, i]
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            losses += (col - q).pow(2) / d[i].pow(2) / 2
            err = (col - q) / d[i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    keep = ~pruned
    return Result((w * keep).to(weight.dtype), keep, losses)


@register_method("sparsegpt")
class SparseGPT(BlockwiseMethod):
    """OBS row updates from each layer's calibration Hessian, the kept weights refitted (one shot)."""

    class Settings(FrozenSpec):
        flag_prefix = "sparsegpt-"
        blocksize: int = Field(
            128, ge=1, le=1_000_000, description="columns per lazy-update block (the paper: 128)"
        )
        dampening: float = Field(
            0.01,
            ge=0,
            le=1,
            description="added to the Hessian's diagonal, as a share of its mean (the paper: 1%)",
        )

    description = "OBS from the calibration Hessian (Frantar & Alistarh 2023)"
    updates_weights = True
    structure_hint = "use unstructured (chosen per block of columns) or N:M (e.g. 2:4)"

    def structures_allowed(self, structure) -> bool:
        return isinstance(structure, NM) or not (structure.structured or isinstance(structure, RowGroups))

    def stats(self, name: str, module: nn.Module) -> Hessian:
        dtype = torch.float64 if module.weight.dtype == torch.float64 else torch.float32
        return Hessian(module.in_features, module.weight.device, dtype)

    def prune_layer(self, name, weight, stats, alive, rate, structure, spec):
        settings = self.settings(spec)
        nm = structure if isinstance(structure, NM) else None
        if nm is not None and settings.blocksize % nm.m:
            raise SpecError(
                f"sparsegpt's blocksize {settings.blocksize} must be a multiple of M={nm.m} for structure "
                f"{nm.name!r}, so that no group straddles two blocks"
            )
        if nm is None and rate == 0:
            return alive.clone(), None
        result = sparsegpt(
            weight, stats.value(), alive, rate, nm=nm,
            blocksize=settings.blocksize, dampening=settings.dampening,
        )  # fmt: skip
        return result.keep, result.weight
