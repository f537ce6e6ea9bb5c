"""CIFAR ResNets: ResNet-20 (He et al. 2016, Sec. 4.2) and the CIFAR variant of ResNet-18.

Where a block changes the channel count or stride, its shortcut is a 1x1 conv + BatchNorm
projection (He et al.'s option B) rather than the parameter-free zero-padding of option A, so every
shortcut is a real, prunable layer and a pruned model stays an ordinary module. This adds 2,752
parameters to ResNet-20 (272,474 on 3x32x32 instead of option A's 269,722). ResNet-18 uses a 3x3
stem without max-pool (as in the lottery-ticket and CIFAR pruning literature), 11.17M parameters.
Global average pooling makes both accept any input size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models.registry import InputShape, register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a residual connection; ``shortcut`` is Identity or conv1x1+BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem conv+BN, stages ``layer1..layerN`` of BasicBlocks, global average pool, ``fc``.

    Stage ``i`` has ``widths[i]`` channels and ``depths[i]`` blocks; every stage after the first
    halves the spatial size in its first block.
    """

    output_layer: str = "fc"

    def __init__(
        self, widths: Sequence[int], depths: Sequence[int], in_channels: int, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        self.num_stages = len(widths)
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True), start=1):
            blocks = []
            for block in range(depth):
                stride = 2 if stage > 1 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet20", "resnet", "kaiming-normal", "CIFAR ResNet-20: 3x3 BasicBlocks, 16/32/64 channels")
def resnet20(num_classes: int, input_shape: InputShape) -> ResNet:
    return ResNet((16, 32, 64), (3, 3, 3), input_shape[0], num_classes)


@register_model(
    "resnet18", "resnet", "kaiming-normal", "ResNet-18, CIFAR variant: 3x3 stem, no max-pool, 64-512 channels"
)
def resnet18(num_classes: int, input_shape: InputShape) -> ResNet:
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), input_shape[0], num_classes)
