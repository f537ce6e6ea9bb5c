"""Whole groups out of grouped convolutions: a ResNeXt bottleneck with fewer paths.

Sparse structure selection with unit ``groups`` removes a group of a grouped conv (see
:mod:`prunelab.pruning.groups`) by masking its filters and its channels of the BatchNorm after the
conv, so in the masked model the group's output channels are exactly 0. In a block whose forward
is known to be ``conv1 -> bn1 -> relu -> conv2 (grouped) -> bn2 -> relu -> conv3`` (torchvision's
``Bottleneck``, which ResNeXt is made of; :data:`GROUPED_BOTTLENECKS`), :func:`remove_groups`
then rewrites the block, before the channel compaction, so it computes the same with fewer groups:

* ``conv2`` keeps the filters of its other groups and becomes a conv with that many groups (the same
  channels per group), ``bn2`` keeps their channels;
* ``conv1`` and ``bn1`` lose the channels only the removed groups read (nothing else reads them);
* ``conv3`` loses the input columns of the removed groups' (zero) channels.

A group counts as removed when the masked model's filters (and bias) of the group and its ``bn2``
scales and shifts are all exactly zero; a conv keeps at least one group. The mask is sliced alike,
so the channel compaction that follows sees the new shapes; it leaves the remaining grouped conv's
channels as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.compress.blocks import block_kind
from prunelab.pruning.groups import GroupedConv, grouped_convs
from prunelab.pruning.mask import Mask

__all__ = ["GROUPED_BOTTLENECKS", "GroupRemoval", "bottleneck_convs", "remove_groups", "whole_groups"]

#: Block classes (module.qualname) whose forward is conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> conv3.
GROUPED_BOTTLENECKS = frozenset({"torchvision.models.resnet.Bottleneck"})


@dataclass
class GroupRemoval:
    """What :func:`remove_groups` did: the groups removed per conv, the mask sliced to the new
    shapes, and the original output channels that the reshaped producers keep."""

    mask: Mask
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)


def bottleneck_convs(model: nn.Module) -> list[GroupedConv]:
    """The grouped convs that are the ``conv2`` (with ``bn2``) of a block in :data:`GROUPED_BOTTLENECKS`."""
    out = []
    for found in grouped_convs(model):
        block, _, child = found.conv.rpartition(".")
        parent = model.get_submodule(block)
        if child == "conv2" and found.norm == f"{block}.bn2" and block_kind(parent) in GROUPED_BOTTLENECKS:
            out.append(found)
    return out


def whole_groups(mask: Mask, conv: str, module: nn.Module) -> bool:
    """Whether ``mask`` keeps or prunes the filters of each group of ``conv`` together."""
    key = f"{conv}.weight"
    if key not in mask:
        return True
    rows = mask[key].flatten(1).any(1).reshape(module.groups, -1)
    return bool((rows.all(1) | ~rows.any(1)).all())


def _zero_groups(model: nn.Module, found: GroupedConv) -> list[int]:
    """The groups whose filters, bias and BatchNorm scale and shift are all 0 (all but one at most)."""
    conv, norm = model.get_submodule(found.conv), model.get_submodule(found.norm)
    tensors = [t for t in (conv.weight, conv.bias, norm.weight, norm.bias) if t is not None]
    zero = [
        g for g in range(found.groups) if not any(bool(t.detach()[found.outputs(g)].any()) for t in tensors)
    ]
    return zero[1:] if len(zero) == found.groups else zero


@torch.no_grad()
def _slice(
    model: nn.Module, mask: dict[str, torch.Tensor], layer: str, index: torch.Tensor, dim: int
) -> None:
    """Keep only ``index`` along ``dim`` of a conv's weight (0: output channels, also the bias; 1: input
    channels) or, for a BatchNorm, of its features; the mask entries alike."""
    module = model.get_submodule(layer)
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(module, name, None)
        if tensor is None or (dim == 1 and name != "weight"):
            continue
        sliced = tensor.index_select(dim, index.to(tensor.device))
        setattr(module, name, nn.Parameter(sliced) if isinstance(tensor, nn.Parameter) else sliced)
        key = f"{layer}.{name}"
        if key in mask:
            mask[key] = mask[key].index_select(dim, index.to(mask[key].device))
    if isinstance(module, nn.BatchNorm2d):
        module.num_features = len(index)
    elif dim == 0:
        module.out_channels = len(index)
    else:
        module.in_channels = len(index)


def remove_groups(masked: nn.Module, mask: Mask) -> GroupRemoval:
    """Rewrite, in place, each grouped bottleneck of the masked model without its zero groups (see the
    module docstring); ``mask`` is not changed, the result holds it sliced to the new shapes."""
    entries = {n: m.clone() for n, m in mask.items()}
    result = GroupRemoval(mask)
    for found in bottleneck_convs(masked):
        gone = _zero_groups(masked, found)
        if not gone:
            continue
        block = found.conv.rpartition(".")[0]
        kept = [g for g in range(found.groups) if g not in gone]
        inputs = torch.cat([found.inputs(g) for g in kept])
        outputs = torch.cat([found.outputs(g) for g in kept])
        for layer, index, dim in (
            (f"{block}.conv1", inputs, 0),
            (f"{block}.bn1", inputs, 0),
            (found.conv, outputs, 0),
            (found.norm, outputs, 0),
            (f"{block}.conv3", outputs, 1),
        ):
            _slice(masked, entries, layer, index, dim)
        conv = masked.get_submodule(found.conv)
        conv.in_channels, conv.groups = len(inputs), len(kept)
        result.groups[found.conv] = tuple(gone)
        result.kept.update({f"{block}.conv1": inputs.tolist(), found.conv: outputs.tolist()})
        result.removed.update(
            {f"{block}.conv1": len(gone) * found.in_per_group, found.conv: len(gone) * found.out_per_group}
        )
    result.mask = Mask(entries)
    return result
