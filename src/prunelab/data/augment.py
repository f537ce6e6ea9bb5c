"""CIFAR-style augmentation (random crop with zero padding, random horizontal flip) on whole batches.

One ``gather`` over the padded batch replaces a Python loop over images, so augmentation costs
about as much as copying the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cifar_augment(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Randomly crop each image of ``x`` (N, C, H, W) from its zero-padded copy and flip half of them.

    Per image it draws an offset in ``0..2*padding`` for rows and columns, then a flip with
    probability 1/2, all from ``generator`` (on the generator's device), so it is reproducible.
    """
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=generator.device)
    flips = torch.rand(n, generator=generator, device=generator.device) < 0.5
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + offsets[:, 1:]  # (N, W)
    index = rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]  # (N, H, W) into the padded image
    flat = padded.reshape(n, c, -1)
    out = flat.gather(2, index.reshape(n, 1, h * w).expand(n, c, h * w))
    return out.reshape(n, c, h, w)
