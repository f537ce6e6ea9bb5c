"""Structured pruning by coupled groups: a unit leaves every layer that writes or reads it.

Structures ``channels``, ``heads``, ``ffn``, ``heads+ffn`` and ``groups`` prune units of the
groups :func:`prunelab.coupling.discover` finds by tracing the model: a channel shared by a
residual add leaves every conv writing the sum, its BatchNorms and every conv reading it; an
attention head leaves the query/key/value rows and the output projection's columns; a hidden
width of a transformer leaves the embeddings, every LayerNorm and every projection. The mask so
chosen zeroes every member of a pruned unit, so the masked model computes what the compacted one
does (:func:`prunelab.compress.compact` removes exactly those units).

A group is pruned when every conv/linear layer it touches (writing or reading its channels) is among
the selected layers (``layers``, ``exclude``): an excluded layer is never changed, not even in its
input columns. Scopes, rates and ``layer_rates`` see each group as its first writing layer (its
name in ``prunelab groups``): ``layerwise`` is one pool per group, ``global`` one over all groups
(of one kind: heads and channels are pooled apart). A unit's score is its unit norm
over the scores of every conv/linear weight in the group (the writers' rows, the readers'
columns), each member's part relative to its mean over the group's units (:data:`NORMALISED`), as
Torch-Pruning's group importance does. Units the trace froze (the
classes of the output layer, channels an op without a rule touches) are never pruned, and every
group keeps at least one unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.coupling import Group, Groups, discover
from prunelab.errors import SpecError
from prunelab.pruning.layers import LayerInfo, describe, prunable_layers
from prunelab.pruning.structure import STRUCTURES, Structure

COUPLING_VERSION = 1
"""Enters the id of experiments pruned by a coupled structure: their results are not those the
per-layer structures of earlier versions gave under the same names (``heads``, ``l1-filter``)."""

#: Per unit norm: (reduce one position's scores and alive flags to a value, combine positions into
#: units: "sum"/"amax"/"amin", finish the per-unit values). The same norms as UNIT_NORMS, for units
#: whose weights lie in several tensors.
Reduction = tuple[
    Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str, Callable[[torch.Tensor], torch.Tensor]
]
NORMALISED = frozenset({"l1", "l2", "linf", "lninf"})
"""Norms whose per-member values are divided by the member's mean before they are combined: a
concatenation's 3x3 conv rows would otherwise outweigh its 1x1 conv rows nine times over, so that
every unit removed would be a 1x1's (Torch-Pruning's mean normaliser). Signed first-order scores
(``abs-sum``) are summed as they are: their sum is the estimated change of the loss."""

GROUP_REDUCTIONS: dict[str, Reduction] = {
    "l1": (lambda v, a: (v.abs() * a).sum(1), "sum", lambda x: x),
    "l2": (lambda v, a: (v.pow(2) * a).sum(1), "sum", torch.sqrt),
    "linf": (lambda v, a: (v.abs() * a).amax(1), "amax", lambda x: x),
    "lninf": (lambda v, a: v.abs().masked_fill(~a, math.inf).amin(1), "amin", lambda x: x),
    "abs-sum": (lambda v, a: (v * a).sum(1), "sum", torch.abs),
}


@dataclass(frozen=True)
class GroupUnits:
    """The units of one coupled group (or of one part of it: ``index``, the units one layer writes
    into a concatenation), as :func:`prunelab.prune` pools and ranks them."""

    layer: LayerInfo
    group: Group
    kind: str
    index: torch.Tensor | None = None
    min_keep: int = 1

    axis = 0

    @property
    def count(self) -> int:
        return self.group.count if self.index is None else len(self.index)

    def _part(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.index is None else values[self.index]

    def scored(self, keep: Mapping[str, torch.Tensor]) -> list:
        return [m for m in self.group.params() if m.tensor in keep and m.tensor.endswith("weight")]

    def alive(self, keep: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per unit: some position of it in a scored weight is still kept, and it is not frozen."""
        flags = torch.zeros(self.group.count, dtype=torch.bool)
        for m in self.scored(keep):
            entry = keep[m.tensor]
            kept = entry.movedim(m.dim, 0).reshape(entry.shape[m.dim], -1).any(1).cpu()
            flags |= torch.zeros(self.group.count, dtype=torch.long).index_add_(0, m.units, kept.long()) > 0
        return self._part(flags & self.group.free())

    def protected(self) -> torch.Tensor:
        return torch.zeros(self.count, dtype=torch.bool)

    def scores(self, keep, scores: Mapping[str, torch.Tensor], norm: str, generator) -> torch.Tensor:
        """Per unit: the norm of its scores over every scored member (float64)."""
        if norm == "random":
            return torch.rand(self.count, generator=generator, dtype=torch.float64)
        reduce, combine, finish = GROUP_REDUCTIONS[norm]
        fill = {"sum": 0.0, "amax": -math.inf, "amin": math.inf}[combine]
        total = torch.full((self.group.count,), fill, dtype=torch.float64)
        for m in self.scored(keep):
            if m.tensor not in scores:
                continue
            values = scores[m.tensor].detach().to("cpu", torch.float64)
            alive = keep[m.tensor].cpu()
            size = values.shape[m.dim]
            rows = alive.movedim(m.dim, 0).reshape(size, -1)
            per = reduce(values.movedim(m.dim, 0).reshape(size, -1), rows)
            if norm in NORMALISED:  # each member relative to its own mean over the positions alive
                mean = per[rows.any(1)].abs().mean() if bool(rows.any()) else per.new_zeros(())
                per = per / mean if float(mean) > 0 else per
            if combine == "sum":
                total.index_add_(0, m.units, per)
            else:
                total.scatter_reduce_(0, m.units, per, reduce=combine)
        return self._part(finish(total))

    def apply(
        self, keep: dict[str, torch.Tensor], survivors: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]
    ) -> None:
        """Prune the units ``survivors`` leaves out from every member (frozen units stay)."""
        if self.index is not None:  # the other parts' units stay as they are
            full = torch.ones(self.group.count, dtype=torch.bool)
            full[self.index] = survivors.cpu()
            survivors = full
        flags = survivors | ~self.group.free()
        for name, pattern in self.group.mask_entries(flags, shapes).items():
            pattern = pattern.to(keep[name].device) if name in keep else pattern
            keep[name] = keep[name] & pattern if name in keep else pattern.clone()


