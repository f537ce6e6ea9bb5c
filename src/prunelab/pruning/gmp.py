"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): the mask grows during
the dense training, along a cubic sparsity schedule.

Every ``dt`` iterations from ``t0``, for ``n`` pruning steps, each chosen layer is pruned to

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3,    t = t0, t0 + dt, ..., t0 + n * dt,

its alive weights of smallest ``|w|`` going (a weight once pruned never comes back, as everywhere in
prunelab), from the initial sparsity ``s_i`` (``--gmp-initial-sparsity``, 0) to the final one ``s_f``
(the round's rate: ``--rate 0.9 --rounds 1``, or ``--target-sparsity``). The schedule prunes fast at
first, while the network has redundant weights, and ever more slowly as it approaches ``s_f``.
A pruned weight is multiplied by 0 in the forward pass (``torch.nn.utils.prune``'s reparametrisation,
the layers back to plain ones at the end, their pruned weights at exactly 0), so the rest of the
training recovers from each step. Paper's settings: ``dt`` between 100 and 1000 iterations, ``t0``
after a little training, the last step well before the learning rate gets small.

As ``--method gmp`` the dense trunk is that training; the level keeps the weights it left (with
``--treatment finetune``, training on), as a one-round method. The plug-in alone is
``prunelab.train(model, data, cfg, hooks=[GMP(GMPSettings(...), sparsity=0.9)])``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import prune as torch_prune

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

__all__ = ["GMP", "GMPSettings", "GradualMagnitude", "cubic_sparsity"]


def cubic_sparsity(t: int, initial: float, final: float, t0: int, dt: int, n: int) -> float:
    """Zhu & Gupta's schedule: ``s_i`` before ``t0``, ``s_f`` from ``t0 + n * dt`` on, the cubic in between."""
    if t <= t0:
        return initial
    if t >= t0 + n * dt:
        return final
    return final + (initial - final) * (1 - (t - t0) / (n * dt)) ** 3


class GMPSettings(FrozenSpec):
    """Gradual magnitude pruning's schedule (``[pruning.gmp]``, ``--gmp-*``): Zhu & Gupta's t0, dt, n, s_i."""

    flag_prefix: ClassVar[str] = "gmp-"
    start: Duration = Field(
        "0it", description="t0: the first pruning step (e.g. 1ep, 500it)", examples=["1ep"]
    )
    every: Duration = Field(
        "100it",
        description="dt: iterations between pruning steps (Zhu & Gupta: 100 to 1000)",
        examples=["50it"],
    )
    steps: int = Field(
        10,
        ge=1,
        le=100_000,
        description="n: pruning steps after the first; the last is at t0 + n*dt",
        examples=[20],
    )
    initial_sparsity: float = Field(
        0.0, ge=0, lt=1, description="s_i: the sparsity of the first step", examples=[0.1]
    )


@register_plugin("gmp")
class GMP(TrainPlugin):
    """Prunes the chosen layers by magnitude along the cubic schedule while they train (see the module)."""

    description = "gradual magnitude pruning along the cubic sparsity schedule (Zhu & Gupta 2017)"
    needs = "Linear or Conv layers"
    Settings = GMPSettings

    def __init__(
        self,
        settings: FrozenSpec | None = None,
        *,
        sparsity: float = 0.5,
        layers: str = "all",
        exclude: tuple[str, ...] = (),
    ) -> None:
        super().__init__(settings)
        if not 0 < sparsity < 1:
            raise SpecError(f"gmp's final sparsity must be in (0, 1), got {sparsity!r}")
        self.sparsity, self.layers, self.exclude = float(sparsity), layers, tuple(exclude)
        self.schedule: tuple[int, int, int] | None = None  # t0, dt, n in iterations
        self.done: list[list[float]] = []  # [iteration, sparsity] of each pruning step taken
        self._trainer: Trainer | None = None
        self._modules: dict[str, nn.Module] = {}

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "sparsity": self.sparsity,
            **selection_identity(self.layers, self.exclude),
        }

    def _chosen(self, model: nn.Module) -> list[str]:
        chosen = select_layers(model, self.layers, self.exclude)
        if not chosen:
            raise SpecError(
                f"gmp prunes conv and linear layers; the layer filter leaves none ({describe(chosen)})"
            )
        return [layer.name for layer in chosen]

    def check(self, model: nn.Module, example: torch.Tensor) -> None:
        self._chosen(model)

    def swap(self, model: nn.Module) -> nn.Module:
        """Each chosen layer's weight reparametrised as ``weight_orig * weight_mask`` (all ones)."""
        self._modules = {name: model.get_submodule(name) for name in self._chosen(model)}
        for module in self._modules.values():
            torch_prune.identity(module, "weight")
        return model

    def start(self, trainer: Trainer) -> None:
        per_epoch = trainer.batches_per_epoch
        t0, dt = (
            parse_duration(self.settings.start, per_epoch),
            parse_duration(self.settings.every, per_epoch),
        )
        if dt < 1:
            raise SpecError("gmp's every (dt) must be at least one iteration")
        end = t0 + self.settings.steps * dt
        if end > trainer.total:
            raise SpecError(
                f"gmp prunes until iteration t0 + n*dt = {end:,}, after the end of the dense training "
                f"({trainer.total:,} iterations): lower --gmp-steps, --gmp-every or --gmp-start, or train longer"
            )
        self.schedule = (t0, dt, self.settings.steps)
        self._trainer = trainer

    def after_backward(self, model: nn.Module) -> None:
        """At a pruning step, before the optimizer moves: the layers pruned to the schedule's sparsity."""
        t = self._trainer.iteration
        t0, dt, n = self.schedule
        if t < t0 or (t - t0) % dt or t > t0 + n * dt:
            return
        target = cubic_sparsity(t, self.settings.initial_sparsity, self.sparsity, t0, dt, n)
        with torch.no_grad():
            for module in self._modules.values():
                prune_to(module, target)
        self.done.append([t, target])

    def restore(self, model: nn.Module) -> tuple[nn.Module, Mask | None]:
        """Plain layers again, the pruned weights at exactly 0; the mask of what is kept."""
        keep = {}
        for name, module in self._modules.items():
            keep[f"{name}.weight" if name else "weight"] = module.weight_mask.detach().bool().cpu().clone()
            torch_prune.remove(module, "weight")
        return model, Mask(keep)

    def report(self) -> dict[str, Any]:
        return {"steps": [list(step) for step in self.done], "sparsity": self.sparsity} if self.done else {}

    @classmethod
    def report_text(cls, report: dict[str, Any]) -> str:
        steps = report["steps"]
        return (
            f"pruned by magnitude to {steps[-1][1]:.1%} in {len(steps)} steps of the cubic schedule, "
            f"iterations {steps[0][0]:,} to {steps[-1][0]:,}"
        )

    def state_dict(self) -> dict:
        return {"done": [list(step) for step in self.done]}  # the masks are buffers of the model

    def load_state_dict(self, state: dict) -> None:
        self.done = [[int(t), float(s)] for t, s in state["done"]]


