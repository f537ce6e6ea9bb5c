"""A sweep's task graph, worked out before anything trains.

Each shared dense trunk (model, data, training, seed) is one task, trained once with every trunk
point (rewind iteration) its experiments start from; each (experiment, seed) trains its pruned levels
in one task after it, and each of its controls is one more task after those.
Every expanded spec is checked the way ``prunelab run`` checks it (a trial round on the model)
while the plan is made, and the plan counts what the store already holds, so a resumed sweep
says what is left.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunelab.data import Dataset
from prunelab.errors import DataError
from prunelab.experiments.runner import LEVELS, ExperimentRunner
from prunelab.experiments.store import Store
from prunelab.sweeps.grid import GridPoint

if TYPE_CHECKING:
    from prunelab.experiments.spec import ExperimentSpec


class DataCache:
    """The datasets this process has loaded, by what loading depends on (the last ``size`` kept):
    every task a process runs on the same data reads it once (a Ray worker keeps one for its life)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: OrderedDict[tuple, Dataset] = OrderedDict()

    @staticmethod
    def key(spec: ExperimentSpec, data_dir: str | Path | None) -> tuple[Any, ...]:
        """What :meth:`ExperimentSpec.load_data` reads: the model and weights give its statistics
        and tokenizer."""
        return (
            spec.data,
            spec.val_size,
            spec.model,
            spec.weights,
            None if data_dir is None else str(data_dir),
        )

    def get(self, spec: ExperimentSpec, data_dir: str | Path | None = None) -> Dataset:
        key = self.key(spec, data_dir)
        if key in self._items:
            self._items.move_to_end(key)
        else:
            self._items[key] = spec.load_data(data_dir)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return self._items[key]

    def loader(self, spec: ExperimentSpec, data_dir: str | Path | None = None) -> Callable[[], Dataset]:
        """:meth:`get` when first needed (a finished task never loads its data)."""
        return lambda: self.get(spec, data_dir)


@dataclass(frozen=True)
class Task:
    """One unit of work, run in one process (see :meth:`run`); the store holds what it trains."""

    key: str
    seed: int
    specs: tuple[ExperimentSpec, ...]
    after: str | None = None  # the key of the task this one waits for
    trainings: int = 0  # trainings it runs in all
    done: int = 0  # of those, finished already (in the store)
    iterations: int = 0  # training iterations in all (an estimate: finetune and Scratch-B lengths vary)
    iterations_left: int = 0

    @property
    def label(self) -> str:
        raise NotImplementedError

    def run(
        self,
        root: Path,
        *,
        data_dir: str | Path | None = None,
        progress=None,
        log=lambda m: None,
        data: DataCache | None = None,
    ) -> None:
        """Train what the task holds that the store lacks (a finished task only reads back);
        ``data`` keeps the datasets this process loaded for the next tasks."""
        raise NotImplementedError

    def _runner(self, spec: ExperimentSpec, root: Path, data_dir, progress, log, data) -> ExperimentRunner:
        loader = (data or DataCache(size=1)).loader(spec, data_dir)
        return ExperimentRunner(spec, root, data_dir=data_dir, progress=progress, log=log, data=loader)


@dataclass(frozen=True)
class TrunkTask(Task):
    """A dense trunk for one seed with every trunk point its experiments start from (``specs``: all
    the experiments sharing it): run once, before them."""

    @property
    def label(self) -> str:
        return f"dense trunk {self.specs[0].trunk_id()} seed {self.seed}"

    def run(self, root, *, data_dir=None, progress=None, log=lambda m: None, data=None) -> None:
        data = data or DataCache(size=1)  # the specs of one trunk read the same data
        for spec in self.specs:
            self._runner(spec, root, data_dir, progress, log, data).train_trunk(self.seed)


@dataclass(frozen=True)
class ExperimentTask(Task):
    """One branch of one experiment for one seed: its pruned levels (after its trunk), or one of
    its controls (after those levels)."""

    branch: str = LEVELS

    @property
    def label(self) -> str:
        control = "" if self.branch == LEVELS else f" control {self.branch}"
        return f"{self.specs[0].label()} seed {self.seed}{control}"

    def run(self, root, *, data_dir=None, progress=None, log=lambda m: None, data=None) -> None:
        runner = self._runner(self.specs[0], root, data_dir, progress, log, data)
        runner.run_seed(self.seed, self.branch)


