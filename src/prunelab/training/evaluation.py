"""Evaluation: mean cross-entropy and accuracy of a model on a split, as cheaply as it can be had.

The trainer evaluates the validation split every 100 iterations by default (Frankle & Carbin's
resolution for the early-stop iteration), so evaluation is on the hot path: for LeNet-300-100 a
pass over 5,000 validation images at that rate costs about a third of the training time if done
naively. Hence no autograd at all (``torch.inference_mode``), large chunks, and for Linear-ReLU
chains on a CPU the C forward (:class:`~prunelab.training.native_mlp.NativeMLPEval`), used only after
it reproduced the model's own results; :func:`choose_evaluator` decides once per trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import Dataset, Split
from prunelab.training.native_mlp import NativeMLPEval
from prunelab.training.relu_mlp import relu_chain

__all__ = ["CHAIN_EVAL_CHUNK", "EVAL_BATCH", "Evaluator", "choose_evaluator", "evaluate"]

#: Rows per forward for models in general: bounded so convolutional activations stay modest.
EVAL_BATCH = 1000
#: Rows per forward for Linear-ReLU chains, whose activations are a few hundred floats per row.
CHAIN_EVAL_CHUNK = 2500
#: At most this many logits per forward (a language model has one row of the vocabulary per token).
EVAL_LOGITS = 1 << 25


def _sums(model: nn.Module, split: Split, batch_size: int) -> tuple[float, int]:
    """(summed cross-entropy, correct predictions) of ``model`` in eval mode, restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
            correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
            for i in range(0, len(split), batch_size):
                xb, yb = split.x[i : i + batch_size], split.y[i : i + batch_size]
                out = model(xb).float()
                loss += F.cross_entropy(out, yb, reduction="sum").double()
                correct += (out.argmax(1) == yb).sum()
            return float(loss), int(correct)
    finally:
        model.train(was_training)


def targets(split: Split) -> int:
    """How many predictions ``split`` asks for: one per example, or one per token (a language
    model's next tokens, ``y`` of shape (N, L - 1)); means are over these."""
    return max(1, split.y.numel())


def evaluate(model: nn.Module, split: Split, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` (eval mode, restored afterwards),
    over its predictions (examples, or tokens for a language model)."""
    loss, correct = _sums(model, split, batch_size)
    n = targets(split)
    return loss / n, correct / n


class Evaluator:
    """``loss, acc = evaluator(split)``: :func:`evaluate` through the fastest path checked for the model.

    ``kind`` says which ran ("native": the C forward; "torch": the model's own forward), since the
    two differ in float rounding and that is recorded with the results.
    """

    def __init__(self, model: nn.Module, batch_size: int, native: NativeMLPEval | None = None) -> None:
        self.model, self.batch_size, self.native = model, batch_size, native

    @property
    def kind(self) -> str:
        return "torch" if self.native is None else self.native.kind

    def __call__(self, split: Split) -> tuple[float, float]:
        sums = None if self.native is None else self.native.sums(split)
        if sums is None:  # no C path, or a split it cannot read (on a GPU, say)
            sums = _sums(self.model, split, self.batch_size)
        n = targets(split)
        return sums[0] / n, sums[1] / n


def choose_evaluator(model: nn.Module, data: Dataset) -> Evaluator:
    """The evaluator for ``model`` on ``data``'s validation and test splits.

    A Linear-ReLU chain evaluates in chunks of :data:`CHAIN_EVAL_CHUNK` rows, through the C forward
    where it builds and reproduces the model's logits and summed loss on the first rows of the
    validation split (else of the test split); every other model through its own forward in chunks
    of :data:`EVAL_BATCH` rows, fewer where they would hold more than :data:`EVAL_LOGITS` logits (a
    language model's vocabulary at every token).
    """
    if relu_chain(model) is None:
        per_row = max(1, data.info.num_classes) * max(1, data.test.y[:1].numel())
        return Evaluator(model, max(1, min(EVAL_BATCH, EVAL_LOGITS // per_row)))
    largest = max(len(data.val), len(data.test), 1)
    chunk = min(CHAIN_EVAL_CHUNK, largest)
    probe = data.val if len(data.val) else data.test
    return Evaluator(model, chunk, NativeMLPEval.build(model, probe, chunk))
