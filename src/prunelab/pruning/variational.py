"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017): weights with a learned noise variance.

During training each selected ``nn.Linear``/``nn.Conv2d`` is swapped for a variational layer
(:class:`VariationalLinear`, :class:`VariationalConv2d`): a weight ``theta`` and a ``log sigma^2`` of
the same shape, ``log alpha = log sigma^2 - log theta^2`` clipped to [-8, 8], trained through the local
reparameterisation trick (the pre-activations drawn from their Gaussian, the noise from torch's
generator, which the trainer checkpoints). The loss adds ``kl_weight * ramp * KL / N`` (``N`` the
training examples, ``ramp`` rising linearly from 0 to 1 over ``kl_warmup``) with Molchanov et al.'s
approximation

    KL(alpha) ~= k1 - k1 * sigmoid(k2 + k3 * log alpha) + 0.5 * log(1 + 1/alpha),
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695,

summed over the weights. In eval mode, and after training, a weight with ``log alpha > 3`` is 0: the
training ends by converting each variational layer back to a plain layer holding ``theta`` with
those weights at zero, and a :class:`~prunelab.pruning.Mask` of the others.

As ``--method sparse-vd`` the dense trunk is the variational training (from the initialisation, or
from trained ``--weights``); the level keeps the weights it left (its ``--rate`` does not apply: the
sparsity is learned) and trains on with that mask (``--treatment finetune``, or ``rewind`` for a
lottery ticket of the variational mask).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.context import PruneContext
from prunelab.pruning.layers import describe, select_layers, selection_identity
from prunelab.pruning.mask import Mask
from prunelab.pruning.methods import TrainingMethod, register_method
from prunelab.spec import FrozenSpec
from prunelab.training.config import Duration, parse_duration
from prunelab.training.plugins import TrainPlugin, register_plugin

if TYPE_CHECKING:
    from prunelab.training.trainer import Trainer

__all__ = [
    "K1",
    "K2",
    "K3",
    "SparseVD",
    "SparseVDMethod",
    "VariationalConv2d",
    "VariationalLinear",
    "kl_approximation",
]

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_RANGE = (-8.0, 8.0)


