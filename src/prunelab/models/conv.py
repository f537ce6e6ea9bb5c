"""Conv-2, Conv-4 and Conv-6 of Frankle & Carbin (2019), scaled-down VGGs for CIFAR-10.

Each stage is two 3x3 convs (padding 1) and a 2x2 max-pool, with 64, 128, 256 channels; then FC
256-256-classes. On 3x32x32, Conv-2 and Conv-4 have the paper's 4.3M and 2.4M parameters; Conv-6
has 2.26M: the paper's table says 1.7M, which its stated layer shapes do not give. The first FC
layer is sized from the input shape, so any input whose height and width survive the pools
(2, 4, 8 pixels) works, MNIST's 28x28 included.

``conv2-bn`` and ``conv4-bn`` put a BatchNorm after every conv (the conv then has no
bias, as in VGG): the channel methods that rank by BatchNorm scale (network slimming, early-bird
tickets) need one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models._shapes import pool_out
from prunelab.models.registry import InputShape, register_model


class ConvNet(nn.Module):
    """Stages of two conv3x3+ReLU then max-pool, then FC 256-256-classes.

    Layers are named conv1..conv2k and fc1..fc3 so parameter names read ``conv3.weight``; with
    ``batchnorm``, ``bn1..bn2k`` follow the convs (conv -> BatchNorm -> ReLU, convs without bias).
    """

    output_layer: str = "fc3"

    def __init__(
        self,
        stage_channels: Sequence[int],
        input_shape: InputShape,
        num_classes: int = 10,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        in_ch, height, width = input_shape
        self.num_convs = 2 * len(stage_channels)
        self.batchnorm = batchnorm
        index = 0
        for out_ch in stage_channels:
            for _ in range(2):
                index += 1
                self.add_module(f"conv{index}", nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    self.add_module(f"bn{index}", nn.BatchNorm2d(out_ch))
                in_ch = out_ch
            height, width = pool_out(height), pool_out(width)
        self.fc1 = nn.Linear(in_ch * height * width, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(1, self.num_convs + 1):
            x = getattr(self, f"conv{index}")(x)
            if self.batchnorm:
                x = getattr(self, f"bn{index}")(x)
            x = F.relu(x)
            if index % 2 == 0:
                x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model(
    "conv2", "conv", "glorot-normal", "Conv-2: 64-64-pool + FC 256-256 (Frankle & Carbin)", min_size=2
)
def conv2(num_classes: int, input_shape: InputShape) -> ConvNet:
    return ConvNet((64,), input_shape, num_classes)


@register_model(
    "conv4", "conv", "glorot-normal", "Conv-4: (64, 128) x2-pool + FC 256-256 (Frankle & Carbin)", min_size=4
)
def conv4(num_classes: int, input_shape: InputShape) -> ConvNet:
    return ConvNet((64, 128), input_shape, num_classes)


@register_model(
    "conv6",
    "conv",
    "glorot-normal",
    "Conv-6: (64, 128, 256) x2-pool + FC 256-256 (Frankle & Carbin)",
    min_size=8,
)
def conv6(num_classes: int, input_shape: InputShape) -> ConvNet:
    return ConvNet((64, 128, 256), input_shape, num_classes)


for _name, _channels, _size in (("conv2", (64,), 2), ("conv4", (64, 128), 4)):

    def _factory(num_classes: int, input_shape: InputShape, channels=_channels) -> ConvNet:
        return ConvNet(channels, input_shape, num_classes, batchnorm=True)

    register_model(
        f"{_name}-bn",
        "conv",
        "glorot-normal",
        f"{_name.capitalize()} with a BatchNorm after every conv (for network slimming, early-bird)",
        min_size=_size,
    )(_factory)
