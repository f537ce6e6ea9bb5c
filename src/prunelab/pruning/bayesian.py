"""Bayesian compression (Louizos, Ullrich & Welling 2017): group scales with a sparsity-inducing prior.

During the dense training each selected ``nn.Linear``/``nn.Conv2d`` (``groups=1``) is swapped for a
layer whose every *input unit* (an input feature, or an input channel) has a scale ``z`` with a
Gaussian posterior ``N(z_mu, exp(z_logvar))`` under the log-uniform prior (the normal-Jeffreys
scale mixture, BC-GNJ), and whose weights have a Gaussian posterior ``N(weight, exp(weight_logvar))``
given ``z``. Training samples ``z`` per example and the pre-activations by the local
reparameterisation trick; the loss adds ``kl_weight * ramp * KL / N`` with

    KL = sum over units of KL_approx(log alpha_z)  +  sum over weights of 0.5 (sigma^2 + mu^2 - log sigma^2 - 1),

``log alpha_z = z_logvar - log z_mu^2`` and ``KL_approx`` Molchanov et al.'s
approximation (:func:`~prunelab.pruning.variational.kl_approximation`), as in the authors' released
code. A unit whose ``log alpha_z`` exceeds the threshold (``--bayesian-compression-threshold``,
default -3; the authors' code used -5 to -2.8 per layer) is pruned: after training each layer is a
plain layer holding ``weight * z_mu`` with the pruned units' columns at zero, and a mask of them.
The level keeps those weights; a unit whose columns are all pruned in every consumer is unused, so
:func:`prunelab.compress.compact` removes it (and the producing layer's row) physically.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from prunelab.pruning.methods import register_method
from prunelab.pruning.variational import SparseVD, SparseVDMethod, kl_approximation
from prunelab.spec import FrozenSpec
from prunelab.training.config import Duration
from prunelab.training.plugins import register_plugin

__all__ = ["BayesianCompression", "BayesianCompressionMethod", "GroupConv2d", "GroupLinear"]


class _Group(nn.Module):
    """Weights ``weight`` (means) and ``weight_logvar``; a scale ``z`` per input unit, ``z_mu``, ``z_logvar``."""

    def __init__(self, layer: nn.Module, threshold: float, logvar: float) -> None:
        super().__init__()
        w = layer.weight.detach()
        self.weight = nn.Parameter(w.clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.weight_logvar = nn.Parameter(torch.full_like(w, logvar))
        self.z_mu = nn.Parameter(torch.ones(w.shape[1], device=w.device))
        self.z_logvar = nn.Parameter(torch.full((w.shape[1],), logvar, device=w.device))
        self.threshold = threshold

    def log_alpha(self) -> torch.Tensor:
        """``z_logvar - log z_mu^2``, not clipped (as in the authors' code: a clip at -8 would stop the
        gradient of the scales' variances, which start at -9)."""
        return self.z_logvar - torch.log(self.z_mu**2 + 1e-8)

    def kept_units(self) -> torch.Tensor:
        return self.log_alpha() <= self.threshold

    def kl(self) -> torch.Tensor:
        weights = 0.5 * (self.weight_logvar.exp() + self.weight**2 - self.weight_logvar - 1)
        return kl_approximation(self.log_alpha()).sum() + weights.sum()

    def _shape(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (batch or 1, units) broadcast against an input of this layer."""
        raise NotImplementedError

    def _op(self, x, weight, bias):
        raise NotImplementedError

    def effective_weight(self) -> torch.Tensor:
        """The eval-mode weight: ``weight * z_mu`` with the pruned units' columns at zero."""
        z = self.z_mu * self.kept_units()
        return self.weight * z.reshape(1, -1, *([1] * (self.weight.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._op(x, self.effective_weight(), self.bias)
        eps = torch.randn(x.shape[0], self.z_mu.shape[0], device=x.device, dtype=x.dtype)
        z = self.z_mu + torch.exp(0.5 * self.z_logvar) * eps
        xz = x * self._shape(z)
        mean = self._op(xz, self.weight, self.bias)
        variance = self._op(xz * xz, self.weight_logvar.exp(), None)
        return mean + torch.sqrt(variance + 1e-8) * torch.randn_like(mean)

    @torch.no_grad()
    def plain(self) -> tuple[nn.Module, torch.Tensor]:
        layer = self._plain_layer().to(self.weight.device)
        layer.weight.copy_(self.effective_weight())
        if self.bias is not None:
            layer.bias.copy_(self.bias)
        keep = self.kept_units().reshape(1, -1, *([1] * (self.weight.dim() - 2))).expand_as(self.weight)
        return layer, keep.detach().cpu().clone()

    def _plain_layer(self) -> nn.Module:
        raise NotImplementedError


class GroupLinear(_Group):
    def _shape(self, z):
        return z

    def _op(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def _plain_layer(self):
        out_f, in_f = self.weight.shape
        return nn.Linear(in_f, out_f, bias=self.bias is not None)


class GroupConv2d(_Group):
    def __init__(self, layer: nn.Conv2d, threshold: float, logvar: float) -> None:
        super().__init__(layer, threshold, logvar)
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation

    def _shape(self, z):
        return z[:, :, None, None]

    def _op(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def _plain_layer(self):
        out_c, in_c, kh, kw = self.weight.shape
        return nn.Conv2d(
            in_c, out_c, (kh, kw), stride=self.stride, padding=self.padding, dilation=self.dilation,
            bias=self.bias is not None,
        )  # fmt: skip


class BayesianCompressionSettings(FrozenSpec):
    """Bayesian compression's hyperparameters (``[pruning.bayesian_compression]``)."""

    flag_prefix: ClassVar[str] = "bayesian-compression-"
    kl_weight: float = Field(
        1.0, ge=0, le=100, description="weight of the KL term (1: the variational bound)"
    )
    kl_warmup: Duration = Field(
        "0it", description="the KL weight rises linearly from 0 over this long (e.g. 2ep)"
    )
    threshold: float = Field(
        -3.0,
        ge=-8,
        le=8,
        description="units with log alpha_z above this are pruned (the authors' code: -5 to -2.8)",
    )
    log_sigma2_init: float = Field(
        -9.0, ge=-20, le=0, description="initial log variance of weights and scales"
    )


@register_plugin("bayesian-compression")
class BayesianCompression(SparseVD):
    """Group (input unit) scales with a log-uniform prior; converted back to plain layers and a unit mask."""

    description = "Bayesian compression: unit scales with a sparsity prior (Louizos et al. 2017)"
    needs = "Linear or Conv2d layers (groups=1)"
    Settings = BayesianCompressionSettings
    variant_base = _Group
    variants: ClassVar[dict[type[nn.Module], type[nn.Module]]] = {
        nn.Linear: GroupLinear,
        nn.Conv2d: GroupConv2d,
    }

    def _fits(self, layer: nn.Module) -> bool:
        return type(layer) in self.variants and getattr(layer, "groups", 1) == 1

    def report(self):
        return {}


@register_method("bayesian-compression")
class BayesianCompressionMethod(SparseVDMethod):
    """Bayesian compression: the weights of the units its training kept (log alpha_z <= threshold)."""

    description = "unit scales under a log-uniform prior (Louizos et al. 2017)"
    Settings = BayesianCompressionSettings
    plugin = BayesianCompression
