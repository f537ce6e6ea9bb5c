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
