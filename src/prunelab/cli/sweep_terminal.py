"""The terminal's view of a running sweep (``prunelab sweep``): a line per task, one progress bar."""

from __future__ import annotations

from contextlib import contextmanager

from prunelab.sweeps.executors import Outcome, Reporter
from prunelab.sweeps.plan import Task


class Terminal(Reporter):
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
