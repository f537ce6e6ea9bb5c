"""Training hyperparameters."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from prunelab.spec import FrozenSpec, registered

_DURATION = re.compile(r"^\s*(\d{1,9})\s*(ep|it)\s*$")


def parse_duration(text: str | int, iterations_per_epoch: int) -> int:
    """'3ep' -> iterations in 3 epochs; '500it' or 500 -> 500 iterations (at most 999,999,999 of either)."""
    if isinstance(text, int):
        return text
    match = _DURATION.match(text)
    if not match:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(
            f"{shown!r} is not a duration; write e.g. '3ep' (epochs) or '500it' (iterations), at most 9 digits"
        )
    value, unit = int(match.group(1)), match.group(2)
    return value * iterations_per_epoch if unit == "ep" else value


def _check_duration(text: str) -> str:
    parse_duration(text, 1)
    return text


#: A spec field holding a duration ('3ep', '500it'), checked when the spec is built.
Duration = Annotated[str, AfterValidator(_check_duration)]


def _optimizers():
    from prunelab.training.optim import OPTIMIZERS  # which imports this module

    return OPTIMIZERS


def _schedules():
    from prunelab.training.schedule import SCHEDULES  # which imports this module

    return SCHEDULES


class TrainConfig(FrozenSpec):
    """How one model is trained. Defaults follow the LeNet lottery-ticket setup (Adam 1.2e-3, batch 60)."""

    optimizer: registered(_optimizers) = Field("adam", description="optimizer")
    lr: float = Field(1.2e-3, gt=0, description="learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd with momentum > 0)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    batch_size: int = Field(60, gt=0, le=65_536, description="mini-batch size")
    epochs: int | None = Field(None, gt=0, le=100_000, description="training length in epochs")
    iterations: int | None = Field(
        None,
        ge=0,
        le=10**9,
        description="training length in iterations (instead of epochs; 0: no training, the weights are evaluated)",
    )
    schedule: registered(_schedules) = Field("constant", description="learning-rate schedule")
    milestones: tuple[str, ...] = Field((), description="step-schedule milestones, e.g. 80ep,120ep")
    gamma: float = Field(0.1, gt=0, description="step-schedule factor at each milestone")
    warmup: str = Field("0it", description="linear learning-rate warmup, e.g. 500it or 1ep")
    eval_every: str | None = Field(
        "100it",
        description="validate every 100it (Frankle & Carbin's resolution for the early-stop iteration) or 1ep; "
        "the test set is evaluated on the final and the best-validation weights only",
    )
    augment: bool | None = Field(None, description="random crops and flips (default: the dataset's own)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    bf16: bool = Field(False, description="bf16 autocast (GPU only)")
    plugins: tuple[str, ...] = Field(
        (),
        description="regulariser plug-ins this training runs with, at their default settings, without their "
        "pruning method (slimming's L1 push, structure-selection's scales; see `prunelab methods`)",
    )

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """Registered plug-ins that may join a training alone (they change no mask, no architecture)."""
        from prunelab.training.plugins import PLUGINS, standalone

        alone = standalone()
        for name in v:
            if name not in PLUGINS:
                raise ValueError(PLUGINS.unknown_message(name))
            if name not in alone:
                raise ValueError(
                    f"training plug-in {name!r} joins a training only through its pruning method "
                    f"(--method {name}); plug-ins that join a training alone: {', '.join(alone)}"
                )
        return tuple(dict.fromkeys(v))

    @field_validator("milestones", "warmup", "eval_every")
    @classmethod
    def _durations(cls, v, info):
        for item in (v,) if isinstance(v, str) else v or ():
            if parse_duration(item, 1) == 0 and info.field_name == "eval_every":
                raise ValueError(f"{item!r}: evaluate at least every iteration (1it), or every epoch (1ep)")
        return v

    @model_validator(mode="after")
    def _length(self) -> TrainConfig:
        if self.epochs is not None and self.iterations is not None:
            raise ValueError("give the training length as epochs or as iterations, not both")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError("nesterov applies to the sgd optimizer only")
        return self

    #: fields only one choice reads: (the choosing field, the choices that read them)
    READ_BY: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {
        "momentum": ("optimizer", ("sgd",)),
        "nesterov": ("optimizer", ("sgd",)),
        "milestones": ("schedule", ("step",)),
        "gamma": ("schedule", ("step",)),
    }

    def unused(self) -> list[str]:
        """Settings given that this configuration never reads (e.g. momentum with adam)."""
        out = []
        given = self.model_dump(exclude_defaults=True)
        for name, (field, readers) in self.READ_BY.items():
            if name in given and getattr(self, field) not in readers:
                out.append(
                    f"train.{name} is read only with {field} {' or '.join(readers)}, not {getattr(self, field)}"
                )
        return out

    def plugin_hooks(self) -> list:
        """Fresh plug-ins (they hold state) of :attr:`plugins`, at their default settings."""
        from prunelab.training.plugins import PLUGINS

        return [PLUGINS.get(name)() for name in self.plugins]

    def total_iterations(self, iterations_per_epoch: int) -> int:
        if self.iterations is not None:
            return self.iterations
        return (self.epochs or 1) * iterations_per_epoch

    def eval_interval(self, iterations_per_epoch: int) -> int:
        """Iterations between evaluations: ``eval_every``, or one epoch where it is None."""
        if self.eval_every is None:
            return iterations_per_epoch
        return max(1, parse_duration(self.eval_every, iterations_per_epoch))
