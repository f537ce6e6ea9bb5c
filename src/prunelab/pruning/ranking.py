"""How a :class:`~prunelab.pruning.methods.Method` prunes: its scorer's scores ranked, per pool, with exact counts.

Each pool of competing elements (a layer, all layers, or all layers of one kind; see
:mod:`prunelab.pruning.scope`) loses exactly ``round(rate * alive elements)`` -- Python's ``round``,
as ``torch.nn.utils.prune`` computes its counts -- where an element is a weight, or a unit for
structured layers. Elements are ranked by a stable ascending sort of their scores, so ties go to
the lower flat index (layers in module order). Pruned elements are never candidates again, so a
weight once pruned is never revived, whatever its value now.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunelab.errors import PrunelabError, SpecError
from prunelab.pruning.context import PruneContext
from prunelab.pruning.layers import LayerInfo, describe
from prunelab.pruning.mask import Mask
from prunelab.pruning.prune import pruned_layers
from prunelab.pruning.scope import SCOPES, Scope
from prunelab.pruning.scorers import Scorer
from prunelab.pruning.structure import SIGNED_UNIT_NORMS, STRUCTURES, UNIT_NORMS, Structure, Units

if TYPE_CHECKING:
    from prunelab.pruning.methods import Method


@dataclass(frozen=True)
class _Pool:
    """Layers whose elements are ranked together, each with its structured axis, and their rate."""

    layers: tuple[Units, ...]
    rate: float


def rank(
    method: Method,
    model: nn.Module,
    mask: Mask | None,
    spec,
    context: PruneContext,
    generator: torch.Generator | None,
) -> Mask:
    """One round of ``method``: its scorer's scores reduced to units by the structure, ranked in the
    scope's pools, the lowest of each pool pruned (see the module docstring)."""
    name = spec.method
    scorer = method.configured(spec)
    struct = STRUCTURES.get(spec.structure_name())
    _check_structure(name, method, scorer, spec.structure_name(), struct)
    norm = method.unit_norm
    UNIT_NORMS.get(norm)
    mask = Mask.ones(model) if mask is None else mask
    chosen, rates = pruned_layers(model, mask, spec, context)
    if getattr(struct, "selects", False):  # weights compete within each layer's own groups (N:M, rows)
        return _select_in_groups(model, mask, spec, struct, chosen, rates, scorer, context, generator)
    groups = {layer.param: _conv_groups(model, layer) for layer in chosen}
    if getattr(struct, "needs_trace", False):
        example = context.example
        if example is None and context.groups is None:
            example = _example(model, mask, context)
        units = struct.units(model, chosen, groups, spec.structure_name(), example, context.groups)
    else:
        units = struct.units(model, chosen, groups, spec.structure_name())
    pools = _pools(units, spec.scope, SCOPES.get(spec.scope), rates, spec.rate_per_round())
    if scorer.layerwise and any(len(pool.layers) > 1 for pool in pools):
        raise SpecError(
            f"method {name!r} ranks units within each layer only, so scope must be 'layerwise', got {spec.scope!r}"
        )
    names = [layer.param for layer in chosen]
    scorer.check(model, names, context)

    keep = {n: m.clone() for n, m in mask.items()}
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    _run(model, keep, pools, scorer, norm, names, context, generator, name, shapes)
    return Mask(keep)


def _example(model: nn.Module, mask: Mask, context: PruneContext) -> torch.Tensor | None:
    """One batch to trace the model on: the context's first batch, else one of its input shape, else
    (a prunelab text model) a sequence of random tokens."""
    from prunelab.models.build import example_input
    from prunelab.models.encoder import example_tokens, is_encoder

    generator = torch.Generator().manual_seed(0)
    if context.batches:
        x = context.batches[0][0]
        return x[:1]
    if context.input_shape is not None:
        return example_input(model, context.input_shape, 1, generator=generator)
    if is_encoder(model):
        return example_tokens(model, 16, 1, generator)
    return None