def prune_to(module: nn.Module, sparsity: float) -> None:
    """Prune ``module``'s reparametrised weight to ``sparsity``: the alive weights of smallest ``|w|``
    go until ``round(sparsity * size)`` are pruned (ties to the lower index; none ever comes back)."""
    mask, weight = module.weight_mask, module.weight_orig.detach()
    due = round(sparsity * mask.numel()) - int((mask == 0).sum())
    if due <= 0:
        return
    scores = weight.abs().flatten().double().masked_fill(mask.flatten() == 0, float("inf"))
    order = torch.sort(scores, stable=True).indices[:due]
    flat = mask.view(-1)
    flat[order] = 0


@register_method("gmp")
class GradualMagnitude(TrainingMethod):
    """Gradual magnitude pruning: the weights its dense training left along the cubic schedule."""

    description = "gradual magnitude pruning, cubic schedule, in training (Zhu 2017)"
    Settings = GMPSettings
    plugin = GMP
    once = "prunes gradually during one dense training"

    def make_plugin(self, spec) -> GMP:
        return GMP(
            self.settings(spec), sparsity=spec.rate_per_round(), layers=spec.layers, exclude=spec.exclude
        )

    def select(self, model: nn.Module, mask: Mask | None, spec, context: PruneContext, generator) -> Mask:
        """The non-zero weights of the layers the gradual pruning covered, within ``mask``."""
        out = self.nonzero_within(model, mask, spec)
        if not context.trial:
            context.note(
                f"{spec.method} keeps the weights its gradual pruning left: density {out.density():.2%}"
            )
        return out
