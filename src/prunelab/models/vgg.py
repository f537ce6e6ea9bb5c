"""CIFAR-style VGG-11/16/19 with BatchNorm (configs A, D, E of Simonyan & Zisserman).

As in the common CIFAR VGGs (OpenLTH, Liu et al. 2019) the three 4096-wide FC layers are replaced by
a single ``Linear(512, classes)``. Two changes let MNIST's 28x28 through the five pools: pools use
``ceil_mode`` (28->14->7->4->2->1; identical to floor pooling for 32x32, where every size is even)
and an ``AdaptiveAvgPool2d(1)`` before the classifier, so the model takes any input size.
Convs have no bias: the following BatchNorm's shift makes it redundant.

(Paganini & Forde's "VGG11" has 132.9M parameters, i.e. torchvision's ImageNet VGG-11 with its 1000-way
head; that model is far larger than what CIFAR-scale pruning studies use, so it is not mirrored.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.registry import InputShape, register_model

CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    """``features`` (conv1, bn1, relu1, ..., pool1, ...) -> global average pool -> ``classifier``."""

    output_layer: str = "classifier"

    def __init__(self, config: Sequence[int | str], in_channels: int, num_classes: int = 10) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        conv_index = pool_index = 0
        for item in config:
            if item == "M":
                pool_index += 1
                layers[f"pool{pool_index}"] = nn.MaxPool2d(2, ceil_mode=True)
            else:
                conv_index += 1
                out_channels = int(item)
                layers[f"conv{conv_index}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
                layers[f"bn{conv_index}"] = nn.BatchNorm2d(out_channels)
                layers[f"relu{conv_index}"] = nn.ReLU()
                in_channels = out_channels
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model(
    "vgg11", "vgg", "kaiming-normal", "VGG-11 (config A) + BatchNorm, CIFAR-style 512->classes head"
)
def vgg11(num_classes: int, input_shape: InputShape) -> VGG:
    return VGG(CONFIGS["A"], input_shape[0], num_classes)


@register_model(
    "vgg16", "vgg", "kaiming-normal", "VGG-16 (config D) + BatchNorm, CIFAR-style 512->classes head"
)
def vgg16(num_classes: int, input_shape: InputShape) -> VGG:
    return VGG(CONFIGS["D"], input_shape[0], num_classes)


@register_model(
    "vgg19", "vgg", "kaiming-normal", "VGG-19 (config E) + BatchNorm, CIFAR-style 512->classes head"
)
def vgg19(num_classes: int, input_shape: InputShape) -> VGG:
    return VGG(CONFIGS["E"], input_shape[0], num_classes)
