"""What one prunable element is: a single weight (unstructured) or a whole unit (structured).

For a weight of shape ``(out, in, *kernel)`` a unit along the output axis (dim 0) is one filter or
output neuron, along the input axis (dim 1) one input channel or input neuron. A structured layer's
per-weight scores are reduced to one score per unit by a unit norm (L1, L2, L-inf, L-(-inf) = the
smallest |score| of the unit, or random), as ``torch.nn.utils.prune.ln_structured`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunelab.pruning.layers import LayerInfo
from prunelab.registry import Registry


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


STRUCTURES: Registry[Structure] = Registry("structure")
STRUCTURES.add("unstructured", Structure(None, None, "single weights"))
STRUCTURES.add("structured-input", Structure(1, 1, "whole input channels / input neurons (dim 1)"))
STRUCTURES.add("structured-output", Structure(0, 0, "whole filters / output neurons (dim 0)"))
# Paper 001's hybrid: conv layers structured along the input axis, linear layers unstructured.
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


def as_units(tensor: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View a weight-shaped tensor as (elements, weights per element): one row per unit or weight."""
    if axis is None:
        return tensor.reshape(-1, 1)
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1)


def expand_units(keep: torch.Tensor, shape: tuple[int, ...], axis: int | None) -> torch.Tensor:
    """Inverse of :func:`as_units` for a per-element keep vector: a weight-shaped bool tensor."""
    if axis is None:
        return keep.reshape(shape)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return keep.reshape(view).expand(shape)
