"""Control branches, trained beside every pruned level with the level's own training config.

The same contract as treatments (:class:`~prunelab.experiments.branches.Branch`: start weights,
mask, start iteration); a control also sees where the level's ticket started
(``inputs.ticket``), so that it changes one thing about it and nothing else.
"""

from __future__ import annotations

import torch

from prunelab.experiments.branches import Branch, LevelInputs, State, register_branch
from prunelab.pruning import Mask
from prunelab.registry import Registry
from prunelab.seeding import derive_seed
from prunelab.training import TrainConfig


class Control(Branch):
    """A control: by default, the ticket's start, mask, training config and start iteration."""

    kind = "control"

    def _ticket(self, inputs: LevelInputs):
        if inputs.ticket is None:
            raise ValueError("a control branch needs the ticket's start (LevelInputs.ticket)")
        return inputs.ticket

    def weights(self, inputs: LevelInputs) -> State:
        return self._ticket(inputs).weights

    def mask(self, inputs: LevelInputs) -> Mask:
        return self._ticket(inputs).mask

    def config(self, inputs: LevelInputs) -> TrainConfig:
        return self._ticket(inputs).config

    def start_iteration(self, inputs: LevelInputs) -> int:
        return self._ticket(inputs).iteration


CONTROLS: Registry[type[Control]] = Registry("control")


@register_branch(CONTROLS, "reinit")
class ReinitControl(Control):
    """The ticket's mask with a fresh random initialisation, trained from iteration 0."""

    description = "the ticket's mask, a fresh random initialisation (Frankle & Carbin's control)"

    def weights(self, inputs: LevelInputs) -> State:
        return inputs.fresh

    def start_iteration(self, inputs: LevelInputs) -> int:
        return 0


@register_branch(CONTROLS, "random-mask")
class RandomMaskControl(Control):
    """The ticket's start weights and per-layer densities, with the kept positions drawn at random."""

    description = "the ticket's start and per-layer densities, random positions"

    def mask(self, inputs: LevelInputs) -> Mask:
        g = torch.Generator().manual_seed(derive_seed(inputs.seed, f"random-mask-{inputs.level}"))
        return self._ticket(inputs).mask.shuffled(g)
