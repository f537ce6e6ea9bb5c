"""N:M sparsity (``--structure 2:4``): in every group of M consecutive weights along a layer's input,
exactly N are pruned (NVIDIA's 2:4 sparse tensor cores; Mishra et al. 2021; SparseGPT and Wanda
report 2:4 and 4:8).

A Linear's groups run along its input features (each row ``W[o]`` cut into ``in / M`` groups); a
conv's along its input channels at each kernel position (``W[o, :, i, j]``), as NVIDIA's ASP cuts
them. Any unstructured scorer ranks the weights of each group (magnitude, SNIP, Wanda, ...), and
SparseGPT chooses its groups as it goes. The sparsity is N/M whatever ``--rate`` says. A group that
lost weights earlier keeps its M - N best alive ones (so pruning it again changes nothing). A layer
whose input width M does not divide is refused, by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunelab.errors import SpecError
from prunelab.pruning.layers import LayerInfo
from prunelab.pruning.rowgroups import RowGroups
from prunelab.pruning.structure import STRUCTURES

_FORM = re.compile(r"^\s*(\d{1,4})\s*:\s*(\d{1,4})\s*$")


@dataclass(frozen=True)
class NM(RowGroups):
    """N of every M consecutive weights along the input pruned."""

    n: int = 2
    m: int = 4
    reads_rate: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return self.n / self.m

    def check_layer(self, layer: LayerInfo) -> None:
        width = layer.shape[1]
        if width % self.m:
            raise SpecError(
                f"structure {self.name!r} cuts each row of {layer.name} into groups of {self.m} inputs, "
                f"but it has {width} inputs ({width} is not a multiple of {self.m}): exclude it "
                f"(--exclude {layer.name}) or choose an M that divides {width}"
            )

    def group_view(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[1] % self.m:
            raise SpecError(
                f"structure {self.name!r}: an input width of {tensor.shape[1]} is not a multiple of {self.m}"
            )
        return tensor.movedim(1, -1).reshape(-1, self.m)

    def ungroup(self, groups: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        moved = (shape[0], *shape[2:], shape[1])
        return groups.reshape(moved).movedim(-1, 1)

    def counts(self, alive: torch.Tensor, rate: float) -> torch.Tensor:
        return (alive.sum(1) - (self.m - self.n)).clamp_min(0)


def parse(text: str) -> NM | None:
    """``NM`` for "N:M" (1 <= N < M), None for other names; a SpecError for an N:M that cannot be."""
    match = _FORM.match(text)
    if match is None:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise SpecError(
            f"structure {text!r}: N:M prunes N of every M weights, so it needs 1 <= N < M (e.g. 2:4)"
        )
    return NM(None, None, f"{n} of every {m} consecutive input weights pruned ({n}:{m} sparsity)", n, m)


def nm_pattern(keep: torch.Tensor, m: int) -> int | None:
    """The largest N such that every group of ``m`` inputs of a weight (as :class:`NM` cuts it)
    has at least N pruned weights; None when ``m`` does not divide its input width."""
    if keep.dim() < 2 or keep.shape[1] % m:
        return None
    groups = keep.bool().movedim(1, -1).reshape(-1, m)
    return int((~groups).sum(1).min()) if groups.numel() else 0


STRUCTURES.add_form(
    "N:M",
    parse,
    "N of every M consecutive weights along each row's input pruned, e.g. 2:4 (any unstructured method)",
)
