"""Network slimming (Liu, Li, Shen, Huang, Yan & Zhang 2017): channels by BatchNorm scale.

It prunes the output channels of conv/linear layers whose output goes straight into a BatchNorm
(found by one traced forward pass: the BatchNorm's input is the layer's output tensor), ranked by
the BatchNorm scale ``|gamma|`` of the channel. The dense training adds the L1 subgradient
``s * sign(gamma)`` to the gradient of every such scale after each step (:class:`SlimmingL1`, ``s``
= 1e-4 by default), optionally with every scale initialised to 0.5 (Liu et al.); then one *global*
threshold over all the scales removes the target fraction of the channels (the ``count =
round(fraction * channels)`` smallest ``|gamma|``, ties to the earlier layer and channel, as every
prunelab method counts). The pruning scope does not apply: the threshold is global by definition.
A layer the threshold would empty keeps its ``min_channels`` largest scales (1 by default), and the
run says so. Fine-tuning is the ``finetune`` treatment; ``--slimming-multi-pass`` keeps the push on
while each level retrains (Liu et al.'s multi-pass scheme). Early-bird tickets
(:mod:`prunelab.pruning.early_bird`) choose their channels with the helpers here.

A pruned channel's mask entries are the layer's weight row *and* the BatchNorm's scale and shift,
so the masked channel outputs exactly 0: the compaction (:func:`prunelab.compress.compact`) then
removes it physically, its consumers' input columns with it, and the compacted model computes what
the masked one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.context import PruneContext
from prunelab.pruning.layers import prunable_layers, select_layers
from prunelab.pruning.mask import PRUNABLE_TYPES, Mask
from prunelab.pruning.methods import TrainingMethod, register_method
from prunelab.spec import FrozenSpec
from prunelab.training.plugins import TrainPlugin, register_plugin

__all__ = [
    "ScaleMethod",
    "ScaledLayer",
    "Slimming",
    "SlimmingL1",
    "channel_mask",
    "scaled_layers",
    "select_channels",
]

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class ScaledLayer:
    """A conv/linear layer whose output goes straight into a BatchNorm: its channels can be slimmed."""

    layer: str  # module name of the conv/linear layer
    norm: str  # module name of the BatchNorm reading its output
    channels: int

    @property
    def weight(self) -> str:
        return f"{self.layer}.weight" if self.layer else "weight"


@torch.no_grad()
def scaled_layers(model: nn.Module, example: torch.Tensor) -> list[ScaledLayer]:
    """The layers whose output tensor is the input of an affine BatchNorm, in module order.

    Found by one forward pass on ``example`` in eval mode (the running statistics are untouched).
    """
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    found: dict[str, ScaledLayer] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):

            def keep(mod, args, out, name=name) -> None:
                if isinstance(out, torch.Tensor):
                    outputs[id(out)] = (name, out)  # the tensor is kept, so its id stays unique

            handles.append(module.register_forward_hook(keep))
        elif isinstance(module, NORM_TYPES) and module.affine:

            def match(mod, args, name=name) -> None:
                hit = outputs.get(id(args[0])) if args else None
                if hit is not None and hit[1] is args[0] and hit[0] not in found:
                    found[hit[0]] = ScaledLayer(hit[0], name, int(mod.num_features))

            handles.append(module.register_forward_pre_hook(match))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [found[name] for name, _ in model.named_modules() if name in found]


def require_scaled(model: nn.Module, example: torch.Tensor, method: str) -> list[ScaledLayer]:
    """:func:`scaled_layers`, refused with the layers that would need a BatchNorm when there are none."""
    found = scaled_layers(model, example)
    if found:
        return found
    layers = prunable_layers(model)
    hidden = layers[:-1] or layers  # the classifier needs none
    need = ", ".join(
        f"{layer.name} (a BatchNorm{1 if layer.kind == 'linear' else len(layer.shape) - 2}d of "
        f"{layer.shape[0]} features)"
        for layer in hidden[:8]
    )
    raise SpecError(
        f"method {method!r} prunes the channels of conv/linear layers whose output goes straight into "
        f"a BatchNorm (it ranks channels by their BatchNorm scale), and {type(model).__name__} has none: "
        f"it would need one after {need or 'its layers'}. Models with BatchNorm: conv2-bn, conv4-bn, "
        "vgg11, resnet20, torchvision:vgg11_bn, torchvision:resnet18"
    )


def _gammas(model: nn.Module, layers: Sequence[ScaledLayer]) -> list[torch.Tensor]:
    return [model.get_submodule(layer.norm).weight for layer in layers]


def channel_scales(model: nn.Module, layers: Sequence[ScaledLayer]) -> list[torch.Tensor]:
    """``|gamma|`` of each layer's channels (float64, CPU)."""
    return [g.detach().abs().double().cpu() for g in _gammas(model, layers)]


