"""What one prunable element is: a single weight (unstructured) or a whole unit (structured).

For a weight of shape ``(out, in, *kernel)`` a unit along the output axis (dim 0) is one filter or
output neuron, along the input axis (dim 1) one input channel or input neuron. A structured layer's
per-weight scores are reduced to one score per unit by a unit norm (L1, L2, L-inf, L-(-inf) = the
smallest |score| of the unit, or random), as ``torch.nn.utils.prune.ln_structured`` does.

Grouped convolutions (``groups > 1``, weight ``(out, in / groups, *kernel)``) are pruned by the
same rule, their units being what the words say:

* output axis: filter ``o`` is ``weight[o]``, as for any conv (a filter lies inside one group);
* input axis: input channel ``i`` (of ``in``, not of ``in / groups``) is the column
  ``i % (in / groups)`` of the ``out / groups`` filters of its group ``i // (in / groups)``. Dim 1
  alone would not do: its column ``j`` is a different input channel in every group. So a unit
  never crosses groups, and a pruned input channel is one the conv no longer reads.

For a depthwise conv (``groups == in == out``, weight ``(C, 1, *kernel)``) both rules give one
unit per channel, ``weight[c]``: input channel ``c`` feeds filter ``c`` only, so pruning it *is*
pruning that filter (input-axis structures do not skip depthwise layers, and do not delete them
whole as a literal dim-1 unit of size 1 would). A channel multiplier (``out = m * in``) makes
input channel ``c`` the ``m`` filters of its group. Every structure thus handles every conv.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.pruning.layers import LayerInfo
from prunelab.registry import Registry


@dataclass(frozen=True)
class Part:
    """The units of one weight along ``axis`` (``None``: single weights), ``block`` consecutive
    ones at a time: an attention head is ``head_dim`` rows of the query projection."""

    layer: LayerInfo
    axis: int | None
    groups: int = 1
    block: int = 1

    @property
    def count(self) -> int:
        return unit_count(self.layer.shape, self.axis, self.groups) // self.block

    def units(self, tensor: torch.Tensor) -> torch.Tensor:
        return as_units(tensor, self.axis, self.groups).reshape(self.count, -1)

    def expand(self, keep: torch.Tensor) -> torch.Tensor:
        return expand_units(keep.repeat_interleave(self.block), self.layer.shape, self.axis, self.groups)


@dataclass(frozen=True)
class Units:
    """The elements one layer (or one coupled set of layers) puts into a pool.

    ``layer`` stands for them in scopes and ``layer_rates``; element ``i`` is unit ``i`` of every
    part at once. ``min_keep`` elements are never pruned (a block keeps one head).
    """

    layer: LayerInfo
    parts: tuple[Part, ...]
    min_keep: int = 0
    kind: str = ""  # units of different kinds never share a pool (heads and FFN neurons)

    def __post_init__(self) -> None:
        if len({p.count for p in self.parts}) != 1:
            raise ValueError(f"parts of {self.layer.name} have different unit counts")

    @property
    def axis(self) -> int | None:
        return self.parts[0].axis

    @property
    def count(self) -> int:
        return self.parts[0].count

    def units(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(elements, weights per element) of ``tensors`` (weight-shaped, by parameter name)."""
        return torch.cat([p.units(tensors[p.layer.param]) for p in self.parts], dim=1)

    # what prunelab.prune asks of every kind of units (GroupUnits answers the same)
    def alive(self, keep: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per element: is any of its weights still kept?"""
        return self.units(keep).any(dim=1)

    def protected(self) -> torch.Tensor:
        """Per element: kept whatever its score (none here; ``min_keep`` is applied by the caller)."""
        return torch.zeros(self.count, dtype=torch.bool)

    def scores(self, keep, scores: Mapping[str, torch.Tensor], norm: str, generator) -> torch.Tensor:
        """Per element, float64: the weight's own score, or its unit's norm."""
        rows = self.units(keep)
        device = rows.device
        s = self.units({p.layer.param: scores[p.layer.param].to(device, torch.float64) for p in self.parts})
        if self.axis is None:
            return s[:, 0]
        return UNIT_NORMS.get(norm)(s, rows, generator).to(device, torch.float64)

    def apply(self, keep: dict[str, torch.Tensor], survivors: torch.Tensor, shapes) -> None:
        """Prune the elements ``survivors`` leaves out."""
        for p in self.parts:
            keep[p.layer.param] = keep[p.layer.param] & p.expand(survivors)


@dataclass(frozen=True)
class Structure:
    """The structured axis used for each layer kind; ``None`` = prune single weights."""

    conv_axis: int | None
    linear_axis: int | None
    description: str

    def axis(self, layer: LayerInfo) -> int | None:
        return self.conv_axis if layer.kind == "conv" else self.linear_axis

    @property
    def structured(self) -> bool:
        return self.conv_axis is not None or self.linear_axis is not None

    @property
    def fully_structured(self) -> bool:
        """Every layer loses whole units, so the pruned network is a smaller dense one."""
        return self.conv_axis is not None and self.linear_axis is not None

    @property
    def mixed(self) -> bool:
        """Some layer kinds lose whole units, others single weights (Paganini & Forde 2020's hybrid)."""
        return self.structured and not self.fully_structured

    def units(
        self,
        model: nn.Module,
        chosen: Sequence[LayerInfo],
        conv_groups: Mapping[str, int],
        name: str,
        example: torch.Tensor | None = None,
    ) -> list[Units]:
        """What each chosen layer puts into its pool: its weights or its units along the axis."""
        return [
            Units(layer, (Part(layer, self.axis(layer), conv_groups.get(layer.param, 1)),))
            for layer in chosen
        ]


STRUCTURES: Registry[Structure] = Registry("structure", builtins="prunelab.pruning")
STRUCTURES.add("unstructured", Structure(None, None, "single weights"))
STRUCTURES.add("structured-input", Structure(1, 1, "whole input channels / input neurons (dim 1)"))
STRUCTURES.add("structured-output", Structure(0, 0, "whole filters / output neurons (dim 0)"))
# Paganini & Forde 2020's per-layer structures (torch.nn.utils.prune's ln_structured on each layer on its own);
# the coupled ones (channels, heads, ffn, ...) are in prunelab.pruning.coupled.
# Their hybrid: conv layers structured along the input axis, linear layers unstructured.
STRUCTURES.add("hybrid", Structure(1, None, "conv: whole input channels; linear: single weights"))
STRUCTURES.add("hybrid-output", Structure(0, None, "conv: whole filters; linear: single weights"))

UnitNorm = Callable[[torch.Tensor, torch.Tensor, "torch.Generator | None"], torch.Tensor]
"""(scores of shape (units, weights per unit), alive of the same shape, generator) -> unit scores."""

UNIT_NORMS: Registry[UnitNorm] = Registry("unit norm")


def _ln_norm(order: float) -> UnitNorm:
    def norm(scores: torch.Tensor, alive: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        values = scores.abs()
        if order == -math.inf:  # pruned weights must not make a unit look small
            return values.masked_fill(~alive, math.inf).amin(dim=1)
        return torch.linalg.vector_norm(values * alive, ord=order, dim=1)

    return norm


def _random_units(
    scores: torch.Tensor, alive: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    return torch.rand(scores.shape[0], generator=generator, dtype=torch.float64)


UNIT_NORMS.add("l1", _ln_norm(1))
UNIT_NORMS.add("l2", _ln_norm(2))
UNIT_NORMS.add("linf", _ln_norm(math.inf))
UNIT_NORMS.add("lninf", _ln_norm(-math.inf))
UNIT_NORMS.add("random", _random_units)


def _abs_sum(scores: torch.Tensor, alive: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return (scores * alive).sum(dim=1).abs()


# |sum of signed per-weight terms|: a first-order Taylor estimate of removing the whole unit.
UNIT_NORMS.add("abs-sum", _abs_sum)
SIGNED_UNIT_NORMS = frozenset({"abs-sum"})
"""Unit norms meaningful for signed per-weight scores (the rest take |score|, losing the sign)."""


def _grouped_input(axis: int | None, groups: int, shape: tuple[int, ...]) -> bool:
    """Whether units are the input channels of a grouped conv (see the module docstring)."""
    return axis == 1 and groups > 1 and len(shape) > 2


def _check_groups(shape: tuple[int, ...], groups: int) -> None:
    if groups < 1 or shape[0] % groups:
        raise ValueError(f"a conv weight of shape {tuple(shape)} cannot have groups={groups}")


def unit_count(shape: tuple[int, ...], axis: int | None, groups: int = 1) -> int:
    """How many elements (units, or weights for ``axis=None``) a weight of ``shape`` has."""
    if axis is None:
        return math.prod(shape)
    if _grouped_input(axis, groups, shape):
        return groups * shape[1]
    return shape[axis]


def as_units(tensor: torch.Tensor, axis: int | None, groups: int = 1) -> torch.Tensor:
    """View a weight-shaped tensor as (elements, weights per element): one row per unit or weight.

    ``groups`` is the conv's; it changes only the input-axis units of a grouped conv.
    """
    if axis is None:
        return tensor.reshape(-1, 1)
    shape = tuple(tensor.shape)
    if _grouped_input(axis, groups, shape):
        _check_groups(shape, groups)
        grouped = tensor.reshape(groups, shape[0] // groups, *shape[1:])  # (g, out/g, in/g, *k)
        return grouped.movedim(2, 1).reshape(groups * shape[1], -1)
    return tensor.movedim(axis, 0).reshape(shape[axis], -1)


def expand_units(
    keep: torch.Tensor, shape: tuple[int, ...], axis: int | None, groups: int = 1
) -> torch.Tensor:
    """Inverse of :func:`as_units` for a per-element keep vector: a weight-shaped bool tensor."""
    if axis is None:
        return keep.reshape(shape)
    if _grouped_input(axis, groups, shape):
        _check_groups(shape, groups)
        view = (groups, 1, shape[1]) + (1,) * (len(shape) - 2)
        full = (groups, shape[0] // groups, *shape[1:])
        return keep.reshape(view).expand(full).reshape(shape)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return keep.reshape(view).expand(shape)
