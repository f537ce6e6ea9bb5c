"""Multiply-accumulates of a masked network's prunable layers: kept weights x output positions."""

from __future__ import annotations

import torch
from torch import nn

from prunelab.pruning.mask import PRUNABLE_TYPES, Mask


@torch.no_grad()
def masked_macs(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> int:
    """MACs of one example through the conv and linear layers, counting only kept weights.

    A weight of a conv layer is used once per output position, of a linear layer once per row of its
    input (each token of a sequence). A layer whose weight is tied to another parameter (GPT-2's
    head) counts its dense weights. This is exact
    for the layers' matmuls (what Scratch-B's training budget is about); elementwise ops are ignored.
    """
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):

            def record(mod, inputs, output, name=name) -> None:
                if isinstance(mod, nn.Linear):
                    positions[name] = output[0].numel() // mod.out_features
                else:
                    positions[name] = output[0, 0].numel() if output.dim() > 2 else 1

            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    total = 0
    for layer, count in positions.items():
        key = f"{layer}.weight" if layer else "weight"
        kept = int(mask[key].sum()) if key in mask else model.get_submodule(layer).weight.numel()
        total += kept * count
    return total
