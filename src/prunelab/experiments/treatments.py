"""Weight treatments: what each pruned level's training starts from, and how its LR schedule runs.

Three choices are decoupled (as in later OpenLTH): the weights the mask is scored on (always the
previous level's final weights here), the weights training restarts from (the treatment), and
where the LR schedule restarts (``start_iteration`` and the config it returns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prunelab.errors import SpecError
from prunelab.experiments.spec import ExperimentSpec
from prunelab.pruning import METHODS, STRUCTURES, Mask
from prunelab.registry import Registry
from prunelab.training import TrainConfig
from prunelab.training.config import parse_duration

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LevelInputs:
    """What a treatment may draw on when a level starts."""

    spec: ExperimentSpec
    level: int
    mask: Mask
    init: State  # theta_0
    rewind: State  # weights at the rewind point (theta_0 when rewinding to 0)
    previous: State  # final weights of the previous level
    fresh: State  # a new random initialisation for this level (seeded by replicate and level)
    iterations_per_epoch: int
    flops_ratio: float = 1.0  # dense MACs / pruned MACs of one forward pass


class Treatment:
    """Base: start from ``weights``; train with ``config`` from ``start_iteration``."""

    description: ClassVar[str] = ""
    requires_structured: ClassVar[bool] = False

    def check(self, spec: ExperimentSpec) -> None:
        """Refuse, before any training, a pruning spec this treatment cannot apply to."""
        if self.requires_structured:
            name = spec.pruning.structure or METHODS.get(spec.pruning.method).structure
            if not STRUCTURES.get(name).fully_structured:
                raise SpecError(
                    f"treatment {spec.treatment.kind!r} trains a smaller dense network from scratch, so it "
                    f"needs a structured mask in every layer; method {spec.pruning.method!r} with structure "
                    f"{name!r} is not. Use e.g. --method l1-structured (structure structured-input or "
                    "structured-output)."
                )

    def weights(self, inputs: LevelInputs) -> State:
        raise NotImplementedError

    def config(self, inputs: LevelInputs) -> TrainConfig:
        return inputs.spec.train

    def start_iteration(self, inputs: LevelInputs) -> int:
        return 0


TREATMENTS: Registry[type[Treatment]] = Registry("treatment")


@TREATMENTS.register("rewind")
class Rewind(Treatment):
    """Rewind the surviving weights to theta_0, or to step k (late resetting), and train on from there."""

    description = "rewind to init (rewind) or to step k (rewind:500it, rewind:1ep)"

    def weights(self, inputs: LevelInputs) -> State:
        return inputs.rewind

    def start_iteration(self, inputs: LevelInputs) -> int:
        return parse_duration(inputs.spec.treatment.rewind_to, inputs.iterations_per_epoch)


@TREATMENTS.register("finetune")
class Finetune(Treatment):
    """Continue from the trained weights; the schedule restarts, with its own LR and length if given."""

    description = "continue training the previous level's weights (--finetune-lr, --finetune-epochs)"

    def weights(self, inputs: LevelInputs) -> State:
        return inputs.previous

    def config(self, inputs: LevelInputs) -> TrainConfig:
        t, train = inputs.spec.treatment, inputs.spec.train
        update: dict = {}
        if t.finetune_lr is not None:
            update["lr"] = t.finetune_lr
        if t.finetune_epochs is not None:
            update.update(epochs=t.finetune_epochs, iterations=None)
        return train.model_copy(update=update)


@TREATMENTS.register("reinit")
class Reinit(Treatment):
    """A fresh random initialisation with the same mask: the lottery-ticket control."""

    description = "new random initialisation, same mask"

    def weights(self, inputs: LevelInputs) -> State:
        return inputs.fresh


@TREATMENTS.register("sign")
class Sign(Treatment):
    """Fresh magnitudes with the signs of theta_0 (Zhou et al.: the sign is what matters)."""

    description = "|fresh init| x sign(theta_0)"

    def weights(self, inputs: LevelInputs) -> State:
        return {
            k: inputs.fresh[k].abs() * torch.sign(v) if k in inputs.mask else v
            for k, v in inputs.init.items()
        }


@TREATMENTS.register("sigma-sign")
class SigmaSign(Treatment):
    """sigma_l x sign(theta_0): one constant magnitude per layer, the std of its initial weights."""

    description = "std(theta_0 of the layer) x sign(theta_0)"

    def weights(self, inputs: LevelInputs) -> State:
        return {k: v.std() * torch.sign(v) if k in inputs.mask else v for k, v in inputs.init.items()}


@TREATMENTS.register("scratch-e")
class ScratchE(Reinit):
    """Liu et al.'s Scratch-E: the pruned architecture from a fresh init, for the same epochs."""

    description = "structured masks: fresh init, same number of epochs"
    requires_structured = True


@TREATMENTS.register("scratch-b")
class ScratchB(Reinit):
    """Liu et al.'s Scratch-B: fresh init, trained longer by dense FLOPs / pruned FLOPs (same compute)."""

    description = "structured masks: fresh init, epochs x dense FLOPs / pruned FLOPs"
    requires_structured = True

    def config(self, inputs: LevelInputs) -> TrainConfig:
        train = inputs.spec.train
        total = train.total_iterations(inputs.iterations_per_epoch)
        return train.model_copy(update={"epochs": None, "iterations": round(total * inputs.flops_ratio)})


def treatment_for(spec: ExperimentSpec) -> Treatment:
    return TREATMENTS.get(spec.treatment.kind)()
