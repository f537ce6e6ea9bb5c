"""The trainer's own bookkeeping as hooks beside the methods' (:class:`~prunelab.training.hooks.TrainHook`):
the best-validation weights, and the checkpoint written at each epoch end.

A callback with a ``key`` keeps its :meth:`~TrainHook.state_dict` under that key of the trainer's
checkpoint (the best weights under ``best``, as checkpoints of format 2 always held them); callbacks
run after the methods' hooks at every event, so a checkpoint holds what the hooks decided.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

import torch

from prunelab.training.hooks import TrainHook
from prunelab.training.results import EvalRecord, best_record

if TYPE_CHECKING:
    from prunelab.training.trainer import Trainer

__all__ = ["BestWeights", "Checkpoint", "EpochEnd"]


class BestWeights(TrainHook):
    """A copy of the weights at the minimum validation loss so far, on the training device, tested at
    the end: the early-stop record's test metrics are those of the weights at that iteration."""

    key: ClassVar[str] = "best"

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer  # whose model the copy is of (the checkpoint is checked against it)
        self.loss = math.inf
        self.iteration: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def on_record(self, trainer: Trainer, record: EvalRecord) -> None:
        if record.val_loss is not None and math.isfinite(record.val_loss) and record.val_loss < self.loss:
            self.loss, self.iteration = record.val_loss, record.iteration
            with torch.no_grad():
                state = trainer.model.state_dict()
                if self.weights is None:
                    self.weights = {k: v.detach().clone() for k, v in state.items()}
                else:  # copied into the same tensors: no allocation per improvement
                    for k, v in state.items():
                        self.weights[k].copy_(v)

    def on_finish(self, trainer: Trainer) -> None:
        """The test split on the kept weights, into the early-stop record (the final one was tested)."""
        history = trainer.history
        best = best_record(history)
        if self.weights is None or best is None or best.iteration == history[-1].iteration:
            return
        if best.iteration != self.iteration:
            raise AssertionError("the kept best-validation weights are not those of the early-stop record")
        with torch.no_grad():
            weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            trainer.model.load_state_dict(self.weights)
            try:
                test_loss, test_acc = trainer.evaluate(trainer.data.test)
            finally:
                trainer.model.load_state_dict(weights)
        i = next(i for i, r in enumerate(history) if r is best)
        history[i] = replace(best, test_loss=test_loss, test_acc=test_acc)

    def state_dict(self) -> dict | None:
        if self.weights is None:
            return None
        return {
            "val_loss": self.loss,
            "iteration": self.iteration,
            "weights": {k: v.detach().cpu().clone() for k, v in self.weights.items()},
        }

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            self.loss, self.iteration, self.weights = math.inf, None, None
            return
        current = self.trainer.model.state_dict()
        if set(state["weights"]) != set(current):
            raise ValueError("its best-validation weights are not this model's")
        self.loss, self.iteration = float(state["val_loss"]), int(state["iteration"])
        device = self.trainer.device
        self.weights = {k: v.to(device, current[k].dtype).clone() for k, v in state["weights"].items()}


class EpochEnd(TrainHook):
    """Calls ``fn(trainer)`` at every epoch end, after the hooks (a checkpoint written there holds
    their decision)."""

    def __init__(self, fn: Callable[[Trainer], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.fn(trainer)


class Checkpoint(EpochEnd):
    """Writes the trainer's state at every epoch end with ``save`` (an atomic write), with ``extra``
    entries beside it (what the run's numbers depend on), so a killed run resumes exactly."""

    def __init__(self, save: Callable[[dict], None], **extra) -> None:
        super().__init__(lambda trainer: save({**trainer.state_dict(), **extra}))
