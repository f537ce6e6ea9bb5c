"""Weight-initialisation schemes, selectable by name.

Lottery-ticket experiments rewind to the initial weights, so the scheme is part of an experiment's
definition: LeNet and Conv-2/4/6 use Glorot (Frankle & Carbin 2019), VGG and ResNet use He
(Kaiming) normal. Every scheme sets normalisation layers to weight 1, bias 0, so schemes differ
only in the conv and linear weights.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from prunelab.registry import Registry

InitFn = Callable[[nn.Module], None]

INITS: Registry[InitFn] = Registry("initialisation")

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _reset_norms(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _weighted_init(weight_init: Callable[..., object], **kwargs: object) -> InitFn:
    """Scheme applying ``weight_init`` to conv/linear weights and zeroing their biases."""

    def apply(model: nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, _WEIGHTED):
                weight_init(module.weight, **kwargs)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    return apply


INITS.add("glorot-normal", _weighted_init(nn.init.xavier_normal_), "Glorot (Xavier) normal")
INITS.add("glorot-uniform", _weighted_init(nn.init.xavier_uniform_), "Glorot (Xavier) uniform")
INITS.add(
    "kaiming-normal",
    _weighted_init(nn.init.kaiming_normal_, mode="fan_in", nonlinearity="relu"),
    "He (Kaiming) normal, fan-in, ReLU gain",
)
INITS.add(
    "kaiming-uniform",
    _weighted_init(nn.init.kaiming_uniform_, mode="fan_in", nonlinearity="relu"),
    "He (Kaiming) uniform, fan-in, ReLU gain",
)


@INITS.register("torch-default")
def _torch_default(model: nn.Module) -> None:
    """Keep the weights PyTorch drew at construction (kaiming-uniform with a=sqrt(5))."""


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise ``model`` in place with the named scheme; returns it for chaining.

    Raises :class:`~prunelab.errors.UnknownNameError` (listing the schemes) for an unknown name.
    """
    init_fn = INITS.get(scheme)
    init_fn(model)
    _reset_norms(model)
    return model
