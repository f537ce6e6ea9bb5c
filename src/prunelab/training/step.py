"""The training step: one batch in, masked gradients left in ``.grad``; chosen once per trainer.

Every step kind satisfies :class:`Step`, and :func:`choose_step` is the one place that decides which
runs. The trainer's epoch loop then calls ``bind`` once per epoch and ``run`` once per batch, whatever
the kind, so a new kind (a fused GPU step, a transformer step) is one class and one branch here.

Three kinds exist (``Step.kind``):

* ``"native"`` (:class:`~prunelab.training.native_mlp.NativeMLPStep`): a Linear-ReLU chain on a CPU,
  the whole step as one C call around torch's MKL sgemm;
* ``"relu-mlp"`` (:class:`~prunelab.training.relu_mlp.ReluMLPStep`): the same chain as torch ops
  without autograd (no C compiler, ``PRUNELAB_NO_NATIVE=1``, a GPU, or augmented data);
* ``"autograd"`` (:class:`AutogradStep`): every other model, bf16 autocast, and any training hook
  that adds a loss term or swaps layers for training-time variants (only autograd can differentiate
  an arbitrary extra term or layer): :attr:`TrainHook.needs_autograd`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import Split, cifar_augment

if TYPE_CHECKING:
    from prunelab.data import Dataset
    from prunelab.training.config import TrainConfig
    from prunelab.training.hooks import TrainHook

__all__ = ["STEP_KINDS", "AutogradStep", "MaskPairs", "RunningTotals", "Step", "choose_step"]

#: Every step kind, with what it is (the benchmark and the docs show these).
STEP_KINDS = {
    "native": "prunelab's C step around torch's MKL sgemm",
    "relu-mlp": "torch ops without autograd: no C compiler, PRUNELAB_NO_NATIVE=1, no MKL, or augmentation",
    "autograd": "autograd (any model; bf16; hooks that add loss terms or swap layers)",
}

#: ``(parameter, float 0/1 mask of its shape)`` for each parameter with pruned entries.
MaskPairs = Sequence[tuple[nn.Parameter, torch.Tensor]]


@runtime_checkable
class Step(Protocol):
    """One training step over rows of the training split; the trainer calls nothing else.

    ``kind`` names it ("native", "relu-mlp", "autograd": it is recorded with the results, because
    the step changes the float rounding). ``owns_grads`` is True when the step overwrites the same
    gradient buffers at every call, so the trainer must not clear them; False when it accumulates
    into ``.grad`` (autograd), so the trainer sets them to None after each optimizer step.
    """

    kind: str
    owns_grads: bool

    def bind(self, model: nn.Module, train: Split) -> None:
        """Point the step at ``model``'s current parameters and at ``train``; called at every epoch start,
        so a parameter, gradient or tensor replaced in between is picked up."""

    def run(self, perm: torch.Tensor, start: int, n: int) -> None:
        """Train on rows ``perm[start:start+n]`` of the bound split: masked gradients into ``.grad``."""

    def take_totals(self) -> tuple[float, float, int]:
        """(summed cross-entropy, correct predictions, examples) since the last call, then reset."""


class RunningTotals:
    """Training loss and accuracy since the last :meth:`take`, reduced only when taken.

    Keeping references costs nothing per step; one batched reduction per evaluation replaces several
    tiny tensor ops (and, on a GPU, a synchronisation) per step.
    """

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """``loss`` is the batch's mean cross-entropy (weighted by its size when taken). Only the
        predicted classes are kept (a language model's logits are a vocabulary per token)."""
        self._losses.append(loss.detach())
        self._outputs.append(logits.detach().argmax(1))
        self._targets.append(targets)

    def take(self) -> tuple[float, float, int]:
        if not self._losses:
            return 0.0, 0.0, 0
        sizes = torch.tensor([t.numel() for t in self._targets], dtype=torch.float64)  # tokens for an LM
        loss_sum = float(torch.stack(self._losses).double().cpu() @ sizes)
        hits = [(p == t).sum() for p, t in zip(self._outputs, self._targets, strict=True)]
        correct = float(torch.stack(hits).sum())  # one synchronisation on a GPU
        self.__init__()
        return loss_sum, correct, int(sizes.sum())


def gather(train: Split, perm: torch.Tensor, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and labels of rows ``perm[start:start+n]``."""
    idx = perm[start : start + n]
    return train.x.index_select(0, idx), train.y.index_select(0, idx)


def mask_gradients(masks: MaskPairs) -> None:
    """Multiply each masked parameter's gradient by its mask (parameters without one are skipped)."""
    pairs = [(p.grad, m) for p, m in masks if p.grad is not None]
    if pairs:
        torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])


