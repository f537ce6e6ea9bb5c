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

With ``--structure-selection-unit groups`` the scales sit on the groups of grouped convs instead
(the paper's other structure: ResNeXt's cardinality groups, each one path of the aggregated
transformation; see :mod:`prunelab.pruning.groups` for what counts). Every grouped conv followed by
a BatchNorm gets a vector ``group_scale``, one scale per group, multiplying that group's output
channels of the BatchNorm; the same subgradient pushes it, and at the end each scale is folded into
its channels' ``gamma`` and ``beta`` and reported as ``conv[g]``. The level removes the
``round(rate * groups)`` groups with the smallest ``|scale|`` over the whole network, but never the
last group of a conv (the next smallest elsewhere go instead, and a note says so): the group's
filters and its BatchNorm channels are masked, so its output channels are exactly 0. A model
without grouped convs is refused before training. The compaction (:mod:`prunelab.compress.groups`)
turns a removed group of a ResNeXt bottleneck into a conv with fewer groups, without the channels of
the conv before it that only the group read, and without the columns of the conv after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from prunelab.errors import SpecError
from prunelab.models.residual import ResidualBlock, residual_blocks, shortcut_attribute
from prunelab.pruning.context import PruneContext
from prunelab.pruning.groups import GroupedConv, group_mask, require_grouped_convs, select_groups
from prunelab.pruning.mask import Mask
from prunelab.pruning.methods import TrainingMethod, register_method
from prunelab.spec import FrozenSpec
from prunelab.training.plugins import TrainPlugin, register_plugin

__all__ = [
    "BlockScales",
    "GroupScales",
    "ResidualBlock",
    "StructureSelection",
    "residual_blocks",
    "select_blocks",
    "shortcut_attribute",
]

SCALE = "block_scale"
GROUP_SCALE = "group_scale"


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
        1e-2, ge=0, lt=1, description="s: s*sign(lambda) is added to each scale's gradient every step"
    )
    unit: Literal["blocks", "groups"] = Field(
        "blocks",
        description="what carries a scale: residual blocks, or the groups of grouped convs (ResNeXt's cardinality)",
    )


@dataclass(frozen=True)
class _Site:
    """Where learned scales live: a parameter ``name`` of module ``owner`` (shape ``size``), each
    multiplying ``per`` consecutive output channels of the BatchNorm ``norm`` (all of them: 0)."""

    owner: str
    name: str
    norm: str
    size: tuple[int, ...]
    per: int = 0


class _Scales:
    """Learned scales on BatchNorm outputs, at the :attr:`sites` a subclass finds: installed as
    parameters and forward hooks, and folded into the BatchNorms at the end."""

    sites: list[_Site]

    def install(self, model: nn.Module) -> list:
        handles = []
        for site in self.sites:
            owner = model.get_submodule(site.owner)
            device = next(owner.parameters()).device
            owner.register_parameter(site.name, nn.Parameter(torch.ones(site.size, device=device)))
            handles.append(
                model.get_submodule(site.norm).register_forward_hook(
                    lambda m, args, out, owner=owner, site=site: (
                        out * _per_channel(getattr(owner, site.name), site.per, out.dim())
                    )
                )
            )
        return handles

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [getattr(model.get_submodule(site.owner), site.name) for site in self.sites]

    @torch.no_grad()
    def fold(self, model: nn.Module) -> dict[str, float]:
        """Fold each scale into its BatchNorm (``bn(x) * s`` is a BatchNorm with ``gamma * s`` and
        ``beta * s``), drop the parameters; the scales by :meth:`names`."""
        found = {}
        for site in self.sites:
            owner = model.get_submodule(site.owner)
            scale = getattr(owner, site.name).detach()
            norm = model.get_submodule(site.norm)
            factor = _per_channel(scale, site.per, 2)
            norm.weight.mul_(factor)
            norm.bias.mul_(factor)
            found.update(zip(self.names(site), scale.reshape(-1).tolist(), strict=True))
            del owner._parameters[site.name]
        return found

    def names(self, site: _Site) -> list[str]:
        """The report names of one site's scales."""
        raise NotImplementedError


class BlockScales(_Scales):
    """One scalar ``block_scale`` per residual block, multiplying its branch's last BatchNorm."""

    def __init__(self, model: nn.Module, method: str) -> None:
        self.blocks = require_blocks(model, method)
        self.sites = [_Site(block.name, SCALE, block.last_norm, ()) for block in self.blocks]

    def names(self, site: _Site) -> list[str]:
        return [site.owner]


