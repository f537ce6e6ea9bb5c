"""``prunelab sweep GRID``: a grid of experiments, planned, then run by an executor (local or Ray)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from prunelab.cli.experiments import RUN_FLAGS
from prunelab.cli.options import DataDir, Progress, Root, Threads, with_spec_flags
from prunelab.sweeps.executors import EXECUTORS, Outcome, Reporter
from prunelab.sweeps.plan import Task

Opt = Optional


def _executors_help() -> str:
    from rich.markup import escape  # help texts are rich markup: [ray] is not a tag

    return escape(
        "Where tasks run: " + "; ".join(f"{n}: {EXECUTORS.describe(n)}" for n in EXECUTORS.names()) + "."
    )


class _Terminal(Reporter):
    """One line per task as it starts (in this process) and ends, under one bar over the sweep's
    trainings that names the tasks running now (in this process, with the training's iterations)."""

    def __init__(self, total: int, progress: bool, in_process: bool) -> None:
        self.total, self.finished_trainings, self.progress, self.in_process = total, 0, progress, in_process
        self.running: dict[str, str] = {}
        self.before: dict[str, int] = {}  # task key -> trainings finished when it started
        self.now = ""  # the training running in this process, and how far it is
        self.bar = None

    def started(self, task: Task) -> None:
        from prunelab.ui import console, plain

        self.running[task.key] = task.label
        self.before[task.key] = self.finished_trainings
        if self.in_process and task.done < task.trainings:
            console.print(plain(f"start: {task.label} ({task.trainings - task.done} training(s) to run)"))
        self._draw()

    def finished(self, task: Task, outcome: Outcome) -> None:
        from prunelab.ui import console, plain, warn

        self.running.pop(task.key, None)
        if outcome.status == "done":
            self.finished_trainings = self.before.pop(task.key, 0) + task.trainings - task.done
        line = f"{outcome.status}: {task.label}"
        if outcome.status == "done" and task.done == task.trainings:
            console.print(plain(f"finished earlier: {task.label}"))
        elif outcome.status == "done":
            console.print(plain(f"{line}  [{self.finished_trainings}/{self.total} trainings]"))
        else:
            more = f" after {outcome.attempts} attempt(s)" if outcome.status == "failed" else ""
            warn(f"{line}{more}: {outcome.error}")
        self._draw()

    def _draw(self) -> None:
        if self.bar is not None:
            bar, row = self.bar
            now = self.now or ", ".join(list(self.running.values())[:3])
            more = " ..." if len(self.running) > 3 and not self.now else ""
            bar.update(row, completed=self.finished_trainings, description=f"running: {now or '-'}{more}")

    @contextmanager
    def training(self, label: str):
        """One training in this process: its iterations shown on the sweep's bar."""
        task = next(reversed(self.running.values()), "")

        def update(done: int, total: int) -> None:
            self.now = f"{task}: {label} {done}/{total} it"
            self._draw()

        try:
            yield update
        finally:
            self.now = ""
            self.finished_trainings += 1
            self._draw()

    def log(self, message: str) -> None:
        from prunelab.ui import warn

        warn(message)

    @contextmanager
    def overall(self):
        """The bar over all the sweep's trainings."""
        if not self.progress:
            yield
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from prunelab.ui import err_console

        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
        with Progress(*columns, console=err_console, refresh_per_second=2) as bar:
            self.bar = (bar, bar.add_task("starting", total=self.total))
            yield
        self.bar = None


@with_spec_flags(RUN_FLAGS)
def sweep(
    values: dict[str, Any],
    grid: Annotated[
        Path,
        typer.Argument(
            help="Sweep file (TOML/YAML): a base table of settings and a grid table of lists per field."
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.")] = False,
    executor: Annotated[str, typer.Option(help=_executors_help())] = "local",
    workers: Annotated[
        Opt[int], typer.Option(help="ray: start a local Ray instance running this many tasks at once.")
    ] = None,
    address: Annotated[
        Opt[str], typer.Option(help="ray: join a running cluster (auto, HOST:PORT or ray://HOST:PORT).")
    ] = None,
    cpus_per_task: Annotated[
        Opt[float], typer.Option(help="ray: CPUs each task holds (fractions allowed; default 1).")
    ] = None,
    gpus_per_task: Annotated[
        Opt[float], typer.Option(help="ray: GPUs each task holds (0.25: four small nets per GPU).")
    ] = None,
    retries: Annotated[int, typer.Option(min=0, help="Retries of a failed task before it is reported.")] = 1,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
    progress: Progress = True,
) -> None:
    """Run a grid of experiments: the plan first, then every task (rerun the same command to resume).

    Spec flags (--iterations 50, --seeds 0, ...) override the file's [base], never its grid."""
    from prunelab.sweeps import expand, make_executor, make_plan, read_sweep_file, run_plan
    from prunelab.ui import console, plain, show, warn

    runner = make_executor(
        executor,
        workers=workers,
        address=address,
        cpus_per_task=cpus_per_task,
        gpus_per_task=gpus_per_task,
        retries=retries,
        threads=threads,
    )
    runner.check()
    points = expand(*read_sweep_file(grid).with_base(values))
    if runner.in_process:
        from prunelab.cli.experiments import _start

        _start(threads, root)
    with nullcontext() if dry_run else runner.session(points, data_dir):  # workers ready while planning
        plan = make_plan(points, root, data_dir=data_dir, log=warn)
        for line in plan.describe():
            console.print(plain(line))
        for unused in dict.fromkeys(u for p in points for u in p.spec.unused()):
            warn(f"warning: {unused}; the setting has no effect (and makes a different experiment id)")
        if dry_run:
            return
        reporter = _Terminal(plan.trainings - plan.done, progress, runner.in_process)
        with reporter.overall():
            result = run_plan(plan, runner, data_dir, reporter=reporter)
    show(result.table())
    if result.failed:
        for outcome in result.failed:
            if outcome.log:
                warn(f"{outcome.key}: {outcome.error}\n{outcome.log.rstrip()}")
        raise typer.Exit(1)
