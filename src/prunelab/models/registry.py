"""The registry of prunelab's own models (the zoo); :mod:`prunelab.models.build` builds any model.

Every factory takes ``(num_classes, input_shape)`` so that a config file naming a model, a dataset
and a seed fully determines the initial weights, which lottery-ticket rewinding depends on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import SpecError
from prunelab.models.init import INITS
from prunelab.registry import Registry

InputShape = tuple[int, int, int]
ModelFactory = Callable[[int, InputShape], nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about a model: how to build it and which inputs it accepts."""

    factory: ModelFactory
    family: str
    default_init: str
    description: str
    min_size: int = 1
    """Smallest height and width the model accepts; below it pooling shrinks the map to nothing."""

    @property
    def supported_input(self) -> str:
        if self.min_size <= 1:
            return "any C x H x W"
        return f"C x H x W with H, W >= {self.min_size}"


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str, family: str, default_init: str, description: str, *, min_size: int = 1
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a factory ``f(num_classes, input_shape) -> nn.Module`` under ``name``.

    The built module must have an ``output_layer`` attribute naming its final ``nn.Linear``.
    """
    if default_init not in INITS:
        raise ValueError(f"model {name!r}: unknown default init {default_init!r}")

    def decorator(factory: ModelFactory) -> ModelFactory:
        MODELS.add(name, ModelEntry(factory, family, default_init, description, min_size))
        return factory

    return decorator


def model_names() -> list[str]:
    """Registered model names, in registration order."""
    return MODELS.names()


def check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def normalise_shape(input_shape: object) -> InputShape:
    """Three positive integers (channels, height, width) for images, or one (tokens) for text."""
    if (
        not isinstance(input_shape, Sequence)
        or len(input_shape) not in (1, 3)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise SpecError(
            "input_shape must be three positive integers (channels, height, width), or one (tokens) for "
            f"text, got {input_shape!r}"
        )
    return tuple(input_shape)  # type: ignore[return-value]


def _fits(entry: ModelEntry, shape: InputShape) -> bool:
    return len(shape) == 3 and min(shape[1:]) >= entry.min_size  # the zoo reads images, not token ids


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements (weights, biases and norm affines)."""
    return sum(p.numel() for p in model.parameters())


def describe_models(
    input_shape: InputShape = (1, 28, 28), num_classes: int = 10
) -> list[tuple[str, str, int | None, str]]:
    """``(name, family, num_params, description)`` per model, for ``prunelab models``.

    Models are built on the meta device (no memory, no RNG draws), so this is fast even for the
    large ones. ``num_params`` is ``None`` for a model that cannot take ``input_shape``.
    """
    num_classes = check_num_classes(num_classes)
    shape = normalise_shape(input_shape)
    rows: list[tuple[str, str, int | None, str]] = []
    for name, entry in MODELS.items():
        num_params = None
        if _fits(entry, shape):
            with torch.device("meta"):
                num_params = count_parameters(entry.factory(num_classes, shape))
        rows.append((name, entry.family, num_params, entry.description))
    return rows
