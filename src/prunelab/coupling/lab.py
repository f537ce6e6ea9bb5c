"""The channel labels one traced tensor carries (:class:`Lab`), and the moves every rule shares.

A :class:`Lab` is a label tensor ``L`` beside the real tensor: it has the tensor's number of
dimensions, and along each one either the tensor's size (the labels vary along it) or 1 (they do
not). A conv output ``(N, C, H, W)`` carries ``L`` of shape ``(1, C, 1, 1)``: its weight's rows;
after a heads split ``(B, N, H, D)`` it is ``(1, 1, H, D)``. Values are labels (> 0, see
:mod:`prunelab.coupling.labels`), 0 where the data is neutral (zeros, padding) and -1 where it is
of unknown origin (the model input, anything an op without a rule computed).

A parameter or buffer used as an operand (a class token, a position embedding, a layer scale)
carries one label per element (its *element space*); after the trace, the elements that joined
channels tell along which dimension the tensor shrinks (:func:`prunelab.coupling.group.discover`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prunelab.coupling.labels import NEUTRAL, UNKNOWN, Labels

ELEMENTS = -1
"""The ``dim`` of a tensor's element space."""


@dataclass
class Lab:
    shape: tuple[int, ...]
    L: torch.Tensor

    @property
    def labelled(self) -> bool:
        return bool((self.L > 0).any())

    def varying(self) -> list[int]:
        return [d for d in range(self.L.dim()) if self.L.shape[d] > 1]

    def full(self) -> torch.Tensor:
        return self.L.expand(self.shape)

    def all_labels(self) -> torch.Tensor:
        values = self.L.reshape(-1)
        return torch.unique(values[values > 0])

    @property
    def unknown(self) -> bool:
        return bool((self.L == UNKNOWN).any())


def constant(shape: Sequence[int], value: int) -> Lab:
    shape = tuple(shape)
    return Lab(shape, torch.full((1,) * len(shape), value, dtype=torch.long))


def unknown(shape: Sequence[int]) -> Lab:
    return constant(shape, UNKNOWN)


def neutral(shape: Sequence[int]) -> Lab:
    return constant(shape, NEUTRAL)


def compress(L: torch.Tensor) -> torch.Tensor:
    """``L`` with each dimension it is constant along cut to size 1."""
    for d in range(L.dim()):
        if L.shape[d] > 1 and bool((L.narrow(d, 0, 1) == L).all()):
            L = L.narrow(d, 0, 1)
    return L.contiguous()


def make(shape: Sequence[int], L: torch.Tensor) -> Lab:
    shape = tuple(shape)
    if L.dim() != len(shape):
        L = (
            L.reshape((1,) * (len(shape) - L.dim()) + tuple(L.shape))
            if L.dim() < len(shape)
            else L.reshape(-1)[:1].reshape((1,) * len(shape))
        )
    return Lab(shape, compress(L))


def tensor_lab(labels: Labels, name: str, tensor: torch.Tensor, buffer: bool) -> Lab:
    """A parameter's or buffer's labels as an operand: one per element (its element space)."""
    space = labels.space(name, ELEMENTS, tensor.numel(), buffer)
    space.shape = tuple(tensor.shape)
    return Lab(tuple(tensor.shape), space.labels().reshape(tensor.shape))


def _aligned(lab: Lab, ndim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    shift = ndim - len(lab.shape)
    return lab.L.reshape((1,) * shift + tuple(lab.L.shape)), (1,) * shift + tuple(lab.shape)


def elementwise(labels: Labels, shape: Sequence[int], operands: Sequence[Lab], where: str) -> Lab:
    """Broadcasting ops (``+``, ``*``, ``where``, activations): at each output position, the
    operands' channels are one channel. An operand broadcast along a dimension its partner's
    channels vary along (one channel scaling many) is read by them all: its labels are frozen. A
    channel meeting data of unknown origin along its own dimension is frozen."""
    shape = tuple(shape)
    ndim = len(shape)
    parts = [_aligned(lab, ndim) for lab in operands]
    varies = [{d for d in range(ndim) if L.shape[d] > 1} for L, _ in parts]
    kept: list[torch.Tensor] = []
    for i, (L, real) in enumerate(parts):
        others = set().union(*(varies[j] for j in range(len(parts)) if j != i)) if len(parts) > 1 else set()
        if any(real[d] == 1 and shape[d] > 1 for d in others):
            labels.freeze(L[L > 0], "one channel scales many (broadcast)", where)
            kept.append(torch.zeros_like(L))
            continue
        kept.append(L)
    if len(kept) == 1:
        return Lab(shape, kept[0].clone())
    full = torch.broadcast_tensors(*kept)
    for i, a in enumerate(full):
        if not bool((a > 0).any()):
            continue
        for j, b in enumerate(full):
            if j == i:
                continue
            if j > i:
                both = (a > 0) & (b > 0)
                if bool(both.any()):
                    labels.same(a[both], b[both], where)
            contact = (a > 0) & (b == UNKNOWN)
            if bool(contact.any()) and (not varies[i] or any(parts[j][1][d] > 1 for d in varies[i])):
                labels.freeze(a[contact], "meets data of unknown origin", where)
    stacked = torch.stack(full)
    best = stacked.max(dim=0).values
    out = torch.where(best > 0, best, torch.where((stacked == UNKNOWN).any(0), UNKNOWN, NEUTRAL))
    return Lab(shape, compress(out))


def reduce(
    labels: Labels, lab: Lab, dims: Sequence[int], keepdim: bool, shape: Sequence[int], where: str
) -> Lab:
    """A reduction (mean, sum, softmax, a cumulative sum) over ``dims``: channels whose labels vary
    along a reduced dimension are read by an op without a rule (frozen); other dimensions keep
    their labels."""
    ndim = len(lab.shape)
    reduced = sorted({d % ndim for d in dims}) if ndim else []
    L = lab.L
    mixed = [d for d in reduced if L.shape[d] > 1]
    if mixed:
        labels.freeze(L[L > 0], "reduced across channels (mean, sum, softmax, ...)", where)
        for d in mixed:
            L = L.amin(dim=d, keepdim=True).clamp(max=UNKNOWN)
    if not keepdim and len(shape) < ndim:
        L = L.reshape([L.shape[d] for d in range(ndim) if d not in reduced])
    return make(shape, L)


def along(labels: Labels, lab: Lab, dim: int, where: str) -> torch.Tensor:
    """One label per position of ``dim``, as a layer reading that dimension sees it: labels found
    at one position over the other dimensions are one channel (the layer reads them with one
    weight); a position holding unknown data is -1, one holding only zeros 0."""
    dim = dim % len(lab.shape)
    L = lab.L.movedim(dim, 0)
    rows = L.reshape(L.shape[0], -1)
    size = lab.shape[dim]
    if rows.shape[1] > 1:
        for j in range(1, rows.shape[1]):
            both = (rows[:, 0] > 0) & (rows[:, j] > 0)
            if bool(both.any()):
                labels.same(rows[both, 0], rows[both, j], where)
        line = rows.max(dim=1).values
        unknown_at = (rows == UNKNOWN).any(1)
        if bool((unknown_at & (line > 0)).any()):
            labels.freeze(line[unknown_at & (line > 0)], "meets data of unknown origin", where)
        line = torch.where(line > 0, line, torch.where(unknown_at, UNKNOWN, NEUTRAL))
    else:
        line = rows[:, 0]
    return line.expand(size).clone() if line.numel() == 1 else line.clone()
