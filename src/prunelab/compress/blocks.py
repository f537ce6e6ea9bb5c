"""Whole residual blocks out of the architecture: a block whose residual branch outputs exactly 0.

A residual block (see :func:`prunelab.pruning.selection.residual_blocks`) whose branch parameters
are all exactly zero in the masked model (every conv weight and BatchNorm scale and shift: sparse
structure selection masks them so) computes ``relu(0 + shortcut(x))``. :func:`remove_blocks`
replaces such a block by a :class:`ShortcutBlock` computing just that, which keeps the block's
shortcut under its own attribute name, so the shortcut's parameters keep their names (and their
mask entries) and a projection shortcut stays a conv + BatchNorm the compaction goes on to shrink.

Only blocks whose ``forward`` is known to end in ``relu(branch + shortcut)`` are replaced:
prunelab's ResNet :class:`~prunelab.models.resnet.BasicBlock` and torchvision's ``BasicBlock`` and
``Bottleneck`` (a missing ``downsample`` is the identity). Other blocks, pre-activation ones for
instance, are left to the channel compaction, which cuts their layers to one channel each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.residual import ResidualBlock, residual_blocks, shortcut_attribute

__all__ = ["ENDS_IN_RELU", "ShortcutBlock", "block_kind", "removable_blocks", "remove_blocks"]

#: Block classes (module.qualname) whose forward is ``relu(branch(x) + shortcut(x))``.
ENDS_IN_RELU = frozenset(
    {
        "prunelab.models.resnet.BasicBlock",
        "torchvision.models.resnet.BasicBlock",
        "torchvision.models.resnet.Bottleneck",
    }
)


def block_kind(module: nn.Module) -> str:
    """A module's class as ``module.qualname`` (what :data:`ENDS_IN_RELU` lists)."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


class ShortcutBlock(nn.Module):
    """What a removed residual block computes: ``relu(shortcut(x))`` (the branch's 0 dropped).

    The shortcut is held under the block's own attribute (``shortcut`` or ``downsample``).
    """

    def __init__(self, attribute: str, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.attribute = attribute
        self.add_module(attribute, shortcut if shortcut is not None else nn.Identity())

    @classmethod
    def of(cls, block: nn.Module, name: str) -> ShortcutBlock:
        """The replacement of ``block`` (named ``name``), sharing its shortcut module."""
        if block_kind(block) not in ENDS_IN_RELU:
            raise PrunelabError(
                f"cannot replace block {name!r} ({block_kind(block)}) by its shortcut: only blocks ending "
                f"in relu(branch + shortcut) can be, which are {sorted(ENDS_IN_RELU)}"
            )
        attribute = shortcut_attribute(block)
        return cls(attribute, getattr(block, attribute))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, self.attribute)(x))

    def extra_repr(self) -> str:
        return "relu(shortcut(x)): a residual block whose branch was removed"


def _branch_is_zero(model: nn.Module, block: ResidualBlock) -> bool:
    params = dict(model.named_parameters())
    return bool(block.params) and not any(bool(params[p].detach().any()) for p in block.params)


def removable_blocks(masked: nn.Module) -> list[str]:
    """The residual blocks of the (already masked) model that :class:`ShortcutBlock` replaces exactly."""
    return [
        block.name
        for block in residual_blocks(masked)
        if block_kind(masked.get_submodule(block.name)) in ENDS_IN_RELU and _branch_is_zero(masked, block)
    ]


def remove_blocks(masked: nn.Module) -> tuple[str, ...]:
    """Replace, in place, every block of the masked model whose residual branch outputs exactly 0;
    the names of the blocks replaced."""
    names = removable_blocks(masked)
    for name in names:
        masked.set_submodule(name, ShortcutBlock.of(masked.get_submodule(name), name))
    return tuple(names)