def alive_channels(model: nn.Module, layers: Sequence[ScaledLayer], mask: Mask | None) -> list[torch.Tensor]:
    """Per layer, the channels ``mask`` leaves (a weight row kept, and the BatchNorm scale kept)."""
    out = []
    for layer in layers:
        alive = torch.ones(layer.channels, dtype=torch.bool)
        if mask is not None and layer.weight in mask:
            rows = mask[layer.weight].cpu()
            alive &= rows.reshape(rows.shape[0], -1).any(1)
        if mask is not None and f"{layer.norm}.weight" in mask:
            alive &= mask[f"{layer.norm}.weight"].cpu()
        out.append(alive)
    return out


def select_channels(
    scales: Sequence[torch.Tensor], alive: Sequence[torch.Tensor], fraction: float, min_channels: int = 1
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """The channels kept by one global threshold, and the layers kept from emptying.

    ``round(fraction * alive channels)`` alive channels go: those with the smallest scales over all
    layers together (a stable ascending sort, so ties go to the earlier layer and channel). Then a
    layer left with fewer than ``min_channels`` (or all it had, if fewer) gets back its largest
    scales. Returns the keep flags per layer and ``(layer index, channels given back)`` pairs.
    """
    flat = torch.cat([s.double() for s in scales])
    alive_flat = torch.cat(list(alive))
    index = alive_flat.nonzero().squeeze(1)
    count = round(fraction * len(index))
    order = torch.sort(flat[index], stable=True).indices
    keep_flat = alive_flat.clone()
    keep_flat[index[order[:count]]] = False
    keep = list(torch.split(keep_flat, [len(s) for s in scales]))
    given_back = []
    for i, (k, a, s) in enumerate(zip(keep, alive, scales, strict=True)):
        need = min(min_channels, int(a.sum()))
        short = need - int(k.sum())
        if short > 0:
            candidates = (a & ~k).nonzero().squeeze(1)
            best = candidates[torch.sort(-s.double()[candidates], stable=True).indices[:short]]
            k = k.clone()
            k[best] = True
            keep[i] = k
            given_back.append((i, short))
    return [k.clone() for k in keep], given_back


def channel_mask(
    model: nn.Module, layers: Sequence[ScaledLayer], keep: Sequence[torch.Tensor], mask: Mask | None = None
) -> Mask:
    """``mask`` (dense if None) with each dropped channel's weight row, BatchNorm scale and shift pruned."""
    params = dict(model.named_parameters())
    base = mask if mask is not None else Mask.ones(model)
    entries = {n: m.cpu().clone() for n, m in base.items()}

    def cut(name: str, flags: torch.Tensor) -> None:
        shape = params[name].shape
        rows = flags.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
        entries[name] = entries[name] & rows if name in entries else rows.clone()

    for layer, flags in zip(layers, keep, strict=True):
        cut(layer.weight, flags)
        for part in ("weight", "bias"):
            if f"{layer.norm}.{part}" in params:
                cut(f"{layer.norm}.{part}", flags)
    return Mask(entries)


# training-time plug-ins ------------------------------------------------------------------------
class SlimmingSettings(FrozenSpec):
    """Network slimming's hyperparameters (``[pruning.slimming]``, ``--slimming-*``)."""

    flag_prefix: ClassVar[str] = "slimming-"
    penalty: float = Field(
        1e-4,
        ge=0,
        lt=1,
        description="s: s*sign(gamma) is added to every BatchNorm scale's gradient (Liu et al.: 1e-4)",
    )
    gamma_init: float | None = Field(
        None, gt=0, le=10, description="initialise the BatchNorm scales to this (Liu et al.: 0.5)"
    )
    min_channels: int = Field(
        1, ge=1, description="channels every layer keeps, whatever the global threshold says"
    )
    multi_pass: bool = Field(
        False,
        description="keep the L1 push on while each level retrains: with rounds > 1, Liu et al.'s "
        "multi-pass scheme (train sparse, prune, retrain sparse, prune, ...)",
    )


@register_plugin("slimming")
class SlimmingL1(TrainPlugin):
    """L1 sparsity on BatchNorm scales: ``s * sign(gamma)`` added to each scale's gradient every step.

    It only changes gradients, so every training step kind serves it. Only the scales of the
    BatchNorms that read a conv/linear layer's output (the channels slimming can remove) are pushed.
    """

    description = "network slimming's L1 push s*sign(gamma) on BatchNorm scales (Liu et al. 2017)"
    needs = "a BatchNorm right after each conv/linear layer whose channels it prunes"
    Settings = SlimmingSettings
    not_training = ("multi_pass",)  # which trainings it joins, not what it does to one
    standalone = True  # a regulariser: the architecture and the mask stay

    def __init__(self, settings: FrozenSpec | None = None) -> None:
        super().__init__(settings)
        self.layers: list[ScaledLayer] | None = None
        self._cache: tuple[int, list[torch.Tensor]] | None = None

    def check(self, model: nn.Module, example: torch.Tensor) -> None:
        self.layers = require_scaled(model, example, self.name)

    def initialise(self, model: nn.Module, example: torch.Tensor) -> None:
        """On a freshly built model, before its initial weights are recorded: the ``gamma_init``."""
        self.check(model, example)
        if getattr(self.settings, "gamma_init", None) is not None:
            with torch.no_grad():
                for gamma in _gammas(model, self.layers):
                    gamma.fill_(self.settings.gamma_init)

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        if self.layers is None:
            raise RuntimeError(f"{self.name}: check(model, example) must run before training")
        if self._cache is None or self._cache[0] != id(model):
            self._cache = (id(model), _gammas(model, self.layers))
        return self._cache[1]

    def after_backward(self, model: nn.Module) -> None:
        s = self.settings.penalty
        for gamma in self._params(model):
            if gamma.grad is not None:
                gamma.grad.add_(torch.sign(gamma.detach()), alpha=s)


# the method: `--method slimming` -----------------------------------------------------------------
def _example(model: nn.Module, input_shape) -> torch.Tensor:
    param = next(iter(model.parameters()))
    example = torch.zeros(1, *input_shape, device=param.device)
    return example.long() if len(input_shape) == 1 else example  # token ids


def _mean_scale(group, modules) -> torch.Tensor:
    """Per unit of a coupled group: the mean |gamma| over the BatchNorm scales it holds."""
    total = torch.zeros(group.count, dtype=torch.float64)
    count = torch.zeros(group.count, dtype=torch.float64)
    for m in group.params():
        norm = modules.get(m.module)
        if isinstance(norm, NORM_TYPES) and "scale" in m.roles:
            total.index_add_(0, m.units, norm.weight.detach().abs().double().cpu())
            count.index_add_(0, m.units, torch.ones(len(m.units), dtype=torch.float64))
    return total / count.clamp(min=1)


class ScaleMethod(TrainingMethod):
    """Channels by BatchNorm scale, one global threshold; the dense training runs the plug-in
    (early-bird tickets choose their channels the same way)."""

    structure = "channels"
    structured_only = True
    needs = frozenset({"input_shape"})
    requires = "BatchNorm after pruned layers"

    def _layers(self, model: nn.Module, spec, context: PruneContext) -> list[ScaledLayer]:
        if spec.structure not in (None, "channels"):
            raise SpecError(
                f"method {spec.method!r} removes whole output channels; it takes no structure "
                f"{spec.structure!r} (leave --structure out)"
            )
        if spec.layer_rates:
            raise SpecError(
                f"method {spec.method!r} uses one global threshold over all BatchNorm scales; "
                f"layer_rates ({', '.join(spec.layer_rates)}) do not apply: exclude layers instead"
            )
        found = require_scaled(model, _example(model, context.input_shape), spec.method)
        chosen = {layer.param for layer in select_layers(model, spec.layers, spec.exclude)}
        layers = [layer for layer in found if layer.weight in chosen]
        if not layers:
            raise SpecError(
                f"method {spec.method!r}: the layer filter and exclude leave none of the layers with "
                f"BatchNorm ({', '.join(layer.layer for layer in found)})"
            )
        return layers

    def select(self, model: nn.Module, mask: Mask | None, spec, context: PruneContext, generator) -> Mask:
        """One global threshold over the channels of the coupled groups holding BatchNorm scales: a
        channel's scale is the mean |gamma| of the BatchNorms it passes (one in a plain chain, one
        per block in a residual stage), and it leaves every layer of its group."""
        from prunelab.coupling import discover
        from prunelab.pruning.coupled import units_of

        settings = self.settings(spec)
        self._layers(model, spec, context)  # a model without BatchNorm after its layers is refused
        base = Mask.ones(model) if mask is None else mask
        base.check_fits(model)
        example = _example(model, context.input_shape)
        groups = context.groups if context.groups is not None else discover(model, example)
        chosen = select_layers(model, spec.layers, spec.exclude)
        modules = dict(model.named_modules())
        units = [
            u for u in units_of(model, groups, chosen, ("channels",), spec.method)
            if any(isinstance(modules.get(m.module), NORM_TYPES) and "scale" in m.roles for m in u.group.params())
        ]  # fmt: skip
        entries = {n: m.clone() for n, m in base.items()}
        keep, given_back = select_channels(
            [_mean_scale(u.group, modules) for u in units],
            [u.alive(entries) for u in units],
            spec.rate_per_round(),
            settings.min_channels,
        )
        for i, count in given_back:
            context.note(
                f"{spec.method}: the global |gamma| threshold would leave layer {units[i].group.name} fewer than "
                f"{settings.min_channels} channel(s); it keeps {count} more, those with the largest |gamma| "
                f"(--{settings.flag_prefix}min-channels sets the minimum)"
            )
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        for u, flags in zip(units, keep, strict=True):
            u.apply(entries, flags, shapes)
        return Mask(entries)


@register_method("slimming")
class Slimming(ScaleMethod):
    """Network slimming (Liu et al. 2017): L1 on BatchNorm scales in training, a global |gamma| threshold."""

    description = "L1 on BatchNorm scales in training, one global |gamma| cut (Liu 2017)"
    Settings = SlimmingSettings
    plugin = SlimmingL1
    once = None  # --slimming-multi-pass: several rounds, each level retraining under the push

    def level_hooks(self, spec) -> list[TrainPlugin]:
        return [self.make_plugin(spec)] if self.settings(spec).multi_pass else []

    def hooks_text(self) -> str:
        return f"{super().hooks_text()}; each level too with --{SlimmingSettings.flag_prefix}multi-pass"
