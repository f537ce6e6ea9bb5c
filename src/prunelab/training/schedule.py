"""Learning-rate schedules: a multiplier of the base LR for each iteration, with linear warmup."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from prunelab.registry import Registry
from prunelab.training.config import TrainConfig, parse_duration


@dataclass(frozen=True)
class Schedule:
    """Base: ``factor(it)`` in (0, 1] scales the LR at iteration ``it`` (0-based)."""

    total: int
    warmup: int

    def factor(self, it: int) -> float:
        warm = min(1.0, (it + 1) / self.warmup) if self.warmup else 1.0
        return warm * self.shape(it)

    def shape(self, it: int) -> float:
        raise NotImplementedError


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant(Schedule):
    """The base learning rate throughout (after warmup)."""

    def shape(self, it: int) -> float:
        return 1.0


@SCHEDULES.register("step")
@dataclass(frozen=True)
class Step(Schedule):
    """Multiply by ``gamma`` at each milestone (given as '80ep' or '32000it')."""

    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def shape(self, it: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, it)


@SCHEDULES.register("cosine")
@dataclass(frozen=True)
class Cosine(Schedule):
    """Half-cosine decay to zero over the iterations after warmup."""

    def shape(self, it: int) -> float:
        span = max(1, self.total - self.warmup)
        progress = min(1.0, max(0, it - self.warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(cfg: TrainConfig, iterations_per_epoch: int) -> Schedule:
    total = cfg.total_iterations(iterations_per_epoch)
    warmup = parse_duration(cfg.warmup, iterations_per_epoch)
    cls = SCHEDULES.get(cfg.schedule)
    if cls is Step:
        milestones = tuple(sorted(parse_duration(m, iterations_per_epoch) for m in cfg.milestones))
        return Step(total, warmup, milestones, cfg.gamma)
    return cls(total, warmup)
