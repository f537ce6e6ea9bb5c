"""What a training gives back: one :class:`EvalRecord` per evaluation, and the :class:`TrainResult`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from prunelab.pruning.mask import Mask

__all__ = ["EvalRecord", "TrainResult", "best_record"]


@dataclass(frozen=True)
class EvalRecord:
    """Metrics at one evaluation point; train metrics average the iterations since the last one.

    ``test_loss``/``test_acc`` are None except at the final record and at the early-stop record
    (minimum validation loss), whose test metrics are those of the weights at that iteration.
    """

    iteration: int
    epoch: float
    lr: float
    train_loss: float | None
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None
    test_loss: float | None
    test_acc: float | None


def best_record(history: list[EvalRecord]) -> EvalRecord | None:
    """The first record with the minimum finite validation loss (the rule the trainer keeps weights by)."""
    with_val = [r for r in history if r.val_loss is not None and math.isfinite(r.val_loss)]
    return min(with_val, key=lambda r: r.val_loss) if with_val else None


@dataclass
class TrainResult:
    """What a training run produced.

    ``stopped_early`` is the reason a hook stopped training, or None. ``environment`` is what the
    numbers depend on beyond the configuration: torch and prunelab versions, device, thread count,
    training step and evaluation kinds, and the evaluation interval in iterations. ``mask`` is the
    mask the trained model carries: the trainer's, combined with what hooks that swap layers pruned
    (None: dense). ``reports`` holds each hook's :meth:`~TrainHook.report`, by hook name.
    """

    history: list[EvalRecord]
    iterations: int
    wall_time: float
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    stopped_early: str | None = None
    environment: dict = field(default_factory=dict)
    mask: Mask | None = None
    reports: dict[str, dict] = field(default_factory=dict)

    @property
    def final(self) -> EvalRecord:
        return self.history[-1]

    @property
    def early_stop(self) -> EvalRecord:
        """The evaluation with minimum validation loss: the lottery-ticket papers' learning-speed measure.

        Its test metrics are those of the weights at that point (the trainer kept a copy of them).
        Without validation metrics it is the final record.
        """
        best = best_record(self.history)
        return self.final if best is None else best

    @property
    def early_stop_iteration(self) -> int:
        return self.early_stop.iteration

    def summary(self) -> dict:
        best = self.early_stop
        return {
            "iterations": self.iterations,
            "wall_time": self.wall_time,
            "final": asdict(self.final),
            "early_stop_iteration": best.iteration,
            "early_stop": asdict(best),
            "stopped_early": self.stopped_early,
            "environment": dict(self.environment),
            "reports": dict(self.reports),
        }
