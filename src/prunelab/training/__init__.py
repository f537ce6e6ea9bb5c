"""Training: masked trainer, its steps and hooks, optimizers, schedules."""

from prunelab.training.callbacks import BestWeights, Checkpoint
from prunelab.training.config import TrainConfig, parse_duration
from prunelab.training.device import resolve_device
from prunelab.training.evaluation import choose_evaluator
from prunelab.training.hooks import TrainHook
from prunelab.training.optim import OPTIMIZERS, build_optimizer
from prunelab.training.schedule import SCHEDULES, build_schedule
from prunelab.training.step import STEP_KINDS, AutogradStep, Step, choose_step
from prunelab.training.trainer import EvalRecord, Trainer, TrainResult, evaluate, train

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "STEP_KINDS",
    "AutogradStep",
    "BestWeights",
    "Checkpoint",
    "EvalRecord",
    "Step",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "build_schedule",
    "choose_evaluator",
    "choose_step",
    "evaluate",
    "parse_duration",
    "resolve_device",
    "train",
]
