"""The contract of treatments and controls: what one trained branch of a pruning level starts from.

Three choices are decoupled (as in later OpenLTH): the weights the mask is scored on (always the
previous level's final weights here), the weights training restarts from, and where the LR
schedule restarts. A :class:`Branch` answers the last two and may change the mask and the
training config; it also declares the trunk points it needs (iterations of the dense training
whose weights it starts from), so the runner trains exactly those and never matches names.

Treatments (:mod:`~prunelab.experiments.treatments`) make the ticket of each level; controls
(:mod:`~prunelab.experiments.controls`) are trained beside it, and see the ticket's start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch

from prunelab.errors import SpecError
from prunelab.pruning import STRUCTURES, Mask
from prunelab.registry import Registry
from prunelab.training import TrainConfig

if TYPE_CHECKING:
    from prunelab.experiments.spec import ExperimentSpec

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Start:
    """Where one branch's training starts."""

    weights: State
    mask: Mask | None  # None: dense
    config: TrainConfig
    iteration: int


@dataclass(frozen=True)
class LevelInputs:
    """What a branch may draw on when a level starts."""

    spec: ExperimentSpec
    seed: int
    level: int
    mask: Mask  # this level's mask, scored on the previous level's final weights
    init: State  # theta_0
    points: Mapping[int, State]  # the trunk's weights at the iterations the branches asked for (0: theta_0)
    previous: State  # final weights of the previous level
    fresh: State  # a new random initialisation for this level (seeded by replicate and level)
    iterations_per_epoch: int
    ticket: Start | None = None  # for controls: where the level's ticket started


class Branch:
    """Base: start from ``weights`` with ``mask``; train with ``config`` from ``start_iteration``."""

    name: ClassVar[str] = ""  # set by registration
    description: ClassVar[str] = ""
    requires_structured: ClassVar[bool] = False
    """Needs a mask with whole units removed in every layer (a smaller dense network)."""
    uses: ClassVar[tuple[str, ...]] = ()
    """The :class:`~prunelab.experiments.spec.TreatmentSpec` fields it reads (its settings)."""

    def check(self, spec: ExperimentSpec) -> None:
        """Refuse, before any training, a spec this branch cannot apply to."""
        if self.requires_structured:
            name = spec.pruning.structure_name()
            if not STRUCTURES.get(name).fully_structured:
                raise SpecError(
                    f"{self.kind} {self.name!r} trains a smaller dense network from "
                    f"scratch, so it needs a structured mask in every layer; method {spec.pruning.method!r} "
                    f"with structure {name!r} is not. Use e.g. --method l1-structured (structure "
                    "structured-input or structured-output)."
                )

    @property
    def kind(self) -> str:
        return "branch"

    def trunk_points(self, spec: ExperimentSpec, iterations_per_epoch: int) -> tuple[int, ...]:
        """Iterations of the dense training whose weights this branch starts from (0 is theta_0)."""
        return ()

    def weights(self, inputs: LevelInputs) -> State:
        raise NotImplementedError

    def mask(self, inputs: LevelInputs) -> Mask:
        return inputs.mask

    def config(self, inputs: LevelInputs) -> TrainConfig:
        return inputs.spec.train

    def start_iteration(self, inputs: LevelInputs) -> int:
        return 0

    def start(self, inputs: LevelInputs) -> Start:
        return Start(
            self.weights(inputs), self.mask(inputs), self.config(inputs), self.start_iteration(inputs)
        )


B = TypeVar("B", bound=type[Branch])


def register_branch(registry: Registry, name: str) -> Callable[[B], B]:
    """Class decorator: register a branch class under ``name`` (which it then knows as ``name``)."""

    def decorator(cls: B) -> B:
        cls.name = name
        return registry.register(name)(cls)

    return decorator
