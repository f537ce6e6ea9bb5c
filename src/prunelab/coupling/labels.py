"""Channel labels: which positions of which tensors are one channel, and which must go together.

Every position along a dimension of a parameter or buffer that the trace meets gets a *label*
(a positive integer; a tensor dimension's labels are a :class:`Space`). A traced activation
carries labels where its values came from such positions (:mod:`prunelab.coupling.lab`): a conv
output carries its weight's rows along dim 1, a linear output its weight's rows along the last dim.

Two union-finds over labels say what the trace learnt:

* ``chan``: positions that hold *the same channel*: a residual add or an SE product makes the
  channels of its operands one channel, a BatchNorm's scale at position ``c`` acts on channel
  ``c``, a consumer's input column ``c`` reads it.
* ``unit``: positions that must be *pruned together* (``chan`` and more): the input and output
  channels of one group of a grouped conv, the rows of one attention head, the channels of one
  GroupNorm group, the positions a channel shuffle or ``chunk`` aligns.

Two spaces joined by a ``unit`` union are in one *group*: the spaces of a group shrink together.
A label may also be *frozen* (never pruned) with the reason, by an op no rule covers, by the model
output, or by data of unknown origin meeting it. Label 0 is *neutral* (zeros: padding, ``zeros``),
label -1 *unknown* (the model input, values made inside ``forward``): neutral positions go with
any channel, unknown ones freeze the channels they meet.

Both union-finds work on whole tensors of label pairs at once (pointer jumping and a scatter of
the smaller root), so a trace of a ViT-B with its 151k position-embedding entries takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

NEUTRAL = 0
UNKNOWN = -1


class UnionFind:
    """Disjoint sets over the integers ``0 .. size-1``; each set's root is its smallest member."""

    def __init__(self) -> None:
        self.parent = torch.zeros(1, dtype=torch.long)

    def grow(self, size: int) -> None:
        """Room for members ``0 .. size-1`` (capacity doubles: a trace adds thousands of spaces)."""
        have = len(self.parent)
        if size > have:
            self.parent = torch.cat([self.parent, torch.arange(have, max(size, 2 * have))])

    def find(self, x: torch.Tensor) -> torch.Tensor:
        """The roots of ``x`` (a tensor of members), compressing the paths walked."""
        parent = self.parent
        r = parent[x]
        while True:
            up = parent[r]
            if torch.equal(up, r):
                break
            r = up
        parent[x] = r
        return r

    def find_one(self, a: int) -> int:
        return int(self.find(torch.tensor([a]))[0])

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Join ``a[i]`` and ``b[i]`` for every ``i``."""
        a, b = a.reshape(-1), b.reshape(-1)
        while a.numel():
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not bool(differ.any()):
                return
            ra, rb = ra[differ], rb[differ]
            low, high = torch.minimum(ra, rb), torch.maximum(ra, rb)
            self.parent.scatter_reduce_(0, high, low, reduce="amin")
            a, b = a[differ], b[differ]


@dataclass
class Space:
    """One dimension of a parameter or buffer, its positions labelled ``offset + 1 ...``.

    ``dim`` -1 is the tensor's *element space*: one label per element (a parameter used as an
    operand, see :mod:`prunelab.coupling.lab`), ``shape`` its shape.
    """

    index: int
    tensor: str
    dim: int
    size: int
    offset: int
    buffer: bool = False
    shape: tuple[int, ...] | None = None
    roles: set[str] = field(default_factory=set)
    """What the space's positions do to their channel: ``write`` (a producer's rows, a bias, an
    embedding's columns), ``read`` (a consumer's input columns, whose effect leaves the channel),
    ``scale``/``shift`` (per-channel affine: a norm's scale and shift), ``stats`` (a LayerNorm
    reads the channel for its statistics), ``stat`` (a BatchNorm's running statistics)."""

    def labels(self) -> torch.Tensor:
        return torch.arange(self.offset + 1, self.offset + 1 + self.size)


@dataclass(frozen=True)
class Frozen:
    """Why some channels are kept whole: the op (and the module it ran in) that froze them."""

    reason: str
    where: str


class Labels:
    """The spaces, both union-finds and the frozen labels of one model's trace."""

    def __init__(self) -> None:
        self.spaces: list[Space] = []
        self.by_key: dict[tuple[str, int], Space] = {}
        self._owner = torch.tensor([-1])  # label -> its space's index (capacity beyond total)
        self.total = 1
        self.chan = UnionFind()
        self.unit = UnionFind()
        self.space_uf = UnionFind()
        self.records: list[Frozen] = []
        self._record_index: dict[Frozen, int] = {}
        self.frozen_at = torch.full((1,), -1, dtype=torch.long)
        self.tie_kinds: dict[int, set[str]] = {}
        self.size_checks: list[tuple[frozenset[int], torch.Tensor, Frozen]] = []
        self.fixed_checks: list[tuple[torch.Tensor, Frozen]] = []

    # spaces -------------------------------------------------------------------------------------
    def space(self, tensor: str, dim: int, size: int, buffer: bool = False) -> Space:
        """The space of ``tensor``'s dimension ``dim`` (created on first use)."""
        key = (tensor, dim)
        found = self.by_key.get(key)
        if found is not None:
            return found
        space = Space(len(self.spaces), tensor, dim, size, self.total - 1, buffer)
        self.spaces.append(space)
        self.by_key[key] = space
        self.total += size
        have = len(self._owner)
        if self.total > have:  # capacities double: a trace adds thousands of spaces
            room = max(self.total, 2 * have) - have
            self._owner = torch.cat([self._owner, torch.full((room,), -1, dtype=torch.long)])
            self.frozen_at = torch.cat([self.frozen_at, torch.full((room,), -1, dtype=torch.long)])
        self._owner[space.offset + 1 : self.total] = space.index
        for uf in (self.chan, self.unit):
            uf.grow(self.total)
        self.space_uf.grow(len(self.spaces))
        return space

    @property
    def owner(self) -> torch.Tensor:
        """Label -> the index of its space."""
        return self._owner[: self.total]

    # unions ---------------------------------------------------------------------------------------
    def same(self, a: torch.Tensor, b: torch.Tensor, where: str) -> None:
        """Positions ``a[i]`` and ``b[i]`` are one channel (neutral pairs are skipped, an unknown
        one freezes the other)."""
        self._pairs(a, b, where, channel=True, kind="")

    def tie(self, a: torch.Tensor, b: torch.Tensor, where: str, kind: str) -> None:
        """Positions ``a[i]`` and ``b[i]`` are pruned together (``kind`` names why: heads, ...)."""
        self._pairs(a, b, where, channel=False, kind=kind)

    def tie_all(self, labels: torch.Tensor, where: str, kind: str) -> None:
        """All ``labels`` are pruned together."""
        flat = labels.reshape(-1)
        if flat.numel() > 1:
            self._pairs(flat[:1].expand(flat.numel() - 1), flat[1:], where, channel=False, kind=kind)

    def _pairs(self, a: torch.Tensor, b: torch.Tensor, where: str, channel: bool, kind: str) -> None:
        a, b = torch.broadcast_tensors(a.reshape(-1), b.reshape(-1))
        unknown = ((a == UNKNOWN) & (b > 0)) | ((b == UNKNOWN) & (a > 0))
        if bool(unknown.any()):
            self.freeze(
                torch.where(a[unknown] > 0, a[unknown], b[unknown]), "meets data of unknown origin", where
            )
        keep = (a > 0) & (b > 0) & (a != b)
        if not bool(keep.any()):
            return
        a, b = a[keep], b[keep]
        if channel:
            self.chan.union(a, b)
        self.unit.union(a, b)
        owner = self.owner
        n = len(self.spaces)
        for key in torch.unique(owner[a] * n + owner[b]).tolist():  # the pairs of spaces joined
            self._join_spaces(key // n, key % n, kind)

    def _join_spaces(self, sa: int, sb: int, kind: str) -> None:
        ra, rb = self.space_uf.find_one(sa), self.space_uf.find_one(sb)
        if ra != rb:
            self.space_uf.union(torch.tensor([ra]), torch.tensor([rb]))
            merged = self.tie_kinds.pop(ra, set()) | self.tie_kinds.pop(rb, set())
            if merged:
                self.tie_kinds[self.space_uf.find_one(ra)] = merged
        if kind:
            self.tie_kinds.setdefault(self.space_uf.find_one(sa), set()).add(kind)

    def canonical(self, L: torch.Tensor) -> torch.Tensor:
        """``L`` with each label replaced by its channel's root (equal channels, equal labels)."""
        positive = L > 0
        if not bool(positive.any()):
            return L
        out = L.clone()
        out[positive] = self.chan.find(L[positive])
        return out

    # frozen labels ----------------------------------------------------------------------------------
    def freeze(self, labels: torch.Tensor | Iterable[int], reason: str, where: str) -> None:
        """Keep these labels' units whole (the first reason given for a label is kept)."""
        values = (
            labels.reshape(-1)
            if isinstance(labels, torch.Tensor)
            else torch.tensor(list(labels), dtype=torch.long)
        )
        values = values[values > 0]
        if not values.numel():
            return
        record = Frozen(reason, where)
        index = self._record_index.get(record)
        if index is None:
            index = self._record_index[record] = len(self.records)
            self.records.append(record)
        current = self.frozen_at[values]
        self.frozen_at[values] = torch.where(current < 0, index, current)

    def frozen(self, label: int) -> Frozen | None:
        index = int(self.frozen_at[label])
        return self.records[index] if index >= 0 else None

    def check_size(self, origins: frozenset[int], labels: torch.Tensor, reason: str, where: str) -> None:
        """After the trace: ``labels`` (a dimension whose size the code computed from a tensor's
        size) must be in the group of one of ``origins``, else they are frozen."""
        self.size_checks.append((origins, labels.reshape(-1).clone(), Frozen(reason, where)))

    def check_fixed(self, rows: torch.Tensor, reason: str, where: str) -> None:
        """After the trace: ``rows`` (positions along a dimension the code indexes at fixed
        positions, by the labels found at each) must hold the same units at every position --
        the dimension never shrinks -- else their labels are frozen."""
        if bool((rows > 0).any()):
            self.fixed_checks.append((rows.clone(), Frozen(reason, where)))

    def finish(self) -> None:
        """Run the deferred checks (their answer needs every union of the trace)."""
        owner = self.owner
        space_groups = self.space_uf.find(torch.arange(len(self.spaces))) if self.spaces else torch.zeros(0)
        for origins, labels, record in self.size_checks:
            labels = labels[labels > 0]
            if not labels.numel():
                continue
            groups = {self.space_uf.find_one(int(owner[o])) for o in origins if o > 0}
            spaces = self.space_uf.find(owner[labels])
            bad = torch.tensor([int(s) not in groups for s in spaces.tolist()], dtype=torch.bool)
            if bool(bad.any()):  # the code sizes these channels by others: neither may shrink alone
                self.freeze(labels[bad], record.reason, record.where)
                for group in groups:
                    for space in (space_groups == group).nonzero().flatten().tolist():
                        self.freeze(self.spaces[space].labels(), record.reason, record.where)
        self.size_checks.clear()
        for rows, record in self.fixed_checks:
            units = torch.where(rows > 0, self.unit.find(rows.clamp(min=0)), 0)
            sets = {frozenset(row.tolist()) - {0} for row in units}
            if len(sets) > 1:
                self.freeze(rows, record.reason, record.where)
        self.fixed_checks.clear()

    def kinds(self, space: Space) -> set[str]:
        return self.tie_kinds.get(self.space_uf.find_one(space.index), set())