@dataclass
class SweepPlan:
    """The experiments of a sweep and its tasks, trunks first."""

    points: list[GridPoint]
    tasks: list[Task]
    root: Path
    shared: dict[str, list[int]] = field(default_factory=dict)  # trunk id -> indices of the points sharing it
    missing_data: dict[str, str] = field(default_factory=dict)  # trunk id -> why its data is not here

    def check_data(self) -> None:
        """Refuse to run a plan whose data cannot be loaded here (a dry run shows it instead)."""
        if self.missing_data:
            raise DataError(next(iter(self.missing_data.values())))

    @property
    def trainings(self) -> int:
        return sum(t.trainings for t in self.tasks)

    @property
    def done(self) -> int:
        return sum(t.done for t in self.tasks)

    def describe(self) -> list[str]:
        """What ``prunelab sweep`` prints before anything trains."""
        seeds = sorted({s for p in self.points for s in p.spec.seeds})
        iterations = sum(t.iterations for t in self.tasks)
        left = sum(t.iterations_left for t in self.tasks)
        trunks = sum(isinstance(t, TrunkTask) for t in self.tasks)
        lines = [
            f"sweep: {len(self.points)} experiments x {len(seeds)} seed(s) {seeds}: "
            f"{len(self.tasks)} tasks ({trunks} dense trunk x seed, of {len(self.shared)} trunk(s); "
            f"{len(self.tasks) - trunks} experiment x seed x branch)",
            f"trainings: {self.trainings} ({self.done} finished already, {self.trainings - self.done} to run)",
            f"work: about {iterations:,} training iterations ({left:,} to run)",
        ]
        if self.missing_data:
            lines.append(
                f"data not found here for {len(self.missing_data)} trunk(s), so their iterations and "
                f"rewind points are not counted: {next(iter(self.missing_data.values())).splitlines()[0]}"
            )
        for trunk, members in self.shared.items():
            names = ", ".join(f"#{i + 1}" for i in members)
            what = "shared by" if len(members) > 1 else "used by"
            lines.append(f"dense trunk {trunk} ({self.points[members[0]].spec.model}): {what} {names}")
        for i, p in enumerate(self.points):
            lines.append(f"#{i + 1} {p.spec.experiment_id()}  {p.label()}")
        lines.append(f"results: {self.root}")
        return lines


def task_key(experiment: str, seed: int, branch: str = LEVELS) -> str:
    """The key of an experiment's task for one seed and branch (its levels, or a control)."""
    return f"{experiment} seed {seed}" + ("" if branch == LEVELS else f" {branch}")


def _count(arts) -> tuple[int, int]:
    arts = list(arts)
    return len(arts), sum(a.done for a in arts)


def make_plan(
    points: Sequence[GridPoint],
    root: str | Path | Store | None = None,
    *,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> SweepPlan:
    """The tasks of ``points`` under ``root``: every spec checked, the data loaded once per trunk
    (for the iteration counts), what is finished counted."""
    store = root if isinstance(root, Store) else Store(root)
    runners: list[ExperimentRunner] = []
    data: dict[str, Dataset] = {}
    missing: dict[str, str] = {}  # trunk id -> why its data cannot be loaded here
    for p in points:
        trunk = p.spec.trunk_id()
        runner = ExperimentRunner(p.spec, store, data_dir=data_dir, log=log, data=data.get(trunk))
        if trunk not in missing:
            try:
                data[trunk] = runner.data  # the experiments of one trunk read the same data
            except DataError as exc:
                missing[trunk] = str(exc)
        runners.append(runner)

    def ipe(i: int) -> int:
        return 0 if points[i].spec.trunk_id() in missing else runners[i].iterations_per_epoch()

    shared: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        shared.setdefault(p.spec.trunk_id(), []).append(i)
    tasks: list[Task] = []
    experiment_tasks: list[Task] = []
    for trunk, members in shared.items():
        seeds = list(dict.fromkeys(s for i in members for s in points[i].spec.seeds))
        for seed in seeds:
            group = [i for i in members if seed in points[i].spec.seeds]
            spec = points[group[0]].spec
            wanted = [] if trunk in missing else sorted({k for i in group for k in runners[i].trunk_points()})
            arts = [store.dense(trunk, seed), *(store.trunk_point(trunk, seed, k) for k in wanted)]
            lengths = [spec.train.total_iterations(ipe(group[0])), *wanted]
            n, done = _count(arts)
            key = f"trunk {trunk} seed {seed}"
            tasks.append(
                TrunkTask(
                    key,
                    seed,
                    tuple(points[i].spec for i in group),
                    trainings=n,
                    done=done,
                    iterations=sum(lengths),
                    iterations_left=sum(x for x, a in zip(lengths, arts, strict=True) if not a.done),
                )
            )
            for i in group:
                s, exp = points[i].spec, points[i].spec.experiment_id()
                per = s.train.total_iterations(ipe(i))
                levels = task_key(exp, seed, LEVELS)
                for branch in (LEVELS, *s.controls):
                    arts = [
                        store.level(exp, seed, k) if branch == LEVELS else store.control(exp, seed, k, branch)
                        for k in range(1, s.pruning.rounds + 1)
                    ]
                    n, done = _count(arts)
                    experiment_tasks.append(
                        ExperimentTask(
                            task_key(exp, seed, branch),
                            seed,
                            (s,),
                            after=key if branch == LEVELS else levels,
                            trainings=n,
                            done=done,
                            iterations=per * n,
                            iterations_left=per * (n - done),
                            branch=branch,
                        )
                    )
    return SweepPlan(list(points), tasks + experiment_tasks, store.root, shared, missing)
