"""Coupled groups: what one trace of a model says can shrink together, and how.

A :class:`Group` is a set of tensor dimensions (its :class:`Member` s: a producer's rows, a
BatchNorm's scale, the consumers' input columns, a class token, an attention projection's head
rows...) that lose positions together; its *units* are what goes at once (a channel, an attention
head, one group of a grouped conv, one GroupNorm group). Removing a unit from every member is
exact by construction: the masked model (every member's positions of the unit zeroed, LayerNorms
normalising over the kept channels, see :mod:`prunelab.pruning.norms`) computes what the
compacted model (the positions gone) computes.

:func:`discover` traces the model (:mod:`prunelab.coupling.trace`) in eval and in train mode and
returns the :class:`Groups`; :meth:`Groups.table` is what ``prunelab groups`` prints.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.coupling.lab import ELEMENTS
from prunelab.coupling.labels import Frozen, Labels, Space
from prunelab.coupling.modules import module_rule
from prunelab.coupling.ops import RULES
from prunelab.coupling.trace import AttributePatch, Trace, tensors_in, tracing
from prunelab.errors import PrunelabError

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Member:
    """One dimension of one parameter (or buffer) in a group: ``units[i]`` is the unit position
    ``i`` belongs to, ``channels[i]`` the channel it holds (one label per channel), ``roles`` what
    the positions do (see :class:`prunelab.coupling.labels.Space`)."""

    tensor: str
    dim: int
    units: torch.Tensor
    channels: torch.Tensor
    roles: frozenset[str]
    buffer: bool = False

    @property
    def module(self) -> str:
        return self.tensor.rpartition(".")[0]

    def describe(self) -> str:
        return f"{self.tensor}[dim {self.dim}]"

    def positions(self, unit_flags: torch.Tensor) -> torch.Tensor:
        """Per position of this dimension: the flag of its unit."""
        return unit_flags[self.units.to(unit_flags.device)]

    def expand(self, unit_flags: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """A tensor of ``shape`` holding each position's unit flag along this member's dimension."""
        flags = self.positions(unit_flags)
        view = [1] * len(shape)
        view[self.dim] = shape[self.dim]
        return flags.reshape(view).expand(shape)


@dataclass
class Group:
    """Dimensions that shrink together; ``count`` units, some of them ``frozen`` (kept whole)."""

    index: int
    name: str
    kind: str
    count: int
    members: tuple[Member, ...]
    frozen: dict[int, Frozen] = field(default_factory=dict)

    @property
    def prunable(self) -> bool:
        """Whether some unit can go: a layer writes the group's channels and not every unit is frozen."""
        writes = any("write" in m.roles for m in self.members if not m.buffer)
        return writes and self.count > 1 and len(self.frozen) < self.count

    def free(self) -> torch.Tensor:
        """Per unit: not frozen."""
        flags = torch.ones(self.count, dtype=torch.bool)
        if self.frozen:
            flags[list(self.frozen)] = False
        return flags

    def params(self) -> list[Member]:
        return [m for m in self.members if not m.buffer]

    def mask_entries(
        self, keep: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]
    ) -> dict[str, torch.Tensor]:
        """Per parameter member: its keep pattern for unit flags ``keep`` (True = kept)."""
        out: dict[str, torch.Tensor] = {}
        for m in self.params():
            pattern = m.expand(keep, tuple(shapes[m.tensor]))
            out[m.tensor] = out[m.tensor] & pattern if m.tensor in out else pattern.clone()
        return out

    def layers(self) -> list[str]:
        """The modules the group's parameters belong to, in trace order; ``name:in`` where the
        module reads the group's channels (a consumer's input side)."""
        out: list[str] = []
        for m in self.params():
            name = (m.module or m.tensor) + (":in" if "read" in m.roles else "")
            if name not in out:
                out.append(name)
        return out

    def describe_members(self, limit: int = 6) -> str:
        names = [m.describe() for m in self.members if not m.buffer]
        more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
        return ", ".join(names[:limit]) + more