class GroupScales(_Scales):
    """A ``group_scale`` vector on each grouped conv, one per group, multiplying that group's channels
    of the BatchNorm after the conv (reported as ``conv[g]``)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        self.convs = require_grouped_convs(model, method)
        self.sites = [_Site(c.conv, GROUP_SCALE, c.norm, (c.groups,), c.out_per_group) for c in self.convs]

    def names(self, site: _Site) -> list[str]:
        (conv,) = [c for c in self.convs if c.conv == site.owner]
        return [conv.unit(g) for g in range(conv.groups)]


def _per_channel(scale: torch.Tensor, per: int, dim: int) -> torch.Tensor:
    """One scale per group as one per channel, shaped to broadcast over an output of ``dim`` dims
    (a scalar as it is)."""
    if not per:
        return scale
    return scale.repeat_interleave(per).reshape(-1, *([1] * (dim - 2)))


UNITS = {"blocks": BlockScales, "groups": GroupScales}


@register_plugin("structure-selection")
class StructureSelection(TrainPlugin):
    """A learned scale on each residual branch (or each group of a grouped conv) with an L1 push;
    folded into the BatchNorm it multiplies."""

    description = (
        "sparse structure selection: L1-pushed scales on residual blocks or conv groups (Huang & Wang 2018)"
    )
    needs = "residual blocks (ResNets), or grouped convs (ResNeXt) with unit 'groups'"
    Settings = StructureSelectionSettings
    standalone = True  # a regulariser: its scales are folded back, the plain architecture stays

    def __init__(self, settings: FrozenSpec | None = None) -> None:
        super().__init__(settings)
        self.units: BlockScales | GroupScales | None = None
        self.scales: dict[str, float] = {}
        self._handles: list = []

    @property
    def blocks(self) -> list[ResidualBlock] | None:
        """The residual blocks scaled (unit 'blocks'), once the model was seen."""
        return getattr(self.units, "blocks", None)

    def check(self, model: nn.Module, example: torch.Tensor) -> None:
        self.units = UNITS[self.settings.unit](model, self.name)

    def swap(self, model: nn.Module) -> nn.Module:
        self.units = UNITS[self.settings.unit](model, self.name)
        self._handles = self.units.install(model)
        return model

    def after_backward(self, model: nn.Module) -> None:
        for scale in self.units.parameters(model):
            if scale.grad is not None:
                scale.grad.add_(torch.sign(scale.detach()), alpha=self.settings.penalty)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> tuple[nn.Module, Mask | None]:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.scales = self.units.fold(model)
        return model, None

    def report(self) -> dict[str, Any]:
        return {"scales": dict(self.scales), "unit": self.settings.unit} if self.scales else {}

    @classmethod
    def report_text(cls, report: dict[str, Any]) -> str:
        values = [abs(float(v)) for v in report["scales"].values()]
        unit = report.get("unit", "blocks")
        return f"learned scales |lambda| of {len(values)} {unit} from {min(values):.3g} to {max(values):.3g}"


@register_method("structure-selection")
class StructureSelectionMethod(TrainingMethod):
    """Residual blocks (or groups of grouped convs) by their learned scale |lambda|: the smallest go, whole."""

    description = "blocks or conv groups by L1-pushed scales (Huang & Wang 2018)"
    structure = "structured-output"
    structured_only = True
    Settings = StructureSelectionSettings
    plugin = StructureSelection
    once = "ranks the scales of one dense training"
    requires = "residual blocks or conv groups"

    def select(self, model: nn.Module, mask: Mask | None, spec, context: PruneContext, generator) -> Mask:
        if self.settings(spec).unit == "groups":
            return self._select_groups(model, mask, spec, context)
        blocks = require_blocks(model, spec.method)
        found = _reported(spec, context, [block.name for block in blocks])
        keep = select_blocks([found[block.name] for block in blocks], spec.rate_per_round())
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
                f"{spec.method}: block {block.name} removed (|lambda| = {abs(found[block.name]):.4g})"
            )
        return Mask(entries)

    def _select_groups(self, model: nn.Module, mask: Mask | None, spec, context: PruneContext) -> Mask:
        """The groups of grouped convs by their scale: the smallest go, at least one stays per conv."""
        convs = require_grouped_convs(model, spec.method)
        found = _reported(spec, context, [c.unit(g) for c in convs for g in range(c.groups)])
        scales = [[found[c.unit(g)] for g in range(c.groups)] for c in convs]
        keep, spared = select_groups(scales, spec.rate_per_round())
        for conv, flags in zip(convs, keep, strict=True):
            gone = [g for g, kept in enumerate(flags) if not kept]
            if gone:
                context.note(f"{spec.method}: {conv.conv} groups {_listed(conv, gone, found)} removed")
        for c in spared:
            (last,) = [g for g, kept in enumerate(keep[c]) if kept]
            context.note(
                f"{spec.method}: {convs[c].conv} keeps group {_listed(convs[c], [last], found)} although "
                "its scale is among the smallest: every grouped conv keeps at least one group"
            )
        return group_mask(model, convs, keep, mask)


def _reported(spec, context: PruneContext, units: list[str]) -> dict[str, float]:
    """The scales the dense training reported for ``units`` (1 where a trial run, before training, has none)."""
    found = (context.reports or {}).get(StructureSelection.plugin_name, {}).get("scales", {})
    if not context.trial and set(found) != set(units):
        shown = units if len(units) <= 8 else [*units[:8], "..."]
        raise SpecError(
            f"method {spec.method!r} ranks the scales its dense training learned, and the dense training "
            f"reported scales for {sorted(found)[:8] or 'nothing'}, not {shown}"
        )
    return {unit: float(found.get(unit, 1.0)) for unit in units}


def _listed(conv: GroupedConv, groups: list[int], found: dict[str, float]) -> str:
    """``"1, 3 (|scale| 0.01, 0.02)"``."""
    scales = ", ".join(f"{abs(found[conv.unit(g)]):.3g}" for g in groups)
    return f"{', '.join(map(str, groups))} (|scale| {scales})"
