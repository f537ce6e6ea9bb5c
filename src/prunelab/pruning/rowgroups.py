"""Structures whose single weights compete within fixed groups of each layer: the base of ``per-row``
(Wanda's comparison group) and ``N:M`` (e.g. 2:4 sparsity).

A layer's weight is read with output rows first (``(out, in)`` for a Linear, ``(out, in, kh, kw)`` for
a conv). A :class:`RowGroups` structure cuts each layer into groups of weights, and every group
loses its own count of its lowest-scored alive weights (a stable ascending sort: ties go to the
lower index, as everywhere in prunelab). Pruned weights are never candidates again. The scope is
always layerwise, since no weight competes outside its group.

:func:`layer_keep` is the one selection the one-shot methods (Wanda, the magnitude baseline) share:
a group structure's own groups, or the whole layer for ``unstructured``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.layers import LayerInfo
from prunelab.pruning.mask import Mask
from prunelab.pruning.structure import Structure


def drop_in_groups(scores: torch.Tensor, alive: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``alive`` (groups, size) without the ``count[g]`` lowest-scored alive entries of each group g.

    Ties go to the lower index (stable sort); dead entries sort first and stay dead.
    """
    values = scores.to(torch.float64).masked_fill(~alive, -torch.inf)
    order = values.argsort(dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    dead = (~alive).sum(1, keepdim=True)
    return alive & (rank >= dead + count.reshape(-1, 1))


@dataclass(frozen=True)
class RowGroups(Structure):
    """Single weights competing within fixed groups of each output row (see the module docstring).

    Subclasses say how a weight is cut into groups (:meth:`group_view` and its inverse) and how many
    alive weights each group loses (:meth:`counts`)."""

    selects: ClassVar[bool] = True
    """Chooses each layer's weights itself, within its groups (:func:`prunelab.prune` defers to it)."""
    reads_rate: ClassVar[bool] = True
    """Whether the pruning rate sets how many weights go (N:M fixes it at N of every M)."""

    def check_layer(self, layer: LayerInfo) -> None:
        """Refuse, naming it, a layer this structure cannot cut into groups."""

    def group_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The weight-shaped ``tensor`` as (groups, weights per group)."""
        raise NotImplementedError

    def ungroup(self, groups: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`group_view`."""
        raise NotImplementedError

    def counts(self, alive: torch.Tensor, rate: float) -> torch.Tensor:
        """How many alive weights each group (row of ``alive``) loses at ``rate``."""
        raise NotImplementedError

    def keep(self, scores: torch.Tensor, alive: torch.Tensor, rate: float) -> torch.Tensor:
        """The weight-shaped keep mask: ``alive`` less each group's lowest-scored weights."""
        shape = tuple(alive.shape)
        groups = self.group_view(alive.bool())
        kept = drop_in_groups(self.group_view(scores), groups, self.counts(groups, rate))
        return self.ungroup(kept, shape)

    def select(
        self,
        model: nn.Module,
        mask: Mask,
        chosen: Sequence[LayerInfo],
        rates: Mapping[str, float],
        fraction: float,
        scores: Mapping[str, torch.Tensor],
    ) -> Mask:
        """The new mask: each chosen layer's groups pruned by ``scores`` at its rate (``rates``, else
        ``fraction``); the other entries of ``mask`` unchanged."""
        out = {n: m.clone() for n, m in mask.items()}
        for layer in chosen:
            keep = mask[layer.param]
            score = scores[layer.param].to(keep.device)
            if torch.isnan(score[keep]).any():
                raise SpecError(
                    f"the scores of {layer.name} hold NaN: the model's weights or data hold NaN/inf"
                )
            out[layer.param] = self.keep(score, keep, rates.get(layer.param, fraction))
        return Mask(out)


@dataclass(frozen=True)
class WholeLayer(RowGroups):
    """Every weight of a layer in one group, losing ``round(rate * alive)``: unstructured, layerwise."""

    def group_view(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(1, -1)

    def ungroup(self, groups: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return groups.reshape(shape)

    def counts(self, alive: torch.Tensor, rate: float) -> torch.Tensor:
        return torch.tensor([round(rate * int(alive.sum()))], device=alive.device)


WHOLE_LAYER = WholeLayer(None, None, "single weights, each layer on its own")


def layer_keep(
    structure: Structure, name: str, scores: torch.Tensor, alive: torch.Tensor, rate: float
) -> torch.Tensor:
    """A layer's keep mask under ``structure`` (``structure`` is the spec's name for errors): a group
    structure's groups, or the whole layer for ``unstructured``; whole units are refused."""
    if isinstance(structure, RowGroups):
        return structure.keep(scores, alive, rate)
    if not structure.structured:
        return WHOLE_LAYER.keep(scores, alive, rate)
    raise SpecError(f"{name}: this method prunes single weights; whole units are not among its structures")
