"""Early-bird tickets (You, Li, Xu, Fu, Wang, Chen, Baraniuk, Wang & Lin 2020): network slimming's
channel mask, taken as soon as it settles during the dense training.

The dense training runs slimming's L1 push on the BatchNorm scales (:class:`EarlyBird` is a
:class:`~prunelab.pruning.slimming.SlimmingL1`); at every epoch end the slimming mask at the target
fraction is computed and queued (the last 5); when the normalised Hamming distance between the
newest mask and each of the 4 before it is below 0.1, the ticket is there: dense training stops
(:attr:`Trainer.stopped_early <prunelab.training.Trainer>` says why), and the level prunes those
channels, as slimming does, and retrains (``finetune``, or ``reinit``/``scratch-e`` from scratch).
The ticket's epoch and the training FLOPs saved against finishing the dense training are kept in
the dense level's metrics (``plugins["early-bird"]``), and ``show`` and the report say them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.mask import Mask
from prunelab.pruning.methods import register_method
from prunelab.pruning.slimming import ScaleMethod, SlimmingL1, alive_channels, channel_scales, select_channels
from prunelab.spec import FrozenSpec
from prunelab.training.plugins import register_plugin

if TYPE_CHECKING:
    from prunelab.training.trainer import Trainer

__all__ = ["EarlyBird", "EarlyBirdSettings", "EarlyBirdTickets", "MaskQueue", "hamming"]

#: Training FLOPs per example and forward MAC: 2 for the forward pass, 4 for the backward pass.
TRAIN_FLOPS_PER_MAC = 6


class EarlyBirdSettings(FrozenSpec):
    """Early-bird tickets' hyperparameters (``[pruning.early_bird]``, ``--early-bird-*``)."""

    flag_prefix: ClassVar[str] = "early-bird-"
    penalty: float = Field(
        1e-4, ge=0, lt=1, description="s of the L1 push s*sign(gamma) on BatchNorm scales during the search"
    )
    queue: int = Field(
        5,
        ge=2,
        le=100,
        description="masks kept; the newest is compared with each of the others (You et al.: 5)",
    )
    distance: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="normalised Hamming distance under which the ticket is there (You et al.: 0.1)",
    )
    min_channels: int = Field(1, ge=1, description="channels every layer keeps, whatever the threshold says")
    bf16: bool = Field(
        False, description="the search under bf16 autocast, on a CPU too (You et al.'s low precision)"
    )


def hamming(a: torch.Tensor, b: torch.Tensor) -> float:
    """The normalised Hamming distance of two keep vectors: the fraction of entries that differ."""
    return float((a != b).sum()) / max(1, a.numel())


class MaskQueue:
    """The last ``size`` masks; the ticket is there when the newest is within ``threshold`` of every other.

    :meth:`push` returns ``(found, distance)``: ``distance`` is the largest normalised Hamming distance
    between the newest mask and the others queued (None for the first), ``found`` whether the queue is
    full and that distance is below ``threshold``.
    """

    def __init__(self, size: int = 5, threshold: float = 0.1) -> None:
        self.size, self.threshold = size, threshold
        self.masks: list[torch.Tensor] = []

    def push(self, mask: torch.Tensor) -> tuple[bool, float | None]:
        self.masks = [*self.masks, mask.detach().cpu().clone()][-self.size :]
        newest, others = self.masks[-1], self.masks[:-1]
        if not others:
            return False, None
        distance = max(hamming(newest, m) for m in others)
        return len(self.masks) == self.size and distance < self.threshold, distance