@dataclass(frozen=True)
class CoupledStructure(Structure):
    """Units of the coupled groups of ``kinds`` (see the module docstring)."""

    kinds: tuple[str, ...] = ("channels",)
    needs_trace: bool = True

    @property
    def structured(self) -> bool:
        return True

    @property
    def fully_structured(self) -> bool:
        return True

    @property
    def mixed(self) -> bool:
        return False

    def units(
        self, model, chosen, conv_groups, name, example=None, groups: Groups | None = None
    ) -> list[GroupUnits]:
        if groups is not None:
            return units_of(model, groups, chosen, self.kinds, name)
        if example is None:
            raise SpecError(
                f"structure {name!r} traces the model to find the layers that share channels: give an "
                "example input (prune(..., example=x), or context=PruneContext(input_shape=(C, H, W)))"
            )
        groups = discover(model, example)
        return units_of(model, groups, chosen, self.kinds, name)


def group_kind(group: Group, groups: Groups, modules: Mapping[str, nn.Module]) -> str:
    """``heads``, ``ffn`` (a transformer FFN's neurons: one Linear writes them from a stream and one
    reads them back into the same stream, nothing else touches them) or ``channels``."""
    if group.kind == "heads":
        return "heads"
    params = group.params()
    layers = {m.module for m in params if m.tensor.endswith("weight")}
    linear = all(isinstance(modules.get(n), nn.Linear) for n in layers)
    writes = [m for m in params if "write" in m.roles and m.tensor.endswith("weight")]
    reads = [m for m in params if "read" in m.roles]
    if not (
        linear and len(writes) == 1 and len(reads) == 1 and all(m.roles <= {"read", "write"} for m in params)
    ):
        return "channels"
    source = groups.group_of(writes[0].tensor, 1)
    target = groups.group_of(reads[0].tensor, 0)
    return "ffn" if source is not None and source is target else "channels"