def kl_approximation(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov et al.'s approximation of KL(q || log-uniform prior) per weight, at each ``log alpha``."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


class _Variational(nn.Module):
    """``weight`` (theta), ``bias`` and ``log_sigma2``; noisy pre-activations in training, sparse in eval."""

    def __init__(self, layer: nn.Module, threshold: float, log_sigma2: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.log_sigma2 = nn.Parameter(torch.full_like(layer.weight.detach(), log_sigma2))
        self.threshold = threshold

    def log_alpha(self) -> torch.Tensor:
        return torch.clamp(self.log_sigma2 - torch.log(self.weight**2 + 1e-8), *LOG_ALPHA_RANGE)

    def kept(self) -> torch.Tensor:
        """The weights that stay: ``log alpha <= threshold``."""
        return self.log_alpha() <= self.threshold

    def kl(self) -> torch.Tensor:
        return kl_approximation(self.log_alpha()).sum()

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._op(x, self.weight * self.kept(), self.bias)
        mean = self._op(x, self.weight, self.bias)
        variance = self._op(x * x, torch.exp(self.log_alpha()) * self.weight**2, None)
        return mean + torch.sqrt(variance + 1e-8) * torch.randn_like(mean)

    def plain(self) -> tuple[nn.Module, torch.Tensor]:
        """The plain layer computing this one's eval-mode outputs, and its keep mask."""
        raise NotImplementedError


class VariationalLinear(_Variational):
    def _op(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def plain(self) -> tuple[nn.Module, torch.Tensor]:
        out_f, in_f = self.weight.shape
        layer = nn.Linear(in_f, out_f, bias=self.bias is not None).to(self.weight.device)
        return _fill(layer, self)


class VariationalConv2d(_Variational):
    def __init__(self, layer: nn.Conv2d, threshold: float, log_sigma2: float) -> None:
        super().__init__(layer, threshold, log_sigma2)
        if layer.padding_mode != "zeros":
            raise SpecError(
                f"sparse-vd: conv padding mode {layer.padding_mode!r} is not supported (only 'zeros')"
            )
        self.stride, self.padding, self.dilation, self.groups = (
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )

    def _op(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def plain(self) -> tuple[nn.Module, torch.Tensor]:
        out_c, in_per_group, kh, kw = self.weight.shape
        layer = nn.Conv2d(
            in_per_group * self.groups,
            out_c,
            (kh, kw),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
        ).to(self.weight.device)
        return _fill(layer, self)


@torch.no_grad()
def _fill(layer: nn.Module, variational: _Variational) -> tuple[nn.Module, torch.Tensor]:
    keep = variational.kept().detach()
    layer.weight.copy_(variational.weight * keep)
    if variational.bias is not None:
        layer.bias.copy_(variational.bias)
    return layer, keep.cpu()


VARIANTS: dict[type[nn.Module], type[_Variational]] = {
    nn.Linear: VariationalLinear,
    nn.Conv2d: VariationalConv2d,
}


class SparseVDSettings(FrozenSpec):
    """Sparse variational dropout's hyperparameters (``[pruning.sparse_vd]``, ``--sparse-vd-*``)."""

    flag_prefix: ClassVar[str] = "sparse-vd-"
    kl_weight: float = Field(
        1.0, ge=0, le=100, description="weight of the KL term (1: the variational bound)"
    )
    kl_warmup: Duration = Field(
        "0it", description="the KL weight rises linearly from 0 over this long (e.g. 2ep, 500it)"
    )
    threshold: float = Field(
        3.0, ge=-8, le=8, description="weights with log alpha above this are pruned (Molchanov et al.: 3)"
    )
    log_sigma2_init: float = Field(-10.0, ge=-20, le=0, description="initial log sigma^2 of every weight")


@register_plugin("sparse-vd")
class SparseVD(TrainPlugin):
    """Swaps the selected layers for variational ones, adds the scaled KL term, converts back at the end."""

    description = (
        "sparse variational dropout: learned log sigma^2 per weight, KL term (Molchanov et al. 2017)"
    )
    needs = "Linear or Conv2d layers"
    Settings = SparseVDSettings
    #: the variational layers this plug-in trains (their ``kl()`` enters the loss) and makes
    variant_base: ClassVar[type[nn.Module]] = _Variational
    variants: ClassVar[dict[type[nn.Module], type[nn.Module]]] = VARIANTS

    def __init__(
        self, settings: FrozenSpec | None = None, *, layers: str = "all", exclude: tuple[str, ...] = ()
    ) -> None:
        super().__init__(settings)
        self.layers, self.exclude = layers, tuple(exclude)
        self._scale = 0.0
        self._warmup = 0
        self._trainer: Trainer | None = None

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), **selection_identity(self.layers, self.exclude)}

    def _chosen(self, model: nn.Module) -> list[str]:
        chosen = select_layers(model, self.layers, self.exclude)
        names = [layer.name for layer in chosen if self._fits(model.get_submodule(layer.name))]
        if not names:
            raise SpecError(
                f"{self.name} trains Linear and Conv2d layers variationally; the selected layers have "
                f"none ({describe(chosen)})"
            )
        return names

    def _fits(self, layer: nn.Module) -> bool:
        return type(layer) in self.variants

    def _variant(self, layer: nn.Module) -> nn.Module:
        return self.variants[type(layer)](layer, self.settings.threshold, self.settings.log_sigma2_init)

    def check(self, model: nn.Module, example: torch.Tensor) -> None:
        self._chosen(model)

    def swap(self, model: nn.Module) -> nn.Module:
        for name in self._chosen(model):
            layer = model.get_submodule(name)
            _set_submodule(model, name, self._variant(layer).to(layer.weight.device))
        return model

    def start(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self._scale = self.settings.kl_weight / max(1, len(trainer.data.train))
        self._warmup = parse_duration(self.settings.kl_warmup, trainer.batches_per_epoch)

    def ramp(self, iteration: int) -> float:
        """The KL weight's warm-up factor at ``iteration``: linear from 0 to 1, then 1."""
        return 1.0 if self._warmup <= 0 else min(1.0, iteration / self._warmup)

    def loss(self, model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        if self._trainer is None:
            raise RuntimeError(f"{self.name}: the trainer calls start() before training")
        factor = self._scale * self.ramp(self._trainer.iteration)
        if factor == 0:
            return None
        return factor * sum(m.kl() for m in model.modules() if isinstance(m, self.variant_base))

    def restore(self, model: nn.Module) -> tuple[nn.Module, Mask | None]:
        keep: dict[str, torch.Tensor] = {}
        for name, module in list(model.named_modules()):
            if isinstance(module, self.variant_base):
                layer, kept = module.plain()
                _set_submodule(model, name, layer)
                keep[f"{name}.weight" if name else "weight"] = kept
        return model, Mask(keep)

    def report(self) -> dict[str, Any]:
        return {}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@register_method("sparse-vd")
class SparseVDMethod(TrainingMethod):
    """Sparse variational dropout: the weights its training leaves (log alpha <= 3), nothing else ranked."""

    description = "variational dropout, log alpha > 3 pruned (Molchanov 2017)"
    Settings = SparseVDSettings
    plugin: ClassVar[type[SparseVD]] = SparseVD  # the training that learns the mask
    once = "learns its mask in one training"

    def make_plugin(self, spec) -> SparseVD:
        return self.plugin(self.settings(spec), layers=spec.layers, exclude=spec.exclude)

    def select(self, model: nn.Module, mask: Mask | None, spec, context: PruneContext, generator) -> Mask:
        """The non-zero weights of the layers the variational training covered (after it, the pruned
        ones are exact zeros), within ``mask``."""
        out = self.nonzero_within(model, mask, spec)
        if not context.trial:
            context.note(
                f"{spec.method} keeps the weights its variational training left (log alpha <= "
                f"{self.settings(spec).threshold:g}): density {out.density():.2%}; --rate does not apply"
            )
        return out
