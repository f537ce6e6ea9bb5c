"""Sparse structure selection (Huang & Wang 2018): a scale on every residual block, pushed to zero.

During the dense training each residual block's residual branch is multiplied by a learned scalar
``lambda`` (initialised to 1; a parameter ``block_scale`` of the block, applied to the output of the
branch's last BatchNorm), and ``s * sign(lambda)`` is added to its gradient after every step (the L1
penalty's subgradient, ``--structure-selection-penalty``). At the end each ``lambda`` is folded into
that BatchNorm's scale and shift (``bn(x) * lambda`` is a BatchNorm with ``gamma * lambda`` and
``beta * lambda``), so the trained model is the plain architecture computing the same outputs, and
the scales are reported. The level then removes the ``round(rate * blocks)`` blocks with the smallest
``|lambda|`` (ties to the earlier block): every conv and BatchNorm of their residual branch is
masked, so the branch outputs exactly 0 and the block computes ``relu(shortcut(x))``.

A residual block is a module with a ``shortcut`` (prunelab's ResNets) or ``downsample`` attribute
(torchvision's) and BatchNorms named ``bn1``, ``bn2``, ...; its residual branch is its own
``convK``/``bnK`` children. Masks remove the block's function; the compaction
(:mod:`prunelab.compress.blocks`) then removes the block from the architecture, replacing it by its
shortcut followed by the block's final ReLU, so ``prunelab export`` / ``count`` / ``bench`` measure
a shallower network (a block whose forward is not known to end in that ReLU only has its channels
cut to the one per layer the compaction always keeps).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.context import PruneContext
from prunelab.pruning.criteria import CRITERIA, Criterion, Scores
from prunelab.pruning.mask import Mask
from prunelab.pruning.methods import METHODS, Method
from prunelab.spec import FrozenSpec
from prunelab.training.plugins import TrainPlugin, register_plugin

__all__ = ["ResidualBlock", "StructureSelection", "residual_blocks", "select_blocks", "shortcut_attribute"]

SCALE = "block_scale"
_NUMBERED = re.compile(r"^(conv|bn)(\d+)$")


@dataclass(frozen=True)
class ResidualBlock:
    """A block's name, the parameters of its residual branch, and that branch's last BatchNorm."""

    name: str
    params: tuple[str, ...]
    last_norm: str


def shortcut_attribute(module: nn.Module) -> str | None:
    """The attribute that holds a residual block's shortcut, ``shortcut`` (prunelab's ResNets) or
    ``downsample`` (torchvision's; ``None`` there is the identity), or ``None`` for other modules."""
    return next((a for a in ("shortcut", "downsample") if hasattr(module, a)), None)


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """The residual blocks of ``model`` in module order (see the module docstring for what counts)."""
    out = []
    for name, module in model.named_modules():
        if shortcut_attribute(module) is None:
            continue
        numbered = {n: m for n, m in module.named_children() if _NUMBERED.match(n)}
        norms = sorted(
            (
                n
                for n, m in numbered.items()
                if n.startswith("bn") and isinstance(m, nn.BatchNorm2d) and m.affine
            ),
            key=lambda n: int(n[2:]),
        )
        if not norms:
            continue
        prefix = f"{name}." if name else ""
        params = tuple(
            f"{prefix}{child}.{p}"
            for child, m in numbered.items()
            for p, v in m.named_parameters(recurse=False)
            if v is not None
        )
        out.append(ResidualBlock(name, params, f"{prefix}{norms[-1]}"))
    return out


def require_blocks(model: nn.Module, method: str) -> list[ResidualBlock]:
    blocks = residual_blocks(model)
    if not blocks:
        raise SpecError(
            f"method {method!r} removes residual blocks, and {type(model).__name__} has none (a residual block "
            "has a `shortcut` or `downsample` and BatchNorms bn1, bn2, ...): use resnet20, resnet18 or "
            "torchvision:resnet18"
        )
    return blocks


def select_blocks(scales: Sequence[float], fraction: float) -> list[bool]:
    """Keep flags: the ``round(fraction * blocks)`` smallest ``|scale|`` go (stable: ties to the earlier)."""
    count = round(fraction * len(scales))
    order = sorted(range(len(scales)), key=lambda i: (abs(scales[i]), i))
    keep = [True] * len(scales)
    for i in order[:count]:
        keep[i] = False
    return keep


class StructureSelectionSettings(FrozenSpec):
    """Sparse structure selection's hyperparameters (``[pruning.structure_selection]``)."""

    flag_prefix: ClassVar[str] = "structure-selection-"
    penalty: float = Field(
        1e-2, ge=0, lt=1, description="s: s*sign(lambda) is added to each block scale's gradient every step"
    )


@register_plugin("structure-selection")
class StructureSelection(TrainPlugin):
    """A learned scale on each residual branch with an L1 push; folded into the branch's last BatchNorm."""

    description = "sparse structure selection: L1-pushed scales on residual blocks (Huang & Wang 2018)"
    needs = "residual blocks (ResNets)"
    Settings = StructureSelectionSettings

    def __init__(self, settings: FrozenSpec | None = None) -> None:
        super().__init__(settings)
        self.blocks: list[ResidualBlock] | None = None
        self.scales: dict[str, float] = {}
        self._handles: list = []

    def check(self, model: nn.Module, example: torch.Tensor) -> None:
        self.blocks = require_blocks(model, self.name)

    def swap(self, model: nn.Module) -> nn.Module:
        self.blocks = require_blocks(model, self.name)
        for block in self.blocks:
            module = model.get_submodule(block.name)
            module.register_parameter(
                SCALE, nn.Parameter(torch.ones((), device=next(module.parameters()).device))
            )
            norm = model.get_submodule(block.last_norm)
            self._handles.append(
                norm.register_forward_hook(lambda m, args, out, module=module: out * getattr(module, SCALE))
            )
        return model

    def _scales(self, model: nn.Module) -> list[nn.Parameter]:
        return [getattr(model.get_submodule(block.name), SCALE) for block in self.blocks]

    def after_backward(self, model: nn.Module) -> None:
        for scale in self._scales(model):
            if scale.grad is not None:
                scale.grad.add_(torch.sign(scale.detach()), alpha=self.settings.penalty)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> tuple[nn.Module, Mask | None]:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for block in self.blocks:
            module = model.get_submodule(block.name)
            scale = getattr(module, SCALE).detach()
            norm = model.get_submodule(block.last_norm)
            norm.weight.mul_(scale)
            norm.bias.mul_(scale)
            self.scales[block.name] = float(scale)
            del module._parameters[SCALE]
        return model, None

    def report(self) -> dict[str, Any]:
        return {"scales": dict(self.scales)} if self.scales else {}


@CRITERIA.register("structure_selection")
class StructureSelectionCriterion(Criterion):
    """Residual blocks by their learned scale |lambda|: the smallest go, whole."""

    Settings = StructureSelectionSettings
    requires = "residual blocks"

    def dense_hooks(self, spec) -> list[TrainPlugin]:
        if spec.rounds != 1:
            raise SpecError(
                f"method {spec.method!r} ranks the block scales of one dense training: use rounds 1 "
                f"(got {spec.rounds})"
            )
        return [StructureSelection(self.settings)]

    def select(self, model: nn.Module, mask: Mask | None, spec, context: PruneContext, generator) -> Mask:
        blocks = require_blocks(model, spec.method)
        report = (context.reports or {}).get("structure-selection", {})
        found = report.get("scales", {})
        scales = [float(found.get(block.name, 1.0)) for block in blocks]
        if not context.trial and set(found) != {block.name for block in blocks}:
            raise SpecError(
                f"method {spec.method!r} ranks the block scales its dense training learned, and the dense "
                f"training reported scales for {sorted(found) or 'no blocks'}, not {[b.name for b in blocks]}"
            )
        keep = select_blocks(scales, spec.rate_per_round())
        base = mask if mask is not None else Mask.ones(model)
        base.check_fits(model)
        params = dict(model.named_parameters())
        entries = {n: m.cpu().clone() for n, m in base.items()}
        for block, kept in zip(blocks, keep, strict=True):
            if kept:
                continue
            for name in block.params:
                entries[name] = torch.zeros(params[name].shape, dtype=torch.bool)
            context.note(
                f"{spec.method}: block {block.name} removed (|lambda| = {abs(found.get(block.name, 1.0)):.4g})"
            )
        return Mask(entries)

    def scores(
        self, model: nn.Module, mask: Mask, names, context: PruneContext, generator: torch.Generator | None
    ) -> Scores:
        """|w| (the method selects whole blocks by their scale; see :meth:`select`)."""
        params = dict(model.named_parameters())
        return {n: params[n].detach().abs() for n in names}


METHODS.add(
    "structure-selection",
    Method(
        "structure_selection",
        "whole residual blocks by L1-pushed scale (Huang & Wang 2018)",
        "structured-output",
        "l1",
        True,
    ),
)