class AutogradStep:
    """Any model: gather (and CIFAR-augment), forward under optional bf16 autocast, backward, mask.

    Hooks that add loss terms (:attr:`TrainHook.adds_loss`) add them to the cross-entropy before
    ``backward``; the recorded training loss stays the cross-entropy alone, so it is comparable with
    and without them.
    """

    kind = "autograd"
    owns_grads = False

    def __init__(
        self,
        model: nn.Module,
        masks: MaskPairs = (),
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
        bf16: bool = False,
        hooks: Sequence[TrainHook] = (),
    ) -> None:
        if augment and generator is None:
            raise ValueError("augmentation draws from the data-order generator; pass generator=")
        self.model = model
        self.masks = list(masks)
        self.augment, self.generator = augment, generator
        self.bf16 = bf16
        # one context for every step (an autocast object can be entered again once exited); on the
        # model's device type, so a hook's bf16 request (early-bird's search) works on a CPU too
        device = next(iter(model.parameters()), torch.empty(0)).device.type
        self._autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
        self.loss_hooks = [h for h in hooks if h.adds_loss]
        self._totals = RunningTotals()
        self._train: Split | None = None

    def bind(self, model: nn.Module, train: Split) -> None:
        self.model, self._train = model, train

    def run(self, perm: torch.Tensor, start: int, n: int) -> None:
        xb, yb = gather(self._train, perm, start, n)
        if self.augment:
            xb = cifar_augment(xb, self.generator)
        with self._autocast:
            out = self.model(xb)
            loss = F.cross_entropy(out.float(), yb)
        total = loss
        for hook in self.loss_hooks:
            term = hook.loss(self.model, out, yb)
            if term is not None:
                total = total + term
        total.backward()
        mask_gradients(self.masks)
        self._totals.add(loss, out, yb)

    def take_totals(self) -> tuple[float, float, int]:
        return self._totals.take()


def choose_step(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    masks: MaskPairs = (),
    hooks: Sequence[TrainHook] = (),
    generator: torch.Generator | None = None,
) -> Step:
    """The fastest step that gives ``model``'s own gradients on ``data`` (already on the training device).

    In order:

    1. bf16 autocast (``cfg.bf16``, or a hook's :attr:`TrainHook.wants_bf16`, on any device), or a
       hook that adds a loss term or swaps layers (:attr:`TrainHook.needs_autograd`):
       :class:`AutogradStep` (the hand-written steps have neither a bf16 path nor a way to
       differentiate an arbitrary term or layer);
    2. a Linear-ReLU chain (:func:`~prunelab.training.relu_mlp.relu_chain`) whose torch-op forward
       reproduces the model's own outputs on a few training inputs: on a CPU without augmentation,
       the C step, kept only if one step of it reproduces the torch step's loss and masked
       gradients on real rows (:meth:`NativeMLPStep.build`); else the torch-op
       :class:`~prunelab.training.relu_mlp.ReluMLPStep`;
    3. anything else: :class:`AutogradStep`.

    ``masks`` are the trainer's ``(parameter, float mask)`` pairs; ``generator`` is the data-order
    generator that CIFAR augmentation draws from (``cfg.augment``, else the dataset's default).
    Hooks that only change gradients (``after_backward``) work with every kind: the trainer runs them
    after the step.
    """
    # these modules import this one (for RunningTotals and the helpers above)
    from prunelab.training.native_mlp import NativeMLPStep
    from prunelab.training.relu_mlp import ReluChain, ReluMLPStep

    augment = data.info.augment if cfg.augment is None else cfg.augment

    bf16 = cfg.bf16 or any(h.wants_bf16 for h in hooks)

    def autograd() -> Step:
        return AutogradStep(model, masks, augment=augment, generator=generator, bf16=bf16, hooks=hooks)

    if bf16 or any(h.needs_autograd for h in hooks):
        return autograd()
    chain = ReluChain.build(model, data.train.x[:16])
    if chain is None:
        return autograd()
    if not augment:
        by_id = {id(p): m for p, m in masks}
        native = NativeMLPStep.build(model, data.train, by_id, cfg.batch_size, chain)
        if native is not None:
            return native
    return ReluMLPStep(chain, masks, augment=augment, generator=generator)
