"""The one check that a model takes a dataset's inputs and gives its outputs, before any training.

The experiment runner calls it on a made-up example before any data is loaded, the trainer on one
training example: a mismatch is one clear error, not a traceback from deep inside torch.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.errors import SpecError


def made_up_example(shape: tuple[int, ...], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` inputs of the data's shape: random images, or padding-only token ids for text."""
    if len(shape) == 1:
        return torch.zeros(n, *shape, dtype=torch.int64)
    return torch.randn(n, *shape, generator=generator)


@torch.no_grad()
def check_accepts(
    model: nn.Module,
    example: torch.Tensor,
    info,
    *,
    who: str = "the model",
    hint: str = "",
    classes_hint: str = "",
    targets: tuple[int, ...] | None = None,
) -> tuple[int, ...]:
    """Run ``example`` (one input of ``info``'s dataset) through ``model`` in eval mode, then give its
    mode back. A model that fails on it, or whose output is not one row of ``info.num_classes``
    logits per example (per target: ``targets``, the shape of one example's targets, when given) is
    a :class:`SpecError` naming ``who``, with ``hint`` (what to change) after it. Returns the output's
    shape after the classes: () for a classifier, (L - 1,) for a language model's next tokens."""
    was = model.training
    model.eval()
    try:
        out = model(example)
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise SpecError(
            f"{who} does not accept {info.name} inputs of shape {tuple(example.shape[1:])} "
            f"({type(exc).__name__}: {message}){hint}"
        ) from None
    finally:
        model.train(was)
    shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
    fits = isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] == info.num_classes
    if fits and targets is not None:
        fits = tuple(out.shape[2:]) == tuple(targets)
    if not fits:
        want = (info.num_classes, *(targets or ()))
        detail = f" (logits {want} per example, one row per token)" if len(want) > 1 else ""
        raise SpecError(
            f"{who} outputs shape {shape} per example but {info.name} has {info.num_classes} "
            f"classes{detail}{classes_hint}"
        )
    return tuple(out.shape[2:])
