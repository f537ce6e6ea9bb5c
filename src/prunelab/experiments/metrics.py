"""What ``metrics.json`` holds: :class:`LevelMetrics`, the typed record of one trained level, and its formats.

Format 1 is the untyped dict of prunelab <= 0.1 (no ``format`` key, no environment); format 2 is
:class:`LevelMetrics`, with test metrics only where the test set was evaluated. Both are read; a
newer format is refused naming the file, and a damaged one is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.errors import CheckpointError
from prunelab.pruning.mask import Mask
from prunelab.training import EvalRecord

#: Version of ``metrics.json``. 1: the untyped dict of prunelab <= 0.1 (no ``format`` key, no
#: environment); 2: :class:`LevelMetrics`, test metrics only where the test set was evaluated.
FORMAT = 2


def _record(values: Mapping[str, Any]) -> EvalRecord:
    """An EvalRecord from JSON; metrics a newer or older format lacks are None, but every format
    has the iteration, epoch and learning rate (a KeyError/ValueError otherwise: damaged metrics)."""
    fields = {f.name: values.get(f.name) for f in dataclasses.fields(EvalRecord)}
    fields = {k: None if v is None else float(v) for k, v in fields.items()}
    fields.update(iteration=int(values["iteration"]), epoch=float(values["epoch"]), lr=float(values["lr"]))
    return EvalRecord(**fields)


@dataclass(frozen=True)
class LevelMetrics:
    """What one trained level (or trunk, or control branch) achieved, and what that depends on."""

    level: int
    seed: int
    density: float
    layer_density: dict[str, float]
    iterations: int
    wall_time: float
    final: EvalRecord
    early_stop: EvalRecord
    history: tuple[EvalRecord, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    """torch and prunelab versions, device, threads, training step kind, evaluation interval."""
    stopped_early: str | None = None
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What the training plug-ins reported, by name (the early-bird ticket's epoch, FLOPs saved)."""

    @property
    def early_stop_iteration(self) -> int:
        """Iteration of minimum validation loss: the lottery-ticket papers' learning-speed measure."""
        return self.early_stop.iteration

    @classmethod
    def from_result(cls, result, *, level: int, seed: int, mask: Mask) -> LevelMetrics:
        """From a :class:`~prunelab.training.TrainResult` and the mask it trained with."""
        return cls(
            level=level,
            seed=seed,
            density=mask.density(),
            layer_density=mask.layer_density(),
            iterations=result.iterations,
            wall_time=result.wall_time,
            final=result.final,
            early_stop=result.early_stop,
            history=tuple(result.history),
            environment=dict(result.environment),
            stopped_early=result.stopped_early,
            plugins=dict(getattr(result, "reports", {}) or {}),
        )

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["history"] = [dataclasses.asdict(r) for r in self.history]
        values["early_stop_iteration"] = self.early_stop_iteration
        values["format"] = FORMAT
        return values

    @classmethod
    def from_json(cls, values: Any, source: str | Path = "metrics") -> LevelMetrics:
        """Read format 1 or 2; anything else is a :class:`CheckpointError` naming ``source``."""
        try:
            version = values.get("format", 1)
            if version > FORMAT:
                raise CheckpointError(
                    f"{source} has metrics format {version}, newer than this prunelab reads ({FORMAT}); "
                    "upgrade prunelab"
                )
            return cls(
                level=int(values["level"]),
                seed=int(values["seed"]),
                density=float(values["density"]),
                layer_density={str(k): float(v) for k, v in values["layer_density"].items()},
                iterations=int(values["iterations"]),
                wall_time=float(values["wall_time"]),
                final=_record(values["final"]),
                early_stop=_record(values["early_stop"]),
                history=tuple(_record(r) for r in values.get("history", ())),
                environment=dict(values.get("environment") or {}),
                stopped_early=values.get("stopped_early"),
                plugins=dict(values.get("plugins") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"{source} does not hold level metrics ({type(exc).__name__}: {exc})"
            ) from None

    def value(self, metric: str, at: str = "final") -> float | None:
        """``metric`` (test_acc, val_loss, ...) of the final or the early-stop record; ``*_ppl`` is a
        language model's perplexity, ``exp`` of the mean next-token loss."""
        record = self.final if at == "final" else self.early_stop
        if metric.endswith("_ppl"):
            from prunelab.experiments.tasks import perplexity

            return perplexity(getattr(record, metric.removesuffix("_ppl") + "_loss"))
        return getattr(record, metric)


def weight_entries(mask: Mask, prunable: Iterable[str]) -> Mask:
    """``mask`` without the entries of parameters other than the prunable weights (BatchNorm scales)."""
    names = set(prunable)
    if all(n in names for n in mask.names()):
        return mask
    return Mask({n: m for n, m in mask.items() if n in names})
