"""Sweeps: a grid of experiments in one call, planned, run by an executor, resumed as a whole.

    >>> result = prunelab.sweep(base_spec, {"pruning.method": ["magnitude", "random"]})
    >>> result.table()

The grid is expanded and every spec checked (:mod:`~prunelab.sweeps.grid`); the plan shares each
dense trunk between the experiments that have it and counts what the store already holds
(:mod:`~prunelab.sweeps.plan`); an executor runs the tasks (:mod:`~prunelab.sweeps.executors`).
Rerunning a sweep reads back what is finished and continues the rest, with the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunelab.errors import PrunelabError
from prunelab.experiments.store import Store, StoredExperiment
from prunelab.stats import mean_std
from prunelab.sweeps.executors import EXECUTORS, Executor, Outcome, Reporter, make_executor
from prunelab.sweeps.grid import GridPoint, SweepFile, expand, read_sweep_file, short
from prunelab.sweeps.plan import LEVELS, ExperimentTask, SweepPlan, Task, TrunkTask, make_plan, task_key
from prunelab.table import Table

if TYPE_CHECKING:
    from prunelab.experiments.spec import ExperimentSpec

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExperimentTask",
    "GridPoint",
    "Outcome",
    "Reporter",
    "SweepFile",
    "SweepPlan",
    "SweepResult",
    "Task",
    "TrunkTask",
    "expand",
    "make_plan",
    "read_sweep_file",
    "sweep",
    "sweep_table",
]


@dataclass
class SweepResult:
    """A sweep's plan and what became of each task (empty for a dry run)."""

    plan: SweepPlan
    outcomes: dict[str, Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status != "done"]

    def experiments(self) -> list[StoredExperiment | None]:
        """Each point's results read back from the store (None where nothing is stored yet)."""
        store = Store(self.plan.root)
        return [store.stored(p.spec.experiment_id()) for p in self.plan.points]

    def table(self) -> Table:
        return sweep_table(self.plan.points, self.plan.root, self.outcomes)


def _status(point: GridPoint, outcomes: Mapping[str, Outcome], exp) -> str:
    """done, or what failed (the first failed or skipped task of the experiment, with its seed)."""
    exp_id = point.spec.experiment_id()
    for seed in point.spec.seeds:
        keys = [task_key(exp_id, seed, b) for b in (LEVELS, *point.spec.controls)]
        for key in (f"trunk {point.spec.trunk_id()} seed {seed}", *keys):
            outcome = outcomes.get(key)
            if outcome is not None and outcome.status != "done":
                return f"{outcome.status} (seed {seed}: {outcome.error})"
    return "not run" if exp is None else exp.status()


def sweep_table(
    points: Sequence[GridPoint], root: str | Path | None = None, outcomes: Mapping[str, Outcome] | None = None
) -> Table:
    """One row per experiment: its id, grid values, final density and test accuracy (mean ± std
    over its finished seeds at the last level), and its status (with ``outcomes``, what failed)."""
    outcomes = outcomes or {}
    store = Store(root)
    columns = ["#", "id", *(points[0].values if points else [])]
    columns += ["final density", "final test acc", "seeds", "status"]
    rows = []
    for i, p in enumerate(points):
        exp = store.stored(p.spec.experiment_id())
        last = p.spec.pruning.rounds
        finals = [] if exp is None else [lv[last] for s, lv in exp.levels.items() if last in lv]
        density = mean_std([m.density for m in finals])[0] if finals else None
        acc = mean_std([m.value("test_acc") for m in finals]) if finals else None
        values = [_cell(v) for v in p.values.values()]
        rows.append(
            [
                i + 1,
                p.spec.experiment_id(),
                *values,
                density,
                acc,
                len(finals),
                _status(p, outcomes, exp),
            ]
        )
    failed = sum(o.status != "done" for o in outcomes.values())
    note = f"{failed} task(s) failed or skipped; rerun the sweep to retry them." if failed else ""
    return Table(
        f"Sweep: {len(points)} experiments (final level {_levels(points)})",
        columns,
        rows,
        formats={"final density": "pct", "final test acc": "pm"},
        note=note,
    )


def _levels(points: Sequence[GridPoint]) -> str:
    rounds = sorted({p.spec.pruning.rounds for p in points})
    return ", ".join(map(str, rounds))


def _cell(value: Any) -> Any:
    """A grid value for the table: numbers and text as they are, a case by its name."""
    return value if isinstance(value, int | float | str) else short(value)


def sweep(
    base: ExperimentSpec | Mapping[str, Any] | None,
    grid: Mapping[str, Sequence[Any]],
    *,
    executor: str | Executor = "local",
    root: str | Path | None = None,
    data_dir: str | Path | None = None,
    dry_run: bool = False,
    reporter: Reporter | None = None,
    **executor_options: Any,
) -> SweepResult:
    """Expand ``grid`` over ``base``, plan it, and (unless ``dry_run``) run it with ``executor``
    (``local`` or ``ray``, or an :class:`Executor`; ``executor_options`` such as ``workers=2``).

    Every spec is checked and the executor made ready before anything trains; failed tasks are in
    the result (``failed``), not raised. Rerunning resumes.
    """
    runner = make_executor(executor, **executor_options)
    runner.check()
    points = expand(base, grid)
    if dry_run:
        return SweepResult(make_plan(points, root, data_dir=data_dir), {})
    with runner.session(points, data_dir):  # Ray's workers get ready while the sweep is planned
        return run_plan(make_plan(points, root, data_dir=data_dir), runner, data_dir, reporter=reporter)


def run_plan(
    plan: SweepPlan,
    executor: Executor,
    data_dir=None,
    dry_run: bool = False,
    reporter: Reporter | None = None,
) -> SweepResult:
    if dry_run:
        return SweepResult(plan, {})
    plan.check_data()
    return SweepResult(plan, executor.run(plan, data_dir=data_dir, reporter=reporter))


def sweep_experiments(
    path: str | Path, root: str | Path | None = None
) -> tuple[list[StoredExperiment], Table]:
    """The experiments of a sweep file that have results under ``root``, and the sweep's table
    (for ``report --sweep``); none with results is an error naming the command to run."""
    points = read_sweep_file(path).expand()
    store = Store(root)
    found = [exp for p in points if (exp := store.stored(p.spec.experiment_id())) is not None]
    if not found:
        raise PrunelabError(
            f"no experiment of sweep {path} has results under {store.root} yet; run `prunelab sweep {path}`"
        )
    return found, sweep_table(points, store.root)
