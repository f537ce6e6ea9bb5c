"""``prune``: one round of pruning by the method a :class:`PruneSpec` names.

Every method prunes through its own :meth:`~prunelab.pruning.methods.PruningMethod.select`: the
methods that rank a scorer's scores share :mod:`prunelab.pruning.ranking` (scorer x structure x
scope, exact counts); those that choose their units themselves (network slimming, SparseGPT) do it
in their own file. Here: the spec from keywords, the inputs each method needs checked before any
work, and which layers a round prunes at what rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.context import NEEDS, PruneContext
from prunelab.pruning.layers import LayerInfo, describe, prunable_layers, resolve_layer, select_layers
from prunelab.pruning.mask import Mask
from prunelab.pruning.schedule import check_rate
from prunelab.spec import build_spec


def prune(
    model: nn.Module,
    mask: Mask | None = None,
    spec=None,
    *,
    context: PruneContext | None = None,
    generator: torch.Generator | None = None,
    example: torch.Tensor | None = None,
    **keywords: Any,
) -> Mask:
    """A new mask pruning ``spec.rate_per_round()`` of the remaining elements of each scope pool.

    ``mask=None`` starts dense; the given mask is not modified and entries outside the selected
    layers are copied unchanged. The spec's ``structure=None`` takes the method's own
    (``unstructured`` for per-weight methods, ``structured-input`` for the ``*-structured`` ones,
    ``hybrid`` for hybrid). ``layer_rates`` gives named layers their own rate, each pruned on its own;
    ``output_rate_factor`` prunes ``model.output_layer`` at ``rate * factor`` (Frankle & Carbin prune
    LeNet-300-100's output layer at half rate). ``context`` holds what the method ``needs``.
    Grouped and depthwise convs lose whole filters or whole input channels as
    :mod:`prunelab.pruning.structure` defines them (a depthwise conv's input channel is its filter).

    Instead of a spec, keywords: ``prune(model, mask, fraction=0.2, method="snip", scope="global",
    synflow={"rounds": 10}, ...)`` (``fraction`` is this call's rate; the rest are PruneSpec fields).
    The coupled structures (``channels``, ``heads``, ...; see :mod:`prunelab.pruning.coupled`)
    trace the model on ``example`` (one batch it accepts), else on one made from ``context``'s
    batches or input shape. Every input is checked before any scoring.
    """
    if spec is None:
        spec = spec_from_keywords(**keywords)
    elif keywords:
        raise TypeError(f"prune() takes a PruneSpec or keywords, not both (got {sorted(keywords)})")
    context = context if context is not None else PruneContext()
    if example is not None:
        context = dataclasses.replace(context, example=example)
    check_needs(spec, context)
    return spec.method_entry().select(model, mask, spec, context, generator)


def spec_from_keywords(*, fraction: float, **values: Any):
    """The :class:`PruneSpec` of ``prune``'s keyword form (one round at rate ``fraction``)."""
    fraction = check_rate("fraction", fraction)
    if values.get("layer_rates") is None:
        values.pop("layer_rates", None)
    if isinstance(values.get("exclude"), str):
        values["exclude"] = (values["exclude"],)
    from prunelab.pruning.spec import PruneSpec

    return build_spec(PruneSpec, rate=fraction, **values)


def pruned_layers(
    model: nn.Module, mask: Mask, spec, context: PruneContext
) -> tuple[list[LayerInfo], dict[str, float]]:
    """The layers a round prunes (selected and in ``mask``) and their own rates by parameter name:
    ``layer_rates`` by name or computed by a strategy (OWL), and the output layer's factor."""
    mask.check_fits(model)
    chosen = [layer for layer in select_layers(model, spec.layers, spec.exclude) if layer.param in mask]
    if not chosen:
        raise SpecError(f"the mask covers none of the selected layers; its entries: {mask.names()[:8]}")
    fraction = spec.rate_per_round()
    strategy = spec.rate_strategy()
    by_name = strategy.rates(model, chosen, fraction, context) if strategy is not None else spec.layer_rates
    return chosen, _layer_rates(model, chosen, fraction, by_name, spec.output_rate_factor)


def check_needs(spec, context: PruneContext) -> None:
    """Refuse, naming what to pass, a context without an input the spec's method or layer-rate rule reads."""
    missing = [need for need in sorted(spec.needs()) if not context.has(need)]
    if missing:
        what = f"method {spec.method!r}" + (
            f" with layer rates {spec.layer_rates!r}" if spec.rate_strategy() else ""
        )
        raise SpecError(f"{what} needs " + "; and ".join(NEEDS[need] for need in missing))


def _layer_rates(
    model: nn.Module,
    chosen: list[LayerInfo],
    fraction: float,
    layer_rates: Mapping[str, float] | None,
    output_rate_factor: float | None,
) -> dict[str, float]:
    """Per-layer rate overrides keyed by parameter name (explicit ``layer_rates`` win)."""
    every = prunable_layers(model)
    selected = {layer.param for layer in chosen}
    rates: dict[str, float] = {}
    for name, rate in (layer_rates or {}).items():
        layer = resolve_layer(name, every, "layer in layer_rates")
        if layer.param not in selected:
            raise SpecError(
                f"layer_rates names {name!r}, which the layer filter or exclude leaves unpruned; "
                f"pruned layers: {describe(chosen)}"
            )
        rates[layer.param] = rate
    if output_rate_factor is not None:
        output = getattr(model, "output_layer", None)
        if not isinstance(output, str):
            raise SpecError(
                f"output_rate_factor needs the model's output_layer attribute, which "
                f"{type(model).__name__} lacks: pass layer_rates={{name: rate}} instead "
                f"(prunable layers: {describe(every)})"
            )
        layer = resolve_layer(output, every, "output_layer")
        if layer.param in selected and layer.param not in rates:
            rates[layer.param] = check_rate(
                f"the output layer's rate (fraction {fraction} x output_rate_factor {output_rate_factor})",
                fraction * output_rate_factor,
            )
    return rates
