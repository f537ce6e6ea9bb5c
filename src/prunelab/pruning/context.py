"""What importance criteria may need besides the model and its mask."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PruneContext:
    """Optional inputs of the criteria; each criterion says which ones it needs.

    ``initial_state``: the weights at initialisation (a ``state_dict``), for Zhou et al.'s
    ``magnitude_increase`` and ``movement``. ``batches``: (x, y) pairs for SNIP and GraSP; kept as a
    tuple, so pass a few batches, not a whole dataset. ``input_shape`` (without the batch dimension)
    lets SynFlow build its all-ones input when no batch is given.
    """

    initial_state: Mapping[str, torch.Tensor] | None = None
    batches: Iterable[Batch] | None = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    input_shape: tuple[int, ...] | None = None
    synflow_rounds: int = 100
    """SynFlow prunes in this many rounds, the density shrinking exponentially (Tanaka et al.: 100)."""
    grasp_temperature: float = 200.0
    """GraSP divides the logits by this before the loss, as Wang et al.'s code does."""

    def __post_init__(self) -> None:
        # A generator or DataLoader iterator would be used up by the first pass (GraSP needs two).
        if self.batches is not None and not isinstance(self.batches, tuple):
            object.__setattr__(self, "batches", tuple(self.batches))
