"""Weight treatments: what each pruned level's training starts from, and how its LR schedule runs.

One :class:`~prunelab.experiments.branches.Branch` subclass per treatment, registered in
:data:`TREATMENTS`; its settings are fields of :class:`~prunelab.experiments.spec.TreatmentSpec`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from prunelab.experiments.branches import Branch, LevelInputs, State, register_branch
from prunelab.pruning import Mask, masked_macs
from prunelab.registry import Registry
from prunelab.seeding import derive_seed
from prunelab.training import TrainConfig
from prunelab.training.config import parse_duration

if TYPE_CHECKING:
    from prunelab.experiments.spec import ExperimentSpec


class Treatment(Branch):
    """A treatment makes each level's ticket."""

    kind = "treatment"
    starts_from_previous: ClassVar[bool] = False
    """Trains on from the previous level's final weights (what ``--reconstruct`` refits)."""


TREATMENTS: Registry[type[Treatment]] = Registry("treatment")


def _register(name: str):
    return register_branch(TREATMENTS, name)


@_register("rewind")
class Rewind(Treatment):
    """Rewind the surviving weights to theta_0, or to step k (late resetting), and train on from there."""

    description = "rewind to init (rewind) or to step k of the dense training (rewind:500it, rewind:1ep)"
    uses = ("rewind_to",)

    def trunk_points(self, spec: ExperimentSpec, iterations_per_epoch: int) -> tuple[int, ...]:
        return (parse_duration(spec.treatment.rewind_to, iterations_per_epoch),)

    def weights(self, inputs: LevelInputs) -> State:
        return inputs.points[self.start_iteration(inputs)]

    def start_iteration(self, inputs: LevelInputs) -> int:
        return parse_duration(inputs.spec.treatment.rewind_to, inputs.iterations_per_epoch)


@_register("finetune")
class Finetune(Treatment):
    """Continue from the trained weights; the schedule restarts, with its own LR and length if given."""

    description = "continue training the previous level's weights, its LR schedule restarted"
    uses = ("finetune_lr", "finetune_epochs")
    starts_from_previous = True

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


@_register("reinit")
class Reinit(Treatment):
    """A fresh random initialisation with the same mask: the lottery-ticket control, as a treatment."""

    description = "new random initialisation, same mask"

    def weights(self, inputs: LevelInputs) -> State:
        return inputs.fresh


@_register("sign")
class Sign(Treatment):
    """Fresh magnitudes with the signs of theta_0 (Zhou et al.: the sign is what matters)."""

    description = "|fresh init| x sign(theta_0)"

    def weights(self, inputs: LevelInputs) -> State:
        return {
            k: inputs.fresh[k].abs() * torch.sign(v) if k in inputs.mask else v
            for k, v in inputs.init.items()
        }


@_register("sigma-sign")
class SigmaSign(Treatment):
    """sigma_l x sign(theta_0): one constant magnitude per layer, the std of its initial weights."""

    description = "std(theta_0 of the layer) x sign(theta_0)"

    def weights(self, inputs: LevelInputs) -> State:
        return {k: v.std() * torch.sign(v) if k in inputs.mask else v for k, v in inputs.init.items()}


@_register("scratch-e")
class ScratchE(Reinit):
    """Liu et al.'s Scratch-E: the pruned architecture from a fresh init, for the same epochs."""

    description = "structured masks: fresh init, same number of epochs"
    requires_structured = True


@_register("scratch-b")
class ScratchB(Reinit):
    """Liu et al.'s Scratch-B: fresh init, trained longer by dense FLOPs / pruned FLOPs (same compute)."""

    description = "structured masks: fresh init, epochs x dense FLOPs / pruned FLOPs"
    requires_structured = True

    def config(self, inputs: LevelInputs) -> TrainConfig:
        train = inputs.spec.train
        total = train.total_iterations(inputs.iterations_per_epoch)
        return train.model_copy(update={"epochs": None, "iterations": round(total * flops_ratio(inputs))})


def flops_ratio(inputs: LevelInputs) -> float:
    """Dense MACs / the level's MACs of one forward pass through the conv and linear layers."""
    spec = inputs.spec
    model = spec.build_model(derive_seed(0, "init"), pretrained=False)
    shape = spec.data_info.input_shape
    return masked_macs(model, Mask.ones(model), shape) / max(1, masked_macs(model, inputs.mask, shape))


def treatment_for(spec: ExperimentSpec) -> Treatment:
    return TREATMENTS.get(spec.treatment.kind)()