def units_of(
    model: nn.Module, groups: Groups, chosen: Sequence[LayerInfo], kinds: Sequence[str], name: str
) -> list[GroupUnits]:
    """The prunable groups of ``kinds`` all of whose conv/linear layers are among ``chosen``, each
    represented by its first writing layer."""
    modules = dict(model.named_modules())
    by_param = {layer.param: layer for layer in chosen}
    every = {layer.param: layer for layer in prunable_layers(model)}
    out = []
    for group in groups.prunable():
        kind = group_kind(group, groups, modules)
        wanted = kind in kinds or ("channels" in kinds and kind == "ffn" and "ffn" not in kinds)
        if not wanted:
            continue
        layer = _representative(group, every)
        touched = {m.tensor for m in group.params() if m.tensor in every}
        if layer is None or not touched <= set(by_param):
            continue
        parts = _parts(group, every)
        if len(parts) == 1:
            out.append(GroupUnits(layer, group, kind))
        else:  # a concatenation: each layer's share of the group pruned at the rate
            out += [GroupUnits(every[writer], group, kind, index) for writer, index in parts]
    if not out:
        raise SpecError(
            f"structure {name!r} finds no group of {' or '.join(kinds)} to prune among the selected layers "
            f"({describe(chosen)[:300]}); prunelab groups MODEL lists the groups"
        )
    return out


def _parts(group: Group, layers: Mapping[str, LayerInfo]) -> list[tuple[str, torch.Tensor]]:
    """The group's units split by the layers writing them: one part where every unit has the same
    writers (a plain or residual stage), one per layer where they write different units (a
    concatenation: DenseNet, Inception, SqueezeNet's expand convs). Each part is named by its first
    writer."""
    writers = [m for m in group.params() if "write" in m.roles and m.tensor in layers]
    keys = [[] for _ in range(group.count)]
    for i, m in enumerate(writers):
        for u in sorted(set(m.units.tolist())):
            keys[u].append(i)
    by_key: dict[tuple[int, ...], list[int]] = {}
    for u, key in enumerate(keys):
        by_key.setdefault(tuple(key), []).append(u)
    if len(by_key) == 1 or () in by_key:
        return [("", torch.arange(group.count))]
    return [(writers[key[0]].tensor, torch.tensor(units)) for key, units in by_key.items()]


def _representative(group: Group, layers: Mapping[str, LayerInfo]) -> LayerInfo | None:
    """The layer a group stands for: its first conv/linear writer, else its first conv/linear member."""
    for role in ("write", None):
        for m in group.params():
            if m.tensor in layers and (role is None or role in m.roles):
                return layers[m.tensor]
    return None


for _name, _kinds, _what in [
    (
        "channels",
        ("channels",),
        "whole channels of coupled groups: every layer writing or reading one loses it",
    ),
    ("heads", ("heads",), "attention heads: their query/key/value rows and output-projection columns"),
    ("ffn", ("ffn",), "transformer FFN neurons: the first layer's row and the second layer's column"),
    ("heads+ffn", ("heads", "ffn"), "attention heads and FFN neurons, each kind pooled apart"),
    (
        "groups",
        ("channels", "heads"),
        "every coupled group: channels and attention heads, each kind pooled apart",
    ),
]:
    STRUCTURES.add(_name, CoupledStructure(0, 0, _what, _kinds))
