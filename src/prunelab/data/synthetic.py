"""A tiny generated dataset for tests: deterministic, instant, and learnable in a few epochs."""

from __future__ import annotations

import torch

from prunelab.data.base import DatasetInfo, RawData, register_loader
from prunelab.data.builtin import BuiltinLoader

SEED = 1234
CLASSES, TRAIN, TEST = 4, 512, 128
SHAPE = (1, 8, 8)
NOISE = 0.2


@register_loader
class Synthetic(BuiltinLoader):
    info = DatasetInfo(
        name="synthetic",
        input_shape=SHAPE,
        num_classes=CLASSES,
        mean=(0.4998,),  # of the generated training inputs
        std=(0.2521,),
        augment=False,
        default_val_size=64,
        description="generated 1x8x8 inputs in 4 classes (a fixed template per class plus noise); for tests",
        how_to_get="generated in memory; nothing to download",
    )
    origin = "generated in memory"

    def generate(self) -> RawData:
        """A random template in [0.2, 0.8] per class; a sample is its class template plus Gaussian noise."""
        g = torch.Generator().manual_seed(SEED)
        templates = 0.2 + 0.6 * torch.rand((CLASSES, *SHAPE), generator=g)
        x_train, y_train = _samples(templates, TRAIN, g)
        x_test, y_test = _samples(templates, TEST, g)
        return RawData(x_train, y_train, x_test, y_test, self.origin)


def _samples(templates: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples, classes balanced and shuffled, values clipped to [0, 1]."""
    y = (torch.arange(n) % CLASSES)[torch.randperm(n, generator=g)]
    noise = NOISE * torch.randn((n, *SHAPE), generator=g)
    return (templates[y] + noise).clamp_(0.0, 1.0), y
