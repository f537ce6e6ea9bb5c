"""Where a sweep's tasks run, registered by name: ``local`` (in this process, one after another) and
``ray`` (Ray tasks on a local Ray instance or a cluster, each with its declared CPUs and GPUs).

Every executor runs the plan's tasks in its order's spirit: a dense trunk before the experiments
that share it, an experiment's levels before its controls; a task whose predecessor fails is skipped. A failed task is retried, then reported
with its error and traceback (:class:`Outcome`); the others go on. All tasks write to one results
root through the store's atomic writes and locks (on a cluster, a shared filesystem).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from prunelab.errors import SpecError
from prunelab.registry import Registry
from prunelab.sweeps.grid import GridPoint
from prunelab.sweeps.plan import DataCache, SweepPlan, Task

EXECUTORS: Registry[type[Executor]] = Registry("executor")


@dataclass(frozen=True)
class Outcome:
    """What became of one task: ``done``, ``failed`` (with the error and its traceback) or
    ``skipped`` (the trunk it waits for failed)."""

    key: str
    status: str
    error: str | None = None
    log: str | None = None
    attempts: int = 1


class Reporter:
    """What an executor tells the caller as it goes (the CLI draws it; the default says nothing)."""

    def started(self, task: Task) -> None:
        """``task`` is submitted (Ray) or starts (local)."""

    def finished(self, task: Task, outcome: Outcome) -> None:
        """``task`` ended (or was skipped)."""

    def training(self, label: str) -> AbstractContextManager[Callable[[int, int], None]]:
        """A progress callback for one training run in this process (the local executor's)."""
        return nullcontext(lambda done, total: None)

    def log(self, message: str) -> None:
        """A note from a run in this process (a resumed level, a wait on a lock)."""


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Executor:
    """Base: runs a :class:`SweepPlan`'s tasks; ``options`` names the settings it takes."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ("retries", "threads")
    in_process: ClassVar[bool] = False
    """Whether tasks train in this process (then their progress and notes show here)."""

    def __init__(self, *, retries: int = 1, threads: int | None = None, **options: Any) -> None:
        given = [k for k, v in options.items() if v is not None]
        for key in given:
            if key not in self.options:
                takes = ", ".join(f"--{o.replace('_', '-')}" for o in self.options)
                raise SpecError(
                    f"--{key.replace('_', '-')} does not apply to the {self.name} executor (it takes {takes})"
                )
        if retries < 0:
            raise SpecError(f"retries must be >= 0, got {retries}")
        if threads is not None and threads < 1:
            raise SpecError(f"threads must be >= 1, got {threads}")
        self.retries, self.threads = retries, threads

    def check(self) -> None:
        """Refuse, before any planning or training, an executor that cannot start here."""

    def session(
        self, points: list[GridPoint], data_dir: str | Path | None = None
    ) -> AbstractContextManager[None]:
        """Where the executor may start its workers and have them ready (imports, data) while the
        sweep is planned; :meth:`run` inside it uses them."""
        return nullcontext()

    def run(
        self, plan: SweepPlan, *, data_dir: str | Path | None = None, reporter: Reporter | None = None
    ) -> dict[str, Outcome]:
        raise NotImplementedError


def _skipped(task: Task, outcomes: dict[str, Outcome]) -> Outcome | None:
    if task.after is not None and outcomes[task.after].status != "done":
        before = outcomes[task.after]
        return Outcome(task.key, "skipped", f"{before.key} {before.status} ({before.error})")
    return None


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """In this process, one task after another (trunks first): what ``prunelab run`` does."""

    name = "local"
    description = "in this process, one task after another (the default; no set-up)"
    in_process = True

    def run(self, plan, *, data_dir=None, reporter=None) -> dict[str, Outcome]:
        from prunelab.threads import set_threads

        reporter = reporter or Reporter()
        if self.threads is not None:
            set_threads(self.threads)
        outcomes: dict[str, Outcome] = {}
        data = DataCache()
        for task in plan.tasks:
            outcome = _skipped(task, outcomes)
            if outcome is None:
                reporter.started(task)
                outcome = self._attempt(task, plan.root, data_dir, reporter, data)
            outcomes[task.key] = outcome
            reporter.finished(task, outcome)
        return outcomes

    def _attempt(self, task: Task, root: Path, data_dir, reporter: Reporter, data: DataCache) -> Outcome:
        for attempt in range(1, self.retries + 2):
            try:
                task.run(root, data_dir=data_dir, progress=reporter.training, log=reporter.log, data=data)
                return Outcome(task.key, "done", attempts=attempt)
            except Exception as exc:  # a task's failure is reported; the sweep goes on
                failure = Outcome(task.key, "failed", _error(exc), traceback.format_exc(), attempt)
        return failure


def _ray():
    try:
        import ray
    except ImportError:
        raise SpecError(
            "the ray executor needs Ray, which is not installed: pip install 'prunelab[ray]'"
        ) from None
    return ray


def _exit_on_sigterm():
    """Make SIGTERM exit through ``finally`` blocks (in the main thread); the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


#: The datasets a Ray worker process has loaded, kept for the next tasks it runs.
WORKER_DATA = DataCache()


def _run_in_worker(task: Task, root: str, data_dir: str | None, threads: int) -> dict[str, Any]:
    """A Ray task: the thread count set to its CPU share, then the task; what it ran on."""
    import torch

    from prunelab.threads import set_threads

    set_threads(threads)
    task.run(Path(root), data_dir=data_dir, data=WORKER_DATA)
    return {"pid": os.getpid(), "threads": torch.get_num_threads()}


def _warm_worker(specs: list, data_dir: str | None, threads: int) -> int:
    """Ready a Ray worker while the driver plans: torch's optimiser machinery imported (seconds,
    once per process) and the sweep's first datasets loaded into :data:`WORKER_DATA`."""
    import torch

    from prunelab.threads import set_threads

    set_threads(threads)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo
    for spec in specs:
        try:
            WORKER_DATA.get(spec, data_dir)
        except Exception:  # the task that needs the data reports why it cannot load
            break
    return os.getpid()


@contextmanager
def _environment(values: dict[str, str]):
    """``os.environ`` with ``values`` set, restored afterwards (this process's torch is unaffected)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_reachable(address: str) -> None:
    """Refuse at once a cluster address that cannot be reached (Ray itself retries for minutes)."""
    import socket

    if address in ("auto", "local"):
        return  # Ray finds (or fails to find) the local cluster itself, quickly
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SpecError(f"--address {address!r}: write auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise SpecError(
            f"cannot reach the Ray cluster at {address!r} ({exc.strerror or exc}); is `ray start --head` "
            "running there, and the port open?"
        ) from None


#: Environment variables a Ray worker needs as the driver has them (a cluster's workers get them too).
PASSED_ON = ("PRUNELAB_HOME", "PRUNELAB_DATA", "XDG_CACHE_HOME")


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks: ``workers`` starts a local Ray instance with room for that many tasks at once;
    ``address`` joins a running cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``)."""

    name = "ray"
    description = "Ray tasks on a local Ray instance (--workers) or a cluster (--address); needs pip install 'prunelab[ray]'"
    options = (*Executor.options, "workers", "address", "cpus_per_task", "gpus_per_task")

    def __init__(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        cpus_per_task: float | None = None,
        gpus_per_task: float | None = None,
        **rest: Any,
    ) -> None:
        super().__init__(**rest)
        if workers is not None and address is not None:
            raise SpecError("give --workers (start Ray here) or --address (join a cluster), not both")
        if workers is not None and workers < 1:
            raise SpecError(f"workers must be >= 1, got {workers}")
        for flag, value in (("cpus-per-task", cpus_per_task), ("gpus-per-task", gpus_per_task)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise SpecError(f"--{flag} must be a number >= 0, got {value}")
        self.cpus = 1.0 if cpus_per_task is None else float(cpus_per_task)
        self.gpus = 0.0 if gpus_per_task is None else float(gpus_per_task)
        if self.cpus == 0 and self.gpus == 0:
            raise SpecError("a task needs some resource: give --cpus-per-task or --gpus-per-task above 0")
        self.workers, self.address = workers, address

    @property
    def task_threads(self) -> int:
        """torch threads in each task: ``threads``, else its CPU share (1 at most one CPU)."""
        return self.threads or max(1, math.floor(self.cpus))

    def oversubscription(self) -> str | None:
        """One line when a local instance's tasks would run more threads than this process has CPUs."""
        from prunelab.threads import available_cpus

        if self.address is not None:
            return None
        workers, cpus = self.workers or 1, available_cpus()
        if workers * self.task_threads <= cpus:
            return None
        return (
            f"{workers} workers x {self.task_threads} thread(s) oversubscribe the {cpus} CPU(s) this process "
            f"may use, which slows every task down many times over: use --workers {max(1, cpus // self.task_threads)}"
        )

    def check(self) -> None:
        _ray()
        if self.address is not None:
            _check_reachable(self.address)
        elif self.gpus:
            import torch

            if torch.cuda.device_count() == 0:
                raise SpecError(
                    f"--gpus-per-task {self.gpus:g} was asked for, but this machine has no GPU for a local "
                    "Ray instance; leave it out, or join a cluster with GPUs (--address)"
                )

    def _worker_env(self) -> dict[str, str]:
        """What the workers' environment needs: prunelab importable, torch at the task's threads."""
        import prunelab

        here = str(Path(prunelab.__file__).resolve().parents[1])
        paths = [here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "OMP_NUM_THREADS": str(self.task_threads)}
        return env | {k: os.environ[k] for k in PASSED_ON if k in os.environ}

    def _start(self, ray) -> None:
        """Start or join Ray."""
        common = {"logging_level": "ERROR", "log_to_driver": True}
        if self.address is not None:
            try:  # a cluster's workers get the environment as Ray's runtime_env
                ray.init(address=self.address, runtime_env={"env_vars": self._worker_env()}, **common)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SpecError(f"cannot join the Ray cluster at {self.address!r}: {_error(exc)}") from None
            return
        workers = self.workers or 1
        resources: dict[str, Any] = {"num_cpus": max(1, math.ceil(workers * self.cpus))}
        message = self.oversubscription()
        if message:
            warnings.warn(message, stacklevel=2)
        if self.gpus:
            import torch

            resources["num_gpus"] = torch.cuda.device_count()
        # A local instance's workers inherit the environment Ray starts in: no runtime_env, so the
        # workers Ray starts at once serve the tasks (a runtime_env would start others, later).
        with _environment(self._worker_env()):
            ray.init(include_dashboard=False, **resources, **common)

    @contextmanager
    def session(self, points, data_dir=None):
        """Ray started (or joined) and each worker slot warmed with the sweep's first data, stopped
        at the end (also on Ctrl-C and SIGTERM: no Ray processes are left behind)."""
        ray = _ray()
        if ray.is_initialized():  # an outer session, or the caller's own Ray
            yield
            return
        self._start(ray)
        previous = _exit_on_sigterm()  # after Ray's own handler, which it replaces
        try:
            self._warm(ray, points, data_dir)
            yield
        finally:
            ray.shutdown()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _slots(self, ray) -> int:
        """How many tasks can run at once: ``workers``, else what the cluster's CPUs and GPUs hold."""
        if self.workers is not None:
            return self.workers
        have = ray.cluster_resources()
        fits = [have.get(k, 0) / need for k, need in (("CPU", self.cpus), ("GPU", self.gpus)) if need]
        return max(1, min(256, int(min(fits))))

    def _warm(self, ray, points, data_dir) -> None:
        """One warm-up task per slot (not waited for: the workers get ready while the sweep is planned)."""
        firsts = {DataCache.key(p.spec, data_dir): p.spec for p in points}
        specs = list(firsts.values())[: WORKER_DATA.size]
        warm = ray.remote(_warm_worker).options(num_cpus=self.cpus, num_gpus=self.gpus)
        data = None if data_dir is None else str(data_dir)
        for _ in range(self._slots(ray)):
            warm.remote(specs, data, self.task_threads)

    def run(self, plan, *, data_dir=None, reporter=None) -> dict[str, Outcome]:
        with self.session(plan.points, data_dir):
            return self._run(_ray(), plan, data_dir, reporter or Reporter())

    def _run(self, ray, plan: SweepPlan, data_dir, reporter: Reporter) -> dict[str, Outcome]:
        remote = ray.remote(_run_in_worker).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries, retry_exceptions=True
        )
        waiting: dict[str, list[Task]] = {}
        for task in plan.tasks:
            if task.after is not None:
                waiting.setdefault(task.after, []).append(task)
        pending: dict[Any, Task] = {}
        outcomes: dict[str, Outcome] = {}
        root, data = str(plan.root), None if data_dir is None else str(data_dir)

        def submit(tasks: Iterable[Task]) -> None:
            for task in tasks:
                outcome = _skipped(task, outcomes) if task.after is not None else None
                if outcome is not None:
                    finish(task, outcome)
                    continue
                pending[remote.remote(task, root, data, self.task_threads)] = task
                reporter.started(task)

        def finish(task: Task, outcome: Outcome) -> None:
            outcomes[task.key] = outcome
            reporter.finished(task, outcome)
            submit(waiting.pop(task.key, []))

        submit(t for t in plan.tasks if t.after is None)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                ray.get(ready[0])
                outcome = Outcome(task.key, "done")
            except Exception as exc:  # a RayTaskError wraps the task's own exception
                cause = getattr(exc, "cause", None) or exc
                outcome = Outcome(task.key, "failed", _error(cause), str(exc), self.retries + 1)
            finish(task, outcome)
        return outcomes


def make_executor(executor: str | Executor = "local", **options: Any) -> Executor:
    """An executor by name (options it does not take refused) or as given."""
    if isinstance(executor, Executor):
        if any(v is not None for v in options.values()):
            raise SpecError("give the executor's options to its constructor, not beside an executor object")
        return executor
    cls = EXECUTORS.get(executor)
    return cls(**{k: v for k, v in options.items() if v is not None})
