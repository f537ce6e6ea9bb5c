"""Attention-head importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?").

Each head ``h`` of a layer gets a gate ``xi_h`` multiplying its context vector before the layer's
output projection; with every gate at 1 the model is unchanged. A head's importance is
``sum over batches of |dL/dxi_h|``, the loss's sensitivity to masking it, normalised per layer
(divided by the layer's L2 norm over heads), as their reference code does. The gates are applied by a
forward pre-hook on each output projection (its input is the concatenated heads), so nothing of the
model is replaced. The ``head-importance`` scorer and ``prunelab heads`` both use it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import SpecError
from prunelab.models.encoder import EncoderBlock, encoder_blocks
from prunelab.pruning.mask import Mask


def attention_layers(model: nn.Module) -> list[EncoderBlock]:
    """The encoder blocks of a transformers encoder (a prunelab text model or the bare model)."""
    return encoder_blocks(model, "head importance")


def gated_loss(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    gates: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The mean cross-entropy of each batch with the heads' contexts scaled by ``gates`` (layers x heads).

    ``forward`` runs the model (default ``model`` itself; e.g. a ``functional_call`` with masked weights).
    """
    forward = forward or model
    layers = attention_layers(model)
    handles = []
    for i, layer in enumerate(layers):

        def gate(module, args, i=i, heads=layer.heads):
            x = args[0]
            scaled = x.unflatten(-1, (heads, x.shape[-1] // heads)) * gates[i].view(heads, 1)
            return (scaled.flatten(-2), *args[1:])

        handles.append(model.get_submodule(layer.name("output")).register_forward_pre_hook(gate))
    try:
        return [F.cross_entropy(forward(x), y) for x, y in batches]
    finally:
        for h in handles:
            h.remove()


def head_importance(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    normalise: bool = True,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Importance of every head, ``(layers, heads)``: ``sum_b |dL_b/dxi|`` at ``xi = 1`` (eval mode)."""
    layers = attention_layers(model)
    if len({layer.heads for layer in layers}) != 1:
        raise SpecError("head importance needs the same number of heads in every layer")
    was = model.training
    model.eval()
    gates = torch.ones(len(layers), layers[0].heads, dtype=torch.float32, requires_grad=True)
    total = torch.zeros_like(gates)
    try:
        for batch in batches:
            (loss,) = gated_loss(model, [batch], gates, forward)
            (grad,) = torch.autograd.grad(loss, gates)
            total += grad.abs()
    finally:
        model.train(was)
    if normalise:
        total = total / (total.norm(dim=1, keepdim=True) + 1e-20)
    return total.detach()


def _index(value: object, what: str) -> int:
    """An integral index (a Python, NumPy or 0-d tensor integer), else a SpecError naming ``value``:
    a bool is no index (``True`` would mean head 1), nor is a float, a string or a list."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not (
            value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool
        ):
            return int(value.item())
    elif not isinstance(value, bool | np.bool_):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise SpecError(f"{what} {value!r} is not an index: give an integer (not a bool, float or string)")


def heads_mask(model: nn.Module, heads: Mapping[int, Iterable[int]], mask: Mask | None = None) -> Mask:
    """A mask pruning the named heads, ``{block index: [head indices]}`` (as Hugging Face's old
    ``prune_heads`` took them): their query/key/value rows and output-projection columns. ``mask``
    (default dense) is copied, not modified. Indices are integers of any kind (Python, NumPy, 0-d
    tensors); an empty list prunes no head. Refuses a block or head that does not exist, an index that
    is not an integer (a bool, a float), and a block asked to lose every head it has left (compaction
    keeps one head per block)."""
    blocks = encoder_blocks(model, "heads_mask")
    mask = Mask.ones(model) if mask is None else mask
    mask.check_fits(model)
    keep = {n: m.clone() for n, m in mask.items()}
    if not isinstance(heads, Mapping):
        raise SpecError(
            f"heads must map block indices to lists of head indices, as {{0: [1, 3]}}, not {heads!r}"
        )
    for key, listed in heads.items():
        index = _index(key, "block")
        if not 0 <= index < len(blocks):
            raise SpecError(f"block {key!r} does not exist: the model has blocks 0..{len(blocks) - 1}")
        if isinstance(listed, str | bytes) or not isinstance(listed, Iterable):
            raise SpecError(
                f"the heads of block {index} must be a list of head indices, as [0, 2], not {listed!r}"
            )
        block = blocks[index]
        chosen = sorted({_index(h, f"block {index}: head") for h in listed})
        if not chosen:
            continue  # an empty list: no head of this block
        bad = [h for h in chosen if not 0 <= h < block.heads]
        if bad:
            raise SpecError(f"block {index} has heads 0..{block.heads - 1}; there is no head {bad[0]!r}")
        parts = block.head_parts()
        anchor, axis, width = parts[-1]
        if anchor not in keep:
            raise SpecError(f"the mask does not cover {anchor}, the output projection of block {index}")
        alive = keep[anchor].movedim(axis, 0).reshape(block.heads, -1).any(1)
        left = alive.clone()
        left[chosen] = False
        if not left.any():
            raise SpecError(
                f"block {index} has {int(alive.sum())} head(s) left ({alive.nonzero().flatten().tolist()}); "
                f"removing {chosen} would leave none (at most {int(alive.sum()) - 1} more may go)"
            )
        for param, axis, width in parts:
            if param in keep:
                rows = (torch.tensor(chosen)[:, None] * width + torch.arange(width)).flatten()
                keep[param].index_fill_(axis, rows, False)
    return Mask(keep)
