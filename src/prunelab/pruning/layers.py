"""Which layers a pruning call touches: prunable layers, their kind, filters and user-typed names.

Layers are named as users see them in ``print(model)`` (``"fc3"``, ``"features.conv1"``); the
parameter name (``"fc3.weight"``) is accepted too. A misspelt name is refused with the valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.mask import prunable_names
from prunelab.registry import Registry


@dataclass(frozen=True)
class LayerInfo:
    """One prunable weight: its layer name, parameter name, kind ("conv"/"linear") and shape."""

    name: str
    param: str
    kind: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


LayerFilter = Callable[[LayerInfo], bool]
LAYER_FILTERS: Registry[LayerFilter] = Registry("layer filter")
LAYER_FILTERS.add("all", lambda layer: True, "every conv and linear layer")
LAYER_FILTERS.add("fc-only", lambda layer: layer.kind == "linear", "linear layers only")
LAYER_FILTERS.add("conv-only", lambda layer: layer.kind == "conv", "conv layers only")


def prunable_layers(model: nn.Module) -> list[LayerInfo]:
    """Conv and linear weights of ``model`` in module order (the order ties are broken in)."""
    params = dict(model.named_parameters())
    layers = []
    for param in prunable_names(model):
        module_name = param.rpartition(".")[0]
        module = model.get_submodule(module_name)
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        layers.append(LayerInfo(module_name or param, param, kind, tuple(params[param].shape)))
    return layers


def describe(layers: Sequence[LayerInfo]) -> str:
    """``fc1 (linear), conv1 (conv)``: what error messages list as the accepted layer names."""
    return ", ".join(f"{layer.name} ({layer.kind})" for layer in layers) or "(none)"


def resolve_layer(name: str, layers: Sequence[LayerInfo], what: str = "layer") -> LayerInfo:
    """The layer called ``name`` (layer or parameter name), else a SpecError listing valid names."""
    for layer in layers:
        if name in (layer.name, layer.param):
            return layer
    close = difflib.get_close_matches(str(name), [layer.name for layer in layers], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise SpecError(f"unknown {what} {name!r}.{hint} Prunable layers: {describe(layers)}.")


def selection_identity(layers: str = "all", exclude: Sequence[str] = ()) -> dict[str, Any]:
    """What a layer selection adds to a plug-in's identity: only what differs from every layer."""
    out: dict[str, Any] = {}
    if layers != "all":
        out["layers"] = layers
    if exclude:
        out["exclude"] = list(exclude)
    return out


def select_layers(model: nn.Module, layers: str = "all", exclude: Sequence[str] = ()) -> list[LayerInfo]:
    """Prunable layers passing the ``layers`` filter, minus ``exclude``; refuses an empty selection."""
    if isinstance(exclude, str):
        exclude = (exclude,)
    keep = LAYER_FILTERS.get(layers)
    every = prunable_layers(model)
    excluded = {resolve_layer(name, every, "layer in exclude").param for name in exclude}
    chosen = [layer for layer in every if keep(layer) and layer.param not in excluded]
    if not chosen:
        if not every:
            raise SpecError(
                f"{type(model).__name__} has no prunable layer (no Conv or Linear weight): nothing to prune"
            )
        raise SpecError(
            f"layers={layers!r} with exclude={list(exclude)} leaves no layer to prune; "
            f"prunable layers: {describe(every)}"
        )
    return chosen
