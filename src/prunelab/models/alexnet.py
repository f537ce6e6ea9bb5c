"""AlexNet for small (CIFAR/MNIST-size) inputs.

Paganini & Forde (2020) train "AlexNet" on MNIST and CIFAR-10 without describing it; its 61.1M parameters
(Table 1) are those of torchvision's ImageNet AlexNet with a 1000-way head, which cannot take
28x28 or 32x32 inputs unresized. We use instead the small-input AlexNet common in CIFAR
lottery-ticket code: conv3x3 stride 2 (64), pool, conv 192, pool, conv 384-256-256, pool, then
dropout-FC 4096-dropout-FC 4096-classes. The first FC layer is sized from the input
(256x2x2 for 32x32: 23.3M parameters; 256x1x1 for 28x28: 20.1M); inputs must be at least 15x15.

Default init is Kaiming normal: eight ReLU layers with no BatchNorm keep their activation scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models._shapes import conv_out, pool_out
from prunelab.models.registry import InputShape, register_model


class AlexNet(nn.Module):
    """Named layers conv1..conv5 and fc1..fc3; dropout (p=0.5) before fc1 and fc2."""

    output_layer: str = "fc3"

    def __init__(self, input_shape: InputShape, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(64, 192, 3, padding=1)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
        h, w = (pool_out(pool_out(pool_out(conv_out(s, 3, 2, 1)))) for s in (height, width))
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(256 * h * w, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.max_pool2d(F.relu(self.conv5(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(self.dropout(x)))
        x = F.relu(self.fc2(self.dropout(x)))
        return self.fc3(x)


@register_model(
    "alexnet",
    "alexnet",
    "kaiming-normal",
    "small-input AlexNet: 5 convs (64-192-384-256-256) + dropout FC 4096-4096",
    min_size=15,
)
def alexnet(num_classes: int, input_shape: InputShape) -> AlexNet:
    return AlexNet(input_shape, num_classes)