def _select_in_groups(
    model: nn.Module,
    mask: Mask,
    spec,
    struct: Structure,
    chosen: list[LayerInfo],
    rates: Mapping[str, float],
    scorer: Scorer,
    context: PruneContext,
    generator: torch.Generator | None,
) -> Mask:
    """One scoring of the chosen layers, then each layer's groups pruned by the structure."""
    name = spec.structure_name()
    if spec.scope != "layerwise":
        raise SpecError(
            f"structure {name!r} compares weights within each layer's own groups, so scope must be "
            f"'layerwise', got {spec.scope!r}"
        )
    for layer in chosen:
        struct.check_layer(layer)
    names = [layer.param for layer in chosen]
    scorer.check(model, names, context)
    scores = scorer.scores(model, mask, names, context, generator)
    return struct.select(model, mask, chosen, rates, spec.rate_per_round(), scores)


# validation (the spec's own values are valid: what is checked here depends on the model) ---------
def _check_structure(method: str, record: Method, scorer: Scorer, name: str, struct: Structure) -> None:
    structured = [n for n, s in STRUCTURES.items() if s.structured]
    if record.structured_only and not struct.structured:
        raise SpecError(
            f"method {method!r} prunes whole units, so structure must be one of {structured} "
            f"(or left out), got {name!r}; for single weights use method 'magnitude' or 'random'"
        )
    if scorer.structures is not None and name not in scorer.structures:
        raise SpecError(
            f"method {method!r} scores {scorer.unit}, so it needs structure "
            f"{' or '.join(map(repr, scorer.structures))}, got {name!r}"
        )
    signed_units = record.unit_norm in SIGNED_UNIT_NORMS and not struct.mixed
    if scorer.signed and struct.structured and not signed_units:
        whole = [n for n, s in STRUCTURES.items() if s.structured and not s.mixed]
        raise SpecError(
            f"method {method!r} gives signed scores, which have no meaningful norm per unit: "
            f"it needs structure 'unstructured'"
            + (f" or one of {whole}" if record.unit_norm in SIGNED_UNIT_NORMS else "")
            + f", got {name!r}"
        )


def _conv_groups(model: nn.Module, layer: LayerInfo) -> int:
    """The ``groups`` of a conv layer (1 for linear layers and ordinary convs)."""
    module = model.get_submodule(layer.param.rpartition(".")[0])
    return int(getattr(module, "groups", 1)) if layer.kind == "conv" else 1


def _pools(
    units: list[Units],
    scope: str,
    scope_key: Scope,
    rates: Mapping[str, float],
    fraction: float,
) -> list[_Pool]:
    """Group layers' units by scope; a layer with its own rate forms its own pool."""
    groups: dict[Hashable, list[Units]] = {}
    pool_rate: dict[Hashable, float] = {}
    for member in units:
        layer = member.layer
        key = ("own rate", layer.param) if layer.param in rates else ("scope", scope_key(layer), member.kind)
        groups.setdefault(key, []).append(member)
        pool_rate[key] = rates.get(layer.param, fraction)
    for members in groups.values():
        if len({m.axis is None for m in members}) > 1:
            raise SpecError(
                f"scope {scope!r} would rank whole units of some layers against single weights of others "
                f"({describe([m.layer for m in members])}); with a hybrid structure use scope "
                "'layerwise' or 'by-type'"
            )
    return [_Pool(tuple(members), pool_rate[key]) for key, members in groups.items()]


