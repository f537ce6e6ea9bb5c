"""Random pruning with predefined layer densities (Reddy, Vaddiraju & Datta): uniform, ERK, ER and SNIP-ratio.

A distribution turns an overall density into one density per layer; :func:`random_mask` then keeps
exactly ``round(density * size)`` random weights per layer. ERK and ER follow RigL (Evci et al.
2020): density_l = eps * raw_l with raw_l = sum(shape) / prod(shape) for ERK and
(out + in) / (out * in) for ER (kernel ignored), eps solved so the kept total matches; a layer whose
density would exceed 1 is made dense and eps solved again over the rest, until none does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.context import PruneContext
from prunelab.pruning.layers import LayerInfo, select_layers
from prunelab.pruning.mask import Mask
from prunelab.pruning.prune import prune
from prunelab.registry import Registry

Distribution = Callable[[nn.Module, list[LayerInfo], float, "PruneContext | None"], dict[str, float]]
DISTRIBUTIONS: Registry[Distribution] = Registry("layer-density distribution")


def _check_density(density: object) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise SpecError(f"density must be in (0, 1] (the fraction of weights kept), got {density!r}")
    return float(density)


def solve_proportional(
    layers: Sequence[LayerInfo], raw: dict[str, float], density: float
) -> dict[str, float]:
    """Densities eps * raw[l] with sum(density_l * size_l) = density * total, capped at 1 (RigL)."""
    total = sum(layer.numel for layer in layers)
    dense: set[str] = set()
    while True:
        sparse = [layer for layer in layers if layer.param not in dense]
        if not sparse:
            break
        budget = density * total - sum(layer.numel for layer in layers if layer.param in dense)
        eps = budget / sum(raw[layer.param] * layer.numel for layer in sparse)
        top = max(raw[layer.param] for layer in sparse)
        if eps * top <= 1:
            break
        dense |= {layer.param for layer in sparse if raw[layer.param] == top}
    return {layer.param: 1.0 if layer.param in dense else eps * raw[layer.param] for layer in layers}


@DISTRIBUTIONS.register("uniform")
def uniform(
    model: nn.Module, layers: list[LayerInfo], density: float, context: PruneContext | None
) -> dict[str, float]:
    """Every layer at the same density."""
    return {layer.param: density for layer in layers}


@DISTRIBUTIONS.register("erk")
def erk(
    model: nn.Module, layers: list[LayerInfo], density: float, context: PruneContext | None
) -> dict[str, float]:
    """Erdős–Rényi-Kernel: raw_l = sum(shape) / prod(shape), e.g. (out+in+kh+kw)/(out*in*kh*kw)."""
    raw = {layer.param: sum(layer.shape) / layer.numel for layer in layers}
    return solve_proportional(layers, raw, density)


@DISTRIBUTIONS.register("er")
def er(
    model: nn.Module, layers: list[LayerInfo], density: float, context: PruneContext | None
) -> dict[str, float]:
    """Erdős–Rényi: raw_l = (out + in) / (out * in), the kernel ignored (RigL's non-kernel variant)."""
    raw = {
        layer.param: (layer.shape[0] + layer.shape[1]) / (layer.shape[0] * layer.shape[1]) for layer in layers
    }
    return solve_proportional(layers, raw, density)


@DISTRIBUTIONS.register("snip-ratio")
def snip_ratio(
    model: nn.Module, layers: list[LayerInfo], density: float, context: PruneContext | None
) -> dict[str, float]:
    """The layer densities of a global one-shot SNIP mask (its positions are discarded)."""
    start = Mask({layer.param: torch.ones(layer.shape, dtype=torch.bool) for layer in layers})
    mask = prune(model, start, fraction=1.0 - density, method="snip", scope="global", context=context)
    return {layer.param: float(mask[layer.param].float().mean()) for layer in layers}


def layer_densities(
    model: nn.Module,
    density: float,
    distribution: str = "erk",
    *,
    context: PruneContext | None = None,
    layers: str = "all",
    exclude: Sequence[str] = (),
) -> dict[str, float]:
    """Density per prunable weight (keyed like a Mask, ``"fc1.weight"``) for an overall ``density``.

    The overall density is over the selected layers; layers left out by ``layers``/``exclude`` are
    not in the result (they stay dense in :func:`random_mask`).
    """
    density = _check_density(density)
    dist = DISTRIBUTIONS.get(distribution)
    chosen = select_layers(model, layers, exclude)
    if density == 1:
        return {layer.param: 1.0 for layer in chosen}
    return dist(model, chosen, density, context)


def random_mask(
    model: nn.Module,
    density: float,
    distribution: str = "erk",
    generator: torch.Generator | None = None,
    context: PruneContext | None = None,
    *,
    layers: str = "all",
    exclude: Sequence[str] = (),
) -> Mask:
    """Random positions with exactly ``round(density_l * size_l)`` kept weights in each layer."""
    densities = layer_densities(model, density, distribution, context=context, layers=layers, exclude=exclude)
    masks = dict(Mask.ones(model).items())
    for name, d in densities.items():
        size = masks[name].numel()
        kept = torch.randperm(size, generator=generator)[: round(d * size)]
        flat = torch.zeros(size, dtype=torch.bool)
        flat[kept] = True
        masks[name] = flat.reshape(masks[name].shape).to(masks[name].device)
    return Mask(masks)
