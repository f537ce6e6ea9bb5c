"""What the pruning methods and their scorers may need besides the model and its mask."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]

#: What a method or scorer may declare in ``needs``, with what to pass when it is missing.
NEEDS: dict[str, str] = {
    "batches": "data: context=PruneContext(batches=[(x, y), ...]) with at least one batch",
    "initial_state": "the weights at initialisation: context=PruneContext(initial_state=state_dict)",
    "input_shape": "the input shape: context=PruneContext(input_shape=(C, H, W))",
}


@dataclass(frozen=True)
class PruneContext:
    """Optional inputs of the pruning methods; each method says which ones it needs.

    ``initial_state``: the weights at initialisation (a ``state_dict``), for Zhou et al.'s
    ``magnitude_increase`` and ``movement``. ``batches``: (x, y) pairs for SNIP and GraSP; kept as a
    tuple, so pass a few batches, not a whole dataset. ``input_shape`` (without the batch dimension)
    lets SynFlow build its all-ones input when no batch is given. ``trial``: the call only checks
    that pruning works (before an experiment trains), so iterative scorers score once. ``notes``:
    a list a method appends to when it departs from its rule (network slimming keeping a channel
    so that no layer is emptied); the experiment runner prints them. ``reports``: what the training
    plug-ins of the dense training reported, by plug-in name (structure selection's block scales).
    ``positions``: output positions sampled per image by the calibrated scorers (ThiNet, LASSO).
    ``counts``: set by :func:`prunelab.prune` for scorers that ask (``wants_counts``): how many
    units each layer loses in this scoring round. ``updates``: a dict a method that also refits the
    kept weights (SparseGPT) fills with the new weights by parameter name, for the caller to start
    from (the model itself is never modified). ``progress``: ``progress(label)`` gives a context
    manager whose value is ``update(done, total)``, for methods that work in long stages (a bar per
    decoder block). ``groups``: the model's coupled groups (:func:`prunelab.coupling.discover`), for
    callers pruning one model many times (sensitivity), spared re-tracing it for each call of a
    coupled structure; ``example``: one batch the model accepts, to trace them on (else one is made
    from ``batches`` or ``input_shape``).
    """

    initial_state: Mapping[str, torch.Tensor] | None = None
    batches: Iterable[Batch] | None = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    input_shape: tuple[int, ...] | None = None
    trial: bool = False
    positions: int = 10
    counts: Mapping[str, int] | None = None
    notes: list[str] | None = None
    reports: Mapping[str, Mapping] | None = None
    updates: dict[str, torch.Tensor] | None = None
    progress: Callable[[str], Any] | None = None
    groups: Any = None
    example: torch.Tensor | None = None

    def note(self, text: str) -> None:
        """Record ``text`` in :attr:`notes` (dropped when no list was given)."""
        if self.notes is not None:
            self.notes.append(text)

    def has(self, need: str) -> bool:
        """Whether the input named ``need`` (a key of :data:`NEEDS`) is present."""
        value = getattr(self, need)
        return bool(value) if need == "batches" else value is not None

    def __post_init__(self) -> None:
        # A generator or DataLoader iterator would be used up by the first pass (GraSP needs two).
        if self.batches is not None and not isinstance(self.batches, tuple):
            object.__setattr__(self, "batches", tuple(self.batches))