# selection ------------------------------------------------------------------------------------
def _drop_lowest(scores: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """``alive`` minus its ``count`` lowest-scored elements; ties go to the lower index.

    Same result as a stable ascending sort, in linear time (a selection, not a sort): everything
    below the count-th smallest score goes, then the first of the elements equal to it.
    """
    index = alive.nonzero().squeeze(1)
    values = scores[index]
    kth = values.kthvalue(count).values
    drop = values < kth
    ties = (values == kth).nonzero().squeeze(1)
    drop[ties[: count - int(drop.sum())]] = True
    keep = alive.clone()
    keep[index[drop]] = False
    return keep


def _alive(pool: _Pool, keep: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Alive flags of the pool's elements (a unit is alive while any of its weights is)."""
    return torch.cat([m.alive(keep) for m in pool.layers])


def _protected(pool: _Pool, alive: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Flags of the elements kept whatever their score: each member's ``min_keep`` best alive ones."""
    flags = torch.cat([m.protected() for m in pool.layers]).to(alive.device)
    offset = 0
    for m in pool.layers:
        if m.min_keep:
            part = values[offset : offset + m.count].masked_fill(~alive[offset : offset + m.count], -math.inf)
            best = part.argsort(descending=True, stable=True)[: m.min_keep]
            flags[offset + best[alive[offset + best]]] = True
        offset += m.count
    return flags


def _element_scores(
    pool: _Pool,
    keep: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    norm: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Scores of the pool's elements in float64: the weight's own, or its unit's norm."""
    values = [m.scores(keep, scores, norm, generator) for m in pool.layers]
    device = values[0].device
    return torch.cat([v.to(device) for v in values])


def _run(
    model: nn.Module,
    keep: dict[str, torch.Tensor],
    pools: list[_Pool],
    scorer: Scorer,
    norm: str,
    names: list[str],
    context: PruneContext,
    generator: torch.Generator | None,
    method: str,
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Prune ``keep`` in place; iterative scorers approach each pool's goal exponentially."""
    start = [int(_alive(pool, keep).sum()) for pool in pools]
    goal = [round(pool.rate * n) for pool, n in zip(pools, start, strict=True)]
    removed = [0] * len(pools)
    short = [False] * len(pools)
    rounds = scorer.rounds(context)
    for k in range(1, rounds + 1):
        targets = [
            g if k == rounds else min(g, round(n * (1.0 - (1.0 - pool.rate) ** (k / rounds))))
            for pool, n, g in zip(pools, start, goal, strict=True)
        ]
        due = [t - r for t, r in zip(targets, removed, strict=True)]
        if not any(due):
            continue
        if scorer.calibration is not None:  # a layer without inputs cannot be reconstructed or selected from
            for pool, d in zip(pools, due, strict=True):
                if d and d >= int(_alive(pool, keep).sum()):
                    layer = pool.layers[0].layer
                    raise SpecError(
                        f"method {method!r} would remove every input channel of {layer.name} "
                        f"({d} of {int(_alive(pool, keep).sum())} left): lower the rate or exclude the layer"
                    )
        if scorer.wants_counts:  # each pool is one layer (checked): its count this round
            counts = {pool.layers[0].layer.param: d for pool, d in zip(pools, due, strict=True)}
            context = dataclasses.replace(context, counts=counts)
        scores = scorer.scores(model, Mask(keep), names, context, generator)
        for i, pool in enumerate(pools):
            if due[i] == 0:
                continue
            alive, values = _alive(pool, keep), _element_scores(pool, keep, scores, norm, generator)
            if torch.isnan(values[alive]).any():
                raise PrunelabError(
                    f"method {method!r} gave NaN scores: the model's weights or data hold NaN/inf"
                )
            protected = _protected(pool, alive, values)
            count = min(due[i], int((alive & ~protected).sum()))
            if count < due[i]:
                short[i] = True
            if count:
                survivors = _drop_lowest(values, alive & ~protected, count) | protected
                offset = 0
                for m in pool.layers:
                    m.apply(keep, survivors[offset : offset + m.count], shapes)
                    offset += m.count
            removed[i] += due[i]
    for pool, capped in zip(pools, short, strict=True):
        if capped:
            warnings.warn(
                f"every group keeps at least one unit, so fewer were pruned than the rate asks among "
                f"{describe([m.layer for m in pool.layers])[:200]}",
                stacklevel=3,
            )