@dataclass
class Groups:
    """All groups of one model, what froze channels, and the sizes compaction must update."""

    groups: list[Group]
    patches: list[AttributePatch]
    errors: list[str]
    labels: Labels

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def of(self, tensor: str) -> list[Group]:
        return [g for g in self.groups if any(m.tensor == tensor for m in g.members)]

    def group_of(self, tensor: str, dim: int) -> Group | None:
        """The group one dimension of a tensor belongs to, if any."""
        for g in self.groups:
            if any(m.tensor == tensor and m.dim == dim for m in g.members):
                return g
        return None

    def frozen_reasons(self) -> list[tuple[int, str, str]]:
        """(units, reason, where) for every reason that keeps units of a written group whole, most first."""
        reasons: dict[tuple[str, str], int] = {}
        for g in self.groups:
            if not any("write" in m.roles for m in g.params()):
                continue
            for record in g.frozen.values():
                reasons[(record.reason, record.where)] = reasons.get((record.reason, record.where), 0) + 1
        return [(n, reason, where) for (reason, where), n in sorted(reasons.items(), key=lambda kv: -kv[1])]

    def table(self) -> str:
        """One line per prunable group, then what is frozen and why (as ``prunelab groups`` shows it)."""
        lines = []
        for g in self.prunable():
            frozen = f", {len(g.frozen)} frozen" if g.frozen else ""
            lines.append(f"{g.name:<40} {g.kind:<12} {g.count:>6} units{frozen}: {g.describe_members()}")
        reasons = self.frozen_reasons()
        if reasons:
            lines.append("frozen (kept whole):")
            lines += [f"  {n:>6} units: {reason} ({where})" for n, reason, where in reasons]
        return "\n".join(lines)


