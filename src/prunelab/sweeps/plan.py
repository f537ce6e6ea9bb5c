"""A sweep's task graph, worked out before anything trains.

Each shared dense trunk (model, data, training, seed) is one task, trained once with every trunk
point (rewind iteration) its experiments start from; each (experiment, seed) is one task after it.
Every expanded spec is checked the way ``prunelab run`` checks it (a trial round on the model)
while the plan is made, and the plan counts what the store already holds, so a resumed sweep
says what is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.data import Dataset
from prunelab.errors import DataError
from prunelab.experiments.runner import ExperimentRunner
from prunelab.experiments.spec import ExperimentSpec
from prunelab.experiments.store import Store
from prunelab.sweeps.grid import GridPoint


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
        self, root: Path, *, data_dir: str | Path | None = None, progress=None, log=lambda m: None
    ) -> None:
        """Train what the task holds that the store lacks (a finished task only reads back)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TrunkTask(Task):
    """A dense trunk for one seed with every trunk point its experiments start from (``specs``: all
    the experiments sharing it): run once, before them."""

    @property
    def label(self) -> str:
        return f"dense trunk {self.specs[0].trunk_id()} seed {self.seed}"

    def run(self, root, *, data_dir=None, progress=None, log=lambda m: None) -> None:
        data = None
        for spec in self.specs:
            runner = ExperimentRunner(spec, root, data_dir=data_dir, progress=progress, log=log, data=data)
            runner.train_trunk(self.seed)
            data = runner.data


@dataclass(frozen=True)
class ExperimentTask(Task):
    """One experiment's pruned levels and control branches for one seed, after its trunk."""

    @property
    def label(self) -> str:
        return f"{self.specs[0].label()} seed {self.seed}"

    def run(self, root, *, data_dir=None, progress=None, log=lambda m: None) -> None:
        runner = ExperimentRunner(self.specs[0], root, data_dir=data_dir, progress=progress, log=log)
        runner.run_seed(self.seed)


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
            f"{len(self.tasks) - trunks} experiment x seed)",
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
                arts = []
                for level in range(1, s.pruning.rounds + 1):
                    arts.append(store.level(exp, seed, level))
                    arts += [store.control(exp, seed, level, c) for c in s.controls]
                n, done = _count(arts)
                per = s.train.total_iterations(ipe(i))
                experiment_tasks.append(
                    ExperimentTask(
                        f"{exp} seed {seed}",
                        seed,
                        (s,),
                        after=key,
                        trainings=n,
                        done=done,
                        iterations=per * n,
                        iterations_left=per * (n - done),
                    )
                )
    return SweepPlan(list(points), tasks + experiment_tasks, store.root, shared, missing)
