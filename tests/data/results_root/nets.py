"""Tiny models of the committed results root (see make_fixture.py): a few kB of weights each."""

from torch import nn


def mlp(num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))


def convbn(num_classes, input_shape):
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


def resnet(num_classes, input_shape):
    from prunelab.models.resnet import ResNet

    return ResNet((4, 8), (1, 1), input_shape[0], num_classes)
