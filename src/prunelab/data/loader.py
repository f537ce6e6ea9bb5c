"""Mini-batches drawn by index from tensors already in memory.

A per-sample ``DataLoader`` spends most of its time in Python for datasets this small; one
``index_select`` per batch on the whole tensor is many times faster and exactly reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from prunelab.errors import SpecError

if TYPE_CHECKING:
    from prunelab.data.base import Split

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TensorLoader:
    """Iterate ``(xb, yb)`` batches of a :class:`Split`; shuffling and augmentation follow ``generator``.

    Without shuffling (and augmentation) batches are views of the split: do not modify them in place.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise SpecError(f"batch size must be at least 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.augment = augment
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.split.x, self.split.y
        order = self._order()
        generator = self._augment_generator()
        for i in range(len(self)):
            lo, hi = i * self.batch_size, (i + 1) * self.batch_size
            if order is None:
                xb, yb = x[lo:hi], y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if self.augment is not None:
                xb = self.augment(xb, generator)
            yield xb, yb

    def _order(self) -> torch.Tensor | None:
        """A fresh permutation per epoch, drawn on the CPU so it is the same whatever the device."""
        if not self.shuffle:
            return None
        perm = torch.randperm(len(self.split), generator=self._cpu_generator())
        return perm.to(self.split.x.device)

    def _cpu_generator(self) -> torch.Generator | None:
        g = self.generator
        return g if g is None or g.device.type == "cpu" else _seeded_from(g)

    def _augment_generator(self) -> torch.Generator:
        """Augmentation needs a generator; without one, draw a seed from torch's global RNG."""
        if self.generator is not None:
            return self.generator
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))


def _seeded_from(g: torch.Generator) -> torch.Generator:
    """A CPU generator whose seed is drawn from ``g`` (a generator on another device)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
    return torch.Generator().manual_seed(seed)
