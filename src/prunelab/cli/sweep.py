"""``prunelab sweep GRID``: a grid of experiments, planned, then run by an executor (local or Ray)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from prunelab.cli.experiments import run_flags
from prunelab.cli.options import DataDir, Progress, Root, Threads, spec_command

Opt = Optional


def _executors_help() -> str:
    """The --executor help, from the executors' registry (read when the command is built)."""
    from rich.markup import escape  # help texts are rich markup: [ray] is not a tag

    from prunelab.sweeps.executors import EXECUTORS

    return escape(
        "Where tasks run: " + "; ".join(f"{n}: {EXECUTORS.describe(n)}" for n in EXECUTORS.names()) + "."
    )


@spec_command(run_flags)
def sweep(
    values: dict[str, Any],
    grid: Annotated[
        Path,
        typer.Argument(
            help="Sweep file (TOML/YAML): a base table of settings and a grid table of lists per field."
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.")] = False,
    executor: Annotated[str, typer.Option(help=_executors_help)] = "local",
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

    Spec flags (--iterations 50, --seeds 0, ...) override the file's \\[base], never its grid."""
    from prunelab.cli.sweep_terminal import Terminal
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
        reporter = Terminal(plan.trainings - plan.done, progress, runner.in_process)
        with reporter.overall():
            result = run_plan(plan, runner, data_dir, reporter=reporter)
    show(result.table())
    if result.failed:
        for outcome in result.failed:
            if outcome.log:
                warn(f"{outcome.key}: {outcome.error}\n{outcome.log.rstrip()}")
        raise typer.Exit(1)
