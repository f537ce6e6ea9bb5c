"""The groups of grouped convolutions (ResNeXt's cardinality), as sparse structure selection scales them.

A grouped conv is an ``nn.Conv2d`` with ``1 < groups < in_channels`` (depthwise convs, one input
channel per group, are not: their "groups" are single channels). Group ``g`` is one path of the
aggregated transformation: it reads input channels ``g * in_per_group ...`` and writes output
channels ``g * out_per_group ...``. A grouped conv counts when a BatchNorm follows it: the sibling
``bnK`` of a ``convK`` (torchvision's Bottleneck: ``conv2`` -> ``bn2``) or the next module of an
``nn.Sequential``, affine and with one feature per output channel. That BatchNorm's output is what
a group's scale multiplies (see :class:`prunelab.pruning.selection.StructureSelection`), and what
its mask zeroes when the group is removed, with the group's filters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.mask import Mask

__all__ = [
    "GroupedConv",
    "group_mask",
    "grouped_convs",
    "is_grouped",
    "require_grouped_convs",
    "select_groups",
]

_CONV = re.compile(r"^conv(\d+)$")


@dataclass(frozen=True)
class GroupedConv:
    """A grouped conv's name, the BatchNorm after it, its group count and channels per group."""

    conv: str
    norm: str
    groups: int
    in_per_group: int
    out_per_group: int

    def outputs(self, group: int) -> torch.Tensor:
        """The output channels (rows of the conv, features of the BatchNorm) of ``group``."""
        return torch.arange(group * self.out_per_group, (group + 1) * self.out_per_group)

    def inputs(self, group: int) -> torch.Tensor:
        """The input channels ``group`` reads."""
        return torch.arange(group * self.in_per_group, (group + 1) * self.in_per_group)

    def unit(self, group: int) -> str:
        """The name of one group's scale in reports: ``conv[g]``."""
        return f"{self.conv}[{group}]"


def is_grouped(module: nn.Module) -> bool:
    """A grouped, not depthwise, 2-d conv: ``1 < groups < in_channels``."""
    return isinstance(module, nn.Conv2d) and 1 < module.groups < module.in_channels


def _following_norm(parent: nn.Module, child: str) -> str | None:
    """The child of ``parent`` that follows its child ``child`` (a conv): ``bnK`` for ``convK``, or
    the next module of a Sequential."""
    match = _CONV.match(child)
    if match and f"bn{match.group(1)}" in parent._modules:
        return f"bn{match.group(1)}"
    if isinstance(parent, nn.Sequential):
        names = list(parent._modules)
        at = names.index(child)
        return names[at + 1] if at + 1 < len(names) else None
    return None


def grouped_convs(model: nn.Module) -> list[GroupedConv]:
    """The grouped convs of ``model`` followed by a BatchNorm, in module order (see the module docstring)."""
    out = []
    for name, parent in model.named_modules():
        prefix = f"{name}." if name else ""
        for child, conv in parent.named_children():
            norm_name = _following_norm(parent, child) if is_grouped(conv) else None
            norm = parent._modules.get(norm_name) if norm_name else None
            if not (
                isinstance(norm, nn.BatchNorm2d) and norm.affine and norm.num_features == conv.out_channels
            ):
                continue
            out.append(
                GroupedConv(
                    f"{prefix}{child}",
                    f"{prefix}{norm_name}",
                    conv.groups,
                    conv.in_channels // conv.groups,
                    conv.out_channels // conv.groups,
                )
            )
    return out


def require_grouped_convs(model: nn.Module, method: str) -> list[GroupedConv]:
    """:func:`grouped_convs`, refusing a model that has none."""
    found = grouped_convs(model)
    if not found:
        raise SpecError(
            f"method {method!r} with unit 'groups' scales the groups of grouped convolutions, and "
            f"{type(model).__name__} has none (a grouped conv is an nn.Conv2d with 1 < groups < in_channels "
            "followed by a BatchNorm, as in ResNeXt): use a ResNeXt such as torchvision:resnext50_32x4d, "
            "or --structure-selection-unit blocks"
        )
    return found


def select_groups(scales: Sequence[Sequence[float]], fraction: float) -> tuple[list[list[bool]], list[int]]:
    """Keep flags per conv and group: the ``round(fraction * groups)`` smallest ``|scale|`` over all
    convs go (stable: ties to the earlier conv, then group), except that every conv keeps at least one
    group (its largest ``|scale|``; the next smallest elsewhere go instead). Also the convs that kept a
    group only by that rule."""
    order = sorted(
        ((abs(s), c, g) for c, row in enumerate(scales) for g, s in enumerate(row)),
    )
    count = round(fraction * len(order))
    keep = [[True] * len(row) for row in scales]
    left = [len(row) for row in scales]
    spared: list[int] = []
    for _, c, g in order:
        if count == 0:
            break
        if left[c] == 1:
            spared.append(c)
            continue
        keep[c][g] = False
        left[c] -= 1
        count -= 1
    return keep, spared


def group_mask(
    model: nn.Module, convs: Sequence[GroupedConv], keep: Sequence[Sequence[bool]], mask: Mask | None
) -> Mask:
    """``mask`` (None: dense) with the removed groups' filters (conv rows, bias) and their BatchNorm
    scales and shifts pruned."""
    base = mask if mask is not None else Mask.ones(model)
    base.check_fits(model)
    params = dict(model.named_parameters())
    entries = {n: m.cpu().clone() for n, m in base.items()}
    for found, flags in zip(convs, keep, strict=True):
        rows = [found.outputs(g) for g, kept in enumerate(flags) if not kept]
        if not rows:
            continue
        rows = torch.cat(rows)
        for layer in (found.conv, found.norm):
            for p in ("weight", "bias"):
                name = f"{layer}.{p}"
                if params.get(name) is None:
                    continue
                entry = entries.get(name, torch.ones(params[name].shape, dtype=torch.bool))
                entry[rows] = False
                entries[name] = entry
    return Mask(entries)