def discover(
    model: nn.Module, example: torch.Tensor | tuple, *, train: bool = True, whole_groups: Iterable[str] = ()
) -> Groups:
    """The coupled groups of ``model``, traced on ``example`` (one batch it accepts) in eval mode
    and, with ``train``, in train mode too (on a copy: running statistics are not touched).

    A grouped conv with wider groups than it has groups loses the same channels of every group;
    named in ``whole_groups``, it loses whole groups instead (sparse structure selection's unit)."""
    labels = Labels()
    net = copy.deepcopy(model)
    patches, errors = [], []
    inputs = example if isinstance(example, tuple) else (example,)
    modes = [False, True] if train else [False]
    for training in modes:
        net.train(training)
        batch = tuple(_batch(x, 2 if training else 1) for x in inputs)
        trace = Trace(net, labels, RULES, module_rule, whole_groups)
        try:
            with torch.enable_grad(), tracing(trace):
                out = net(*batch)
        except PrunelabError:
            raise
        except Exception as exc:
            if training:  # a model that does not run in train mode (e.g. batch statistics of one value)
                errors.append(f"train-mode trace skipped: {type(exc).__name__}: {exc}")
                continue
            where = (
                f" in layer {trace.stack[-1][0]!r} ({type(trace.stack[-1][1]).__name__})"
                if trace.stack
                else ""
            )
            raise PrunelabError(
                f"{type(model).__name__} fails on the example input {tuple(inputs[0].shape)}{where}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        for t in tensors_in(out):
            lab = trace.lab(t)
            if lab is not None and lab.labelled:
                labels.freeze(lab.all_labels(), "reaches the model output", "the output")
        patches += trace.patches
        errors += trace.errors
    labels.finish()
    return Groups(_build(model, labels), _unique_patches(patches), errors, labels)


def _batch(x, n: int):
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return x
    if x.shape[0] >= n:
        return x[:n]
    return torch.cat([x] * n)[:n]


def _unique_patches(patches: list[AttributePatch]) -> list[AttributePatch]:
    seen, out = set(), []
    for p in patches:
        key = (p.module, p.attribute)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _build(model: nn.Module, labels: Labels) -> list[Group]:
    by_group: dict[int, list[Space]] = {}
    roots = labels.space_uf.find(torch.arange(len(labels.spaces))).tolist() if labels.spaces else []
    for space, root in zip(labels.spaces, roots, strict=True):
        by_group.setdefault(root, []).append(space)
    modules = dict(model.named_modules())
    groups = []
    for spaces in by_group.values():
        roots_of = {s.index: labels.unit.find(s.labels()) for s in spaces}
        roots = sorted({int(r) for v in roots_of.values() for r in v.tolist()})
        index = {r: i for i, r in enumerate(roots)}
        members = []
        frozen: dict[int, Frozen] = {}
        for s in sorted(spaces, key=lambda s: s.index):
            units = torch.tensor([index[int(r)] for r in roots_of[s.index].tolist()], dtype=torch.long)
            channels = labels.chan.find(s.labels())
            if s.dim != ELEMENTS:
                members.append(Member(s.tensor, s.dim, units, channels, frozenset(s.roles), s.buffer))
                continue
            found = _along_one_dim(units.reshape(s.shape), channels.reshape(s.shape))
            if found is None:  # its elements joined channels along several dimensions
                if len(set(units.tolist())) > 1:
                    for u in set(units.tolist()):
                        frozen.setdefault(
                            u, Frozen("a tensor joining channels along several dimensions", s.tensor)
                        )
                continue
            dim, line, chans = found
            members.append(Member(s.tensor, dim, line, chans, frozenset(s.roles | {"elementwise"}), s.buffer))
        for s in spaces:
            at = labels.frozen_at[s.labels()]
            for root, record_index in zip(
                roots_of[s.index][at >= 0].tolist(), at[at >= 0].tolist(), strict=True
            ):
                frozen.setdefault(index[root], labels.records[record_index])
        kinds = labels.kinds(spaces[0])
        if "heads" in kinds or "attention" in kinds:
            kind = "heads"
        elif "conv groups" in kinds:
            kind = "conv groups"
        elif "norm groups" in kinds:
            kind = "norm groups"
        else:
            kind = "channels"
        if members:
            name = _common(members) if kind == "heads" else _name(members, modules)
            groups.append(Group(0, name, kind, len(roots), tuple(members), frozen))
    order = {(s.tensor, s.dim): s.index for s in labels.spaces}
    groups.sort(
        key=lambda g: min(order.get((m.tensor, m.dim), order.get((m.tensor, ELEMENTS), 0)) for m in g.members)
    )
    for i, g in enumerate(groups):
        g.index = i
    return groups


def _along_one_dim(units: torch.Tensor, channels: torch.Tensor):
    """``(dim, units along it, channels along it)`` when ``units`` (one per element) vary along one
    dimension at most; None when they vary along several."""
    varying = [
        d
        for d in range(units.dim())
        if units.shape[d] > 1 and not bool((units == units.narrow(d, 0, 1)).all())
    ]
    if len(varying) > 1:
        return None
    if not varying:
        sizes = [d for d in range(units.dim()) if units.shape[d] > 1]
        if not sizes:
            return None
        varying = sizes[:1]
    d = varying[0]
    line = units.movedim(d, 0).reshape(units.shape[d], -1)[:, 0].clone()
    chans = channels.movedim(d, 0).reshape(units.shape[d], -1)[:, 0].clone()
    return d, line, chans


def _common(members: list[Member]) -> str:
    """The innermost module holding every member (an attention module, for its heads)."""
    paths = [m.module.split(".") if m.module else [] for m in members]
    common = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common) or members[0].module


def _name(members: list[Member], modules: Mapping[str, nn.Module]) -> str:
    """The group's name: the first layer writing its channels, else its first member's module."""
    for m in members:
        if "write" in m.roles and isinstance(modules.get(m.module), LAYER_TYPES):
            return m.module
    for m in members:
        if "write" in m.roles:
            return m.module or m.tensor
    return members[0].module or members[0].tensor
