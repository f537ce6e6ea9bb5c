"""The training step of a plain Linear-ReLU chain, written out instead of recorded by autograd.

At LeNet-300-100 sizes on a CPU a step is a few GEMMs of ~100 us each; autograd's graph, the
gradient allocations and ``zero_grad`` add about a third again. For a model that is only a chain
of ``nn.Linear`` layers with ReLUs between them (LeNet-300-100, or any ``nn.Sequential`` of that
form), :class:`ReluChain` computes the same cross-entropy loss and the same gradients with the
same GEMMs, into ``.grad`` buffers that persist across steps, so every optimizer and the mask
multiply work on them unchanged. It is built only after it has reproduced the model's own forward
on real inputs; anything else (dropout, BatchNorm, convolutions, bf16) keeps the autograd path.
:class:`ReluMLPStep` is the trainer's :class:`~prunelab.training.step.Step` around it (batch
gather, optional augmentation, mask multiply, running totals).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import Split, cifar_augment
from prunelab.training.step import MaskPairs, RunningTotals, gather, mask_gradients

__all__ = ["ReluChain", "ReluMLPStep", "relu_chain"]


def relu_chain(model: nn.Module) -> list[nn.Linear] | None:
    """The model's Linear layers in order if it is flatten -> Linear -> ReLU -> ... -> Linear, else None.

    A model class declares the chain by naming its layers in ``relu_mlp``; an ``nn.Sequential`` is
    read directly.
    """
    names = getattr(model, "relu_mlp", None)
    if names is not None:
        layers = [model.get_submodule(n) for n in names]
    elif isinstance(model, nn.Sequential):
        mods = list(model)
        if mods and isinstance(mods[0], nn.Flatten) and mods[0].start_dim == 1 and mods[0].end_dim == -1:
            mods = mods[1:]
        layers, expect_linear = [], True
        for m in mods:
            if expect_linear and isinstance(m, nn.Linear):
                layers.append(m)
            elif not expect_linear and type(m) is nn.ReLU:
                pass
            else:
                return None
            expect_linear = not expect_linear
        if expect_linear:  # ended on a ReLU (or empty): logits must come from a Linear
            return None
    else:
        return None
    if not layers or not all(type(m) is nn.Linear for m in layers):
        return None
    return layers


class ReluChain:
    """``loss, logits = chain(x, y)`` leaves d(mean cross-entropy)/d(parameter) in every ``.grad``."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = layers
        self._buffers: dict[int, tuple[list[torch.Tensor], torch.Tensor]] = {}

    @classmethod
    def build(cls, model: nn.Module, probe: torch.Tensor) -> ReluChain | None:
        """The chain of ``model``, or None where the autograd path must be used.

        ``probe`` is a few real inputs: the chain must give the model's own outputs on them.
        """
        layers = relu_chain(model)
        if layers is None:
            return None
        params = list(model.parameters())
        chain_params = {id(p) for layer in layers for p in layer.parameters()}
        if {id(p) for p in params} != chain_params:
            return None  # the model has parameters the chain would not train
        if any(p.dtype != torch.float32 or not p.requires_grad for p in params):
            return None
        chain = cls(layers)
        with torch.no_grad():
            if not torch.allclose(chain.forward(probe)[-1], model(probe), rtol=1e-5, atol=1e-6):
                return None
        return chain

    def forward(self, x: torch.Tensor, hidden: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Every layer's input (the flattened ``x``, then each ReLU output) followed by the logits."""
        acts = [x.flatten(1)]
        for i, layer in enumerate(self.layers[:-1]):
            acts.append(_linear(layer, acts[-1], None if hidden is None else hidden[i]).relu_())
        acts.append(_linear(self.layers[-1], acts[-1]))
        return acts

    def _scratch(self, batch: int, like: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if batch not in self._buffers:
            hidden = [like.new_empty(batch, layer.out_features) for layer in self.layers[:-1]]
            self._buffers[batch] = (hidden, like.new_full((batch, 1), -1.0))
        return self._buffers[batch]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        hidden, minus_one = self._scratch(batch, x)
        *inputs, logits = self.forward(x, hidden)
        log_p = torch.log_softmax(logits, 1)
        loss = F.nll_loss(log_p, y)
        # d loss / d logits = (softmax - one-hot) / batch
        grad = log_p.exp_().scatter_add_(1, y.unsqueeze(1), minus_one).div_(batch)
        for i in reversed(range(len(self.layers))):
            layer, a = self.layers[i], inputs[i]
            torch.mm(grad.t(), a, out=_grad(layer.weight))
            if layer.bias is not None:
                torch.sum(grad, 0, out=_grad(layer.bias))
            if i:
                grad = torch.ops.aten.threshold_backward(torch.mm(grad, layer.weight), a, 0)
        return loss, logits

    def grad_buffers(self) -> list[torch.Tensor]:
        """Every parameter's gradient buffer (created where missing), in layer order."""
        return [_grad(p) for layer in self.layers for p in layer.parameters()]


class ReluMLPStep:
    """The ``"relu-mlp"`` :class:`~prunelab.training.step.Step`: :class:`ReluChain` on gathered rows.

    Its gradient buffers are created at :meth:`bind` and overwritten by every step (``owns_grads``).
    """

    kind = "relu-mlp"
    owns_grads = True

    def __init__(
        self,
        chain: ReluChain,
        masks: MaskPairs = (),
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if augment and generator is None:
            raise ValueError("augmentation draws from the data-order generator; pass generator=")
        self.chain = chain
        self.masks = list(masks)
        self.augment, self.generator = augment, generator
        self._totals = RunningTotals()
        self._train: Split | None = None

    def bind(self, model: nn.Module, train: Split) -> None:
        layers = relu_chain(model)
        if layers is None or len(layers) != len(self.chain.layers):
            raise ValueError("ReluMLPStep was bound to a model that is not its Linear-ReLU chain")
        if any(a is not b for a, b in zip(layers, self.chain.layers, strict=True)):
            self.chain = ReluChain(layers)
        self.chain.grad_buffers()
        self._train = train

    def run(self, perm: torch.Tensor, start: int, n: int) -> None:
        xb, yb = gather(self._train, perm, start, n)
        if self.augment:
            xb = cifar_augment(xb, self.generator)
        loss, logits = self.chain(xb, yb)
        mask_gradients(self.masks)
        self._totals.add(loss, logits, yb)

    def take_totals(self) -> tuple[float, float, int]:
        return self._totals.take()


def _linear(layer: nn.Linear, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    w = layer.weight.t()
    if layer.bias is None:
        return torch.mm(x, w) if out is None else torch.mm(x, w, out=out)
    return torch.addmm(layer.bias, x, w) if out is None else torch.addmm(layer.bias, x, w, out=out)


def _grad(p: nn.Parameter) -> torch.Tensor:
    """The parameter's gradient buffer, created once and then overwritten by every step."""
    if p.grad is None:
        p.grad = torch.empty_like(p)
    return p.grad
