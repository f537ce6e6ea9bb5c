"""``prunelab demo | run | ls | show | train``: experiments and single trainings.

The flags of ``run`` and ``train`` are generated from :class:`~prunelab.experiments.ExperimentSpec`
and :class:`~prunelab.experiments.TrunkSpec` (see :mod:`prunelab.cli.options`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from prunelab.cli.options import (
    Config,
    DataDir,
    Device,
    Progress,
    Root,
    SpecFlag,
    Threads,
    spec_command,
    spec_flags,
    spec_from,
)


@functools.cache
def run_flags() -> list[SpecFlag]:
    """The flags of ``run`` (and ``sweep``): every field of an ExperimentSpec."""
    from prunelab.experiments.spec import ExperimentSpec

    return spec_flags(ExperimentSpec)


@functools.cache
def train_flags() -> list[SpecFlag]:
    """The flags of ``train``: every field of a TrunkSpec."""
    from prunelab.experiments.spec import TrunkSpec

    return spec_flags(TrunkSpec)


def __getattr__(name: str) -> Any:  # RUN_FLAGS and TRAIN_FLAGS, built on first use
    flags = {"RUN_FLAGS": run_flags, "TRAIN_FLAGS": train_flags}.get(name)
    if flags is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return flags()


def _start(threads: int | None, root: Path | None = None) -> None:
    """Set the thread count and warn, in one line, when other work competes for the CPUs."""
    from prunelab import threads as t
    from prunelab.experiments.store import results_root
    from prunelab.ui import warn

    n = t.set_threads(threads)
    message = t.oversubscription(n, results_root(root))
    if message:
        warn(message)


def _warn_unused(settings: list[str]) -> None:
    from prunelab.ui import warn

    for text in settings:
        warn(f"warning: {text}; the setting has no effect (and makes this a different experiment id)")


def demo(
    root: Root = None,
    data_dir: DataDir = None,
    rounds: Annotated[int, typer.Option(help="Pruning rounds (12 reaches ~7% of the hidden weights).")] = 12,
    epochs: Annotated[int, typer.Option(help="Training epochs per level.")] = 3,
    threads: Threads = None,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """The lottery-ticket demo: LeNet-300-100 IMP with rewinding on Fashion-MNIST, vs random reinit."""
    from prunelab.data import dataset_status
    from prunelab.experiments.demo import demo_spec
    from prunelab.ui import warn

    _start(threads, root)
    data = "fashion-mnist"
    if not dataset_status(data, data_dir)[0]:
        warn(
            "Fashion-MNIST not found; running on scikit-learn's digits instead. "
            "Get it with `apt-get install dataset-fashion-mnist` or `prunelab data get fashion-mnist`."
        )
        data = "digits"
    spec = demo_spec(data, rounds, epochs, device=device)
    _run_experiment(spec, root=root, data_dir=data_dir, progress=progress)


@spec_command(run_flags)
def run(
    values: dict[str, Any],
    config: Config = None,
    data_dir: DataDir = None,
    root: Root = None,
    threads: Threads = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for another process training a dense trunk this run shares.")
    ] = True,
    progress: Progress = True,
) -> None:
    """Run a pruning experiment (resumable: rerun the same command to continue)."""
    from prunelab.experiments.spec import ExperimentSpec, read_spec_file

    spec = spec_from(ExperimentSpec, config, values, read_spec_file)
    _start(threads, root)
    _warn_unused(spec.unused())
    _run_experiment(spec, root=root, data_dir=data_dir, progress=progress, wait=wait)


def _run_experiment(
    spec, *, root: Path | None, data_dir: Path | None, progress: bool, wait: bool = True
) -> None:
    from prunelab.experiments import ExperimentRunner
    from prunelab.experiments.store import Store
    from prunelab.ui import console, plain, progress_bar, warn

    runner = ExperimentRunner(
        spec,
        root,
        data_dir=data_dir,
        progress=lambda label: progress_bar(label, enabled=progress),
        log=warn,
        wait=wait,
    )
    console.print(
        plain(
            f"experiment {spec.experiment_id()} ({spec.label()}), seeds {list(spec.seeds)}; "
            f"{spec.pruning.rounds} rounds at {runner.rate:.1%} per round"
        )
    )
    runner.run()
    _show(Store(root).read(runner.directory))


def ls(root: Root = None) -> None:
    """List experiments with their status (damaged ones marked, with what is wrong)."""
    from prunelab.experiments.store import Store
    from prunelab.table import Table
    from prunelab.ui import console, show, warn

    store = Store(root)
    runs, damaged = store.scan()
    if not runs and not damaged:
        console.print(
            f"no experiments under {store.root} yet; start one with `prunelab run` or `prunelab demo`"
        )
        return
    rows = [
        [e.id, e.spec.label(), ",".join(map(str, e.spec.seeds)), e.spec.pruning.rounds, e.status()]
        for e in runs
    ]
    rows += [[ident, "?", "?", None, "damaged: spec.json cannot be read"] for ident in damaged]
    rows.sort(key=lambda r: r[0])
    show(Table(f"Experiments under {store.root}", ["id", "label", "seeds", "rounds", "status"], rows))
    for problem in [d.message() for e in runs for d in e.damage.values()] + list(damaged.values()):
        warn(problem)


def show(
    run: Annotated[str, typer.Argument(help="Experiment id (or unique prefix), label, or folder.")],
    root: Root = None,
    tolerance: Annotated[float, typer.Option(help="Winning ticket: within this of dense accuracy.")] = 0.005,
) -> None:
    """Per-level table of an experiment (mean ± std over seeds) and its winning ticket."""
    from prunelab.experiments.store import find_experiment

    _show(find_experiment(run, root), tolerance)


def _show(exp, tolerance: float = 0.005) -> None:
    """The table ``compare`` prints, for one experiment with its early-stop iterations, then its ticket."""
    from prunelab.analysis.tables import accuracy_table
    from prunelab.experiments.summary import winning_ticket
    from prunelab.ui import console, plain
    from prunelab.ui import show as show_table

    exp.require_intact()
    title = f"{exp.id}  {exp.spec.label()}  seeds {exp.seeds()}  ({exp.status()})"
    task = exp.spec.task
    show_table(accuracy_table([exp], metric=task.metric, early_stop=task.trains_dense, title=title))
    ticket = winning_ticket(exp, tolerance) if task.higher_is_better else None
    if not task.higher_is_better:
        pass  # a one-shot language model: the perplexity per level is the answer
    elif ticket is None:
        console.print(f"no pruned level within {tolerance:.1%} of dense test accuracy yet")
    else:
        console.print(
            plain(
                f"winning ticket: level {ticket['level']} at {ticket['density']:.2%} density, test accuracy "
                f"{ticket['test_acc']:.2%} vs dense {ticket['dense_test_acc']:.2%} (tolerance {tolerance:.1%}); "
                f"early stop at iteration {ticket['early_stop']:.0f} vs dense {ticket['dense_early_stop']:.0f}"
            )
        )
    from prunelab.training.plugins import report_lines

    for seed in exp.seeds():  # what the training plug-ins found in the dense training, in their words
        if 0 in exp.levels.get(seed, {}):
            for line in report_lines(exp.metrics(seed, 0).plugins):
                console.print(plain(f"seed {seed} dense: {line}"))
    console.print(plain(f"results: {exp.directory}"))


@spec_command(train_flags)
def train(
    values: dict[str, Any],
    config: Config = None,
    mask: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Mask file (.safetensors, or a torch.nn.utils.prune state dict)."),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Replicate seed: initialisation and data order derive from it.")
    ] = 0,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Folder for final weights (safetensors) and metrics (JSON)."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an earlier training output in --out (never anything else).")
    ] = False,
    data_dir: DataDir = None,
    root: Root = None,
    threads: Threads = None,
    progress: Progress = True,
) -> None:
    """Train a dense model, or a masked one with --mask, and print its metrics."""
    from prunelab.experiments.single import check_output, train_once
    from prunelab.experiments.spec import TrunkSpec, read_spec_file
    from prunelab.experiments.store import results_root
    from prunelab.ui import console, plain, progress_bar
    from prunelab.ui import show as show_table

    spec = spec_from(TrunkSpec, config, values, read_spec_file)
    _warn_unused(spec.train.unused())
    protect = [results_root(root)]
    if out is not None:
        check_output(out, force=force, protect=protect)
    _start(threads)

    notes: list[str] = []

    def started(data) -> None:
        for note in notes:
            console.print(plain(note))
        console.print(
            plain(
                f"{spec.model} on {spec.data} ({data.source}); "
                f"train {len(data.train):,} / val {len(data.val):,} / test {len(data.test):,}"
            )
        )

    with progress_bar(f"training {spec.model}", enabled=progress) as update:
        done = train_once(
            spec, seed=seed, mask=mask, data_dir=data_dir, on_start=started, on_progress=update, notes=notes
        )
    show_table(done.history_table())
    show_table(done.summary_table())
    if out is not None:
        done.write(out, force=force, protect=protect)
        console.print(plain(f"weights and metrics written to {out}"))
