"""Training hyperparameters."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from prunelab.spec import FrozenSpec, registered

_DURATION = re.compile(r"^\s*(\d+)\s*(ep|it)\s*$")


def parse_duration(text: str | int, iterations_per_epoch: int) -> int:
    """'3ep' -> iterations in 3 epochs; '500it' or 500 -> 500 iterations."""
    if isinstance(text, int):
        return text
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. '3ep' (epochs) or '500it' (iterations)")
    value, unit = int(match.group(1)), match.group(2)
    return value * iterations_per_epoch if unit == "ep" else value


def _optimizers():
    from prunelab.training.optim import OPTIMIZERS  # which imports this module

    return OPTIMIZERS


def _schedules():
    from prunelab.training.schedule import SCHEDULES  # which imports this module

    return SCHEDULES


class TrainConfig(FrozenSpec):
    """How one model is trained. Defaults follow the LeNet lottery-ticket setup (Adam 1.2e-3, batch 60)."""

    optimizer: registered(_optimizers) = "adam"
    lr: float = Field(1.2e-3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(60, gt=0)
    epochs: int | None = Field(None, gt=0)
    iterations: int | None = Field(None, gt=0)
    schedule: registered(_schedules) = "constant"
    milestones: tuple[str, ...] = ()
    gamma: float = Field(0.1, gt=0)
    warmup: str = "0it"
    eval_every: str | None = None
    augment: bool | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = False

    @field_validator("milestones", "warmup", "eval_every")
    @classmethod
    def _durations(cls, v):
        for item in (v,) if isinstance(v, str) else v or ():
            parse_duration(item, 1)
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

    def total_iterations(self, iterations_per_epoch: int) -> int:
        if self.iterations is not None:
            return self.iterations
        return (self.epochs or 1) * iterations_per_epoch

    def eval_interval(self, iterations_per_epoch: int) -> int:
        if self.eval_every is None:
            return iterations_per_epoch
        return max(1, parse_duration(self.eval_every, iterations_per_epoch))
