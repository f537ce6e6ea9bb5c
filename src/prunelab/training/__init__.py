"""Training: masked trainer, optimizers, schedules."""

from prunelab.training.config import TrainConfig, parse_duration
from prunelab.training.device import resolve_device
from prunelab.training.optim import OPTIMIZERS, build_optimizer
from prunelab.training.schedule import SCHEDULES, build_schedule
from prunelab.training.trainer import EvalRecord, Trainer, TrainResult, evaluate, train

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "EvalRecord",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "build_schedule",
    "evaluate",
    "parse_duration",
    "resolve_device",
    "train",
]