@register_plugin("early-bird")
class EarlyBird(SlimmingL1):
    """Early-bird ticket search: slimming's L1 push, and the slimming mask queued at every epoch end.

    Training stops at the first epoch end whose mask is within ``distance`` (normalised Hamming) of
    each of the ``queue - 1`` masks before it. The report holds the ticket's epoch and iteration, the
    distances seen, and the training FLOPs saved against the full dense training (6 x forward MACs
    per example, ``batch_size`` examples per iteration; the pruning itself, one sort of the scales,
    is the same for both and negligible).
    """

    description = (
        "early-bird ticket search: stop dense training when the slimming mask settles (You et al. 2020)"
    )
    needs = "a BatchNorm right after each conv/linear layer whose channels it prunes"
    Settings = EarlyBirdSettings
    standalone = False  # it stops the training at a ticket of its pruning method

    def __init__(self, settings: FrozenSpec | None = None, fraction: float = 0.5) -> None:
        super().__init__(settings)
        if not 0 < fraction < 1:
            raise SpecError(f"early-bird's channel fraction must be in (0, 1), got {fraction!r}")
        self.fraction = float(fraction)
        self.queue = MaskQueue(self.settings.queue, self.settings.distance)
        self.epochs = 0
        self.distances: list[float | None] = []
        self.ticket: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "fraction": self.fraction}

    @property
    def wants_bf16(self) -> bool:
        return bool(self.settings.bf16)

    def current_mask(self, model: nn.Module, mask: Mask | None = None) -> torch.Tensor:
        """The slimming keep flags of every channel at the target fraction, concatenated."""
        scales = channel_scales(model, self.layers)
        keep, _ = select_channels(
            scales, alive_channels(model, self.layers, mask), self.fraction, self.settings.min_channels
        )
        return torch.cat(keep)

    def on_epoch_end(self, trainer: Trainer) -> str | None:
        self.epochs += 1
        found, distance = self.queue.push(self.current_mask(trainer.model, trainer.mask))
        self.distances.append(distance)
        if not found or self.ticket is not None:
            return None
        self.ticket = self._ticket(trainer, distance)
        return (
            f"early-bird ticket at epoch {self.epochs}: its channel mask is within {distance:.3f} "
            f"(< {self.settings.distance:g}) of the {self.settings.queue - 1} before it"
        )

    def _ticket(self, trainer: Trainer, distance: float) -> dict[str, Any]:
        from prunelab.pruning.macs import masked_macs  # the trainer's model, dense

        macs = masked_macs(trainer.model, Mask.ones(trainer.model), tuple(trainer.data.info.input_shape))
        per_iteration = TRAIN_FLOPS_PER_MAC * macs * trainer.cfg.batch_size
        total, at = trainer.total, trainer.iteration
        return {
            "epoch": self.epochs,
            "iteration": at,
            "distance": distance,
            "dense_iterations": total,
            "search_flops": per_iteration * at,
            "dense_flops": per_iteration * total,
            "flops_saved": per_iteration * (total - at),
            "saved_fraction": (total - at) / total if total else 0.0,
        }

    def report(self) -> dict[str, Any]:
        return {"epochs_searched": self.epochs, "distances": list(self.distances), "ticket": self.ticket}

    @classmethod
    def report_text(cls, report: dict[str, Any]) -> str:
        ticket = report.get("ticket")
        if ticket is None:
            return (
                f"no ticket in {report.get('epochs_searched', '?')} epochs: the dense training ran to its end"
            )
        return (
            f"ticket at epoch {ticket['epoch']} (iteration {ticket['iteration']:,} of "
            f"{ticket['dense_iterations']:,}); {ticket['saved_fraction']:.0%} of the dense training FLOPs saved"
        )

    def state_dict(self) -> dict:
        return {
            "masks": [m.clone() for m in self.queue.masks],
            "epochs": self.epochs,
            "distances": list(self.distances),
            "ticket": None if self.ticket is None else dict(self.ticket),
        }

    def load_state_dict(self, state: dict) -> None:
        self.queue.masks = [torch.as_tensor(m, dtype=torch.bool) for m in state["masks"]]
        self.epochs = int(state["epochs"])
        self.distances = [None if d is None else float(d) for d in state["distances"]]
        self.ticket = None if state["ticket"] is None else dict(state["ticket"])


@register_method("early-bird")
class EarlyBirdTickets(ScaleMethod):
    """Early-bird tickets (You et al. 2020): the slimming mask once it settles during dense training."""

    description = "the slimming mask once it settles; dense training stops (You 2020)"
    Settings = EarlyBirdSettings
    plugin = EarlyBird
    once = "prunes once, at the ticket"

    def make_plugin(self, spec) -> EarlyBird:
        return EarlyBird(self.settings(spec), fraction=spec.rate_per_round())
