"""Training-time plug-ins: extra loss terms, gradient changes, epoch-end decisions, with resumable state.

Methods that act during training rather than between trainings (network slimming's L1 push on
BatchNorm scales, early-bird tickets' epoch-end mask comparison, variational dropout's KL term) are
each one :class:`TrainHook` subclass passed as ``Trainer(..., hooks=[...])`` or
``prunelab.train(..., hooks=[...])``. The trainer calls, in this order:

* :meth:`~TrainHook.loss` inside the step, after the forward: a term added to the cross-entropy
  before ``backward``. Only autograd can differentiate an arbitrary term, so a hook that overrides
  ``loss`` (:attr:`~TrainHook.adds_loss`) makes the trainer take the autograd step;
* :meth:`~TrainHook.after_backward` after every step's gradients, before the optimizer: may change
  ``.grad`` in place. It works with every step kind. The gradient masks are applied again after the
  hooks ran, so pruned weights stay exactly zero whatever a hook adds;
* :meth:`~TrainHook.on_record` after every evaluation, with its record (the trainer's own
  :class:`~prunelab.training.callbacks.BestWeights` keeps the best-validation weights there);
* :meth:`~TrainHook.on_epoch_end` after every epoch (before the trainer's callbacks', where
  checkpoints are written): returns a reason to stop early, or None. The reason is kept in
  the trainer's checkpoint and in ``TrainResult.stopped_early``, so a resumed run stops where the
  uninterrupted one did;
* :meth:`~TrainHook.state_dict` / :meth:`~TrainHook.load_state_dict` with the trainer's own, so that a
  killed run resumes with identical numbers. The state must be what ``torch.load(weights_only=True)``
  reads back: tensors, numbers, strings, and lists, tuples and dicts of them.

Around the loop, once per trainer:

* :meth:`~TrainHook.check` when the trainer is built, with one training input: refuse a model the
  method cannot act on (:class:`~prunelab.errors.SpecError`, before any training);
* :meth:`~TrainHook.swap` when the trainer is built, before the optimizer: the model with layers
  replaced by training-time variants (a variational layer for a plain ``nn.Linear``). A hook that
  swaps layers (:attr:`~TrainHook.swaps_layers`) makes the trainer take the autograd step, since
  the hand-written steps know only plain layers; its parameters are checkpointed with the model's;
* :meth:`~TrainHook.on_finish` after the final evaluation on the test split (the best-validation
  weights are tested there);
* :meth:`~TrainHook.restore` after the last epoch and the final evaluations: the plain model back
  (``nn.Linear``/``nn.Conv2d``), and a :class:`~prunelab.pruning.Mask` of what the method pruned,
  which the trainer combines with its own mask into ``TrainResult.mask``;
* :meth:`~TrainHook.report`: what the method found (a ticket's epoch, FLOPs saved), JSON values,
  kept in ``TrainResult.reports`` under the hook's :attr:`~TrainHook.name`.

Hooks run in the order given; the first reason to stop wins, but every hook's ``on_epoch_end`` runs.
Registered hooks (the methods users name) are :class:`~prunelab.training.plugins.TrainPlugin`
subclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from prunelab.pruning.mask import Mask
    from prunelab.training.results import EvalRecord
    from prunelab.training.trainer import Trainer

__all__ = ["TrainHook"]


class TrainHook:
    """Base class of training-time plug-ins: override the methods a method needs, nothing else.

    The base methods do nothing; :attr:`adds_loss` and :attr:`changes_grads` are True exactly when a
    subclass overrides :meth:`loss` or :meth:`after_backward`, so the trainer pays for neither where
    no hook uses them.
    """

    def loss(self, model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """A scalar added to the batch's mean cross-entropy before ``backward`` (None: nothing this batch).

        ``logits`` are the model's outputs for the batch (under bf16 autocast where it is on),
        ``targets`` its labels. The recorded training loss stays the cross-entropy alone.
        """
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Change gradients after ``backward`` and before the optimizer step, in place (``p.grad.add_``).

        With the hand-written steps (``step_kind`` "native" or "relu-mlp") the gradients are buffers
        that the next step overwrites; a hook that assigns a new ``p.grad`` has it copied back into
        them. Gradients of pruned weights are zeroed again afterwards.
        """

    def on_epoch_end(self, trainer: Trainer) -> str | None:
        """Called after every epoch with the trainer (its ``model``, ``iteration``, ``history``).

        Return a reason (e.g. "early-bird ticket found at epoch 12") to stop training after this epoch.
        """
        return None

    def on_record(self, trainer: Trainer, record: EvalRecord) -> None:
        """Called after every evaluation with the record appended to ``trainer.history``."""

    def on_finish(self, trainer: Trainer) -> None:
        """Called once training ended and the final record was tested, before layers are restored."""

    def state_dict(self) -> dict:
        """The hook's state, saved in the trainer's checkpoint (weights-only loadable values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def check(self, model: nn.Module, example: torch.Tensor) -> None:
        """Raise :class:`~prunelab.errors.SpecError` for a model this hook cannot act on.

        ``example`` is a batch of one input the model accepts (a forward pass may trace the model).
        Called when a trainer is built, before :meth:`swap`, and by an experiment before any training.
        """

    def initialise(self, model: nn.Module, example: torch.Tensor) -> None:
        """Change a freshly built model's initial weights (network slimming's gamma = 0.5).

        The trainer does not call it (a resumed or rewound training must not be re-initialised): an
        experiment calls it before it records the initial weights; API users call it themselves.
        """

    def start(self, trainer: Trainer) -> None:
        """Called by :meth:`Trainer.run` before the first epoch (also after a resume): the trainer's
        data, configuration and ``iteration`` are there to read (a KL term scaled by the dataset size)."""

    def swap(self, model: nn.Module) -> nn.Module:
        """The model to train: ``model`` with layers replaced by training-time variants (default: as is)."""
        return model

    def restore(self, model: nn.Module) -> tuple[nn.Module, Mask | None]:
        """After training: the plain model (variants converted back) and the mask they imply, or None.

        The converted model in eval mode must compute what the trained variant computes in eval mode.
        """
        return model, None

    def report(self) -> dict[str, Any]:
        """What the method found, as JSON values (stored with the run's metrics); empty: nothing."""
        return {}

    @property
    def name(self) -> str:
        """The key of :meth:`report` in ``TrainResult.reports`` (a registered plug-in's name)."""
        return type(self).__name__

    @property
    def adds_loss(self) -> bool:
        """Whether this hook adds loss terms (overrides :meth:`loss`): it forces the autograd step."""
        return type(self).loss is not TrainHook.loss

    @property
    def changes_grads(self) -> bool:
        """Whether this hook changes gradients (overrides :meth:`after_backward`)."""
        return type(self).after_backward is not TrainHook.after_backward

    @property
    def swaps_layers(self) -> bool:
        """Whether this hook trains layer variants (overrides :meth:`swap`): it forces the autograd step."""
        return type(self).swap is not TrainHook.swap

    @property
    def wants_bf16(self) -> bool:
        """Whether this hook asks for the forward pass under bf16 autocast (a low-precision search, as
        early-bird's), on the training device whatever it is; the autograd step runs it."""
        return False

    @property
    def needs_autograd(self) -> bool:
        """Whether the hand-written training steps cannot serve this hook (a loss term, swapped layers).

        A hook that only changes gradients or acts at epoch ends leaves the C and relu-MLP steps on.
        """
        return self.adds_loss or self.swaps_layers

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
