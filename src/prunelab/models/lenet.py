"""LeNet models of the lottery-ticket and pruning-comparison papers.

``lenet-300-100`` is the fully-connected MNIST net of Frankle & Carbin (2019); its output layer is
pruned at half the rate of the others, hence ``output_layer``. ``lenet5`` is the small conv net of
Paganini & Forde (2020, Fig. 5: 3x3 kernels, 6 and 16 channels, ~60k parameters), which is
the LeNet of PyTorch's pruning tutorial.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models._shapes import conv_out, pool_out
from prunelab.models.registry import InputShape, register_model


class LeNet300100(nn.Module):
    """Flatten -> 300 -> 100 -> classes, ReLU; 266,610 parameters for 1x28x28 and 10 classes."""

    output_layer: str = "fc3"
    relu_mlp: tuple[str, ...] = ("fc1", "fc2", "fc3")  # lets the trainer skip autograd (training.relu_mlp)

    def __init__(self, in_features: int, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """conv3x3(6)-pool-conv3x3(16)-pool-120-84-classes, unpadded convs.

    Without padding a 28x28 input shrinks 28->26->13->11->5, so fc1 sees 16*5*5 = 400 features and
    the model has 60,074 parameters (1x28x28, 10 classes): 60 + 880 + 48,120 + 10,164 + 850,
    matching the ~60k of Paganini & Forde's Table 1. A 3x32x32 input gives 81,302.
    """

    output_layer: str = "fc3"

    def __init__(self, input_shape: InputShape, num_classes: int = 10) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        h, w = (pool_out(conv_out(pool_out(conv_out(s, 3)), 3)) for s in (height, width))
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model("lenet-300-100", "lenet", "glorot-normal", "fully-connected 300-100 (Frankle & Carbin 2019)")
def lenet_300_100(num_classes: int, input_shape: InputShape) -> LeNet300100:
    return LeNet300100(math.prod(input_shape), num_classes)


@register_model(
    "lenet5",
    "lenet",
    "glorot-normal",
    "conv 6-16 (3x3) + FC 120-84 (Paganini & Forde 2020, ~60k params)",
    min_size=10,
)
def lenet5(num_classes: int, input_shape: InputShape) -> LeNet5:
    return LeNet5(input_shape, num_classes)
