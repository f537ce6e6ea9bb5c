"""The ``prunelab`` command line. Every user error ends as one message and exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from prunelab.analysis.cli import register as register_analysis
from prunelab.compress.cli import register as register_compress
from prunelab.errors import PrunelabError

app = typer.Typer(
    name="prunelab",
    help="Neural-network pruning: lottery tickets, method comparisons, analysis, compression.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: where they are, and how to get them.", no_args_is_help=True)
app.add_typer(data_app, name="data")
register_analysis(app)
register_compress(app)

DataDir = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here on Python 3.10
    typer.Option(
        "--data-dir", help="Folder holding the dataset files (else $PRUNELAB_DATA, the cache, ...)."
    ),
]


@app.command()
def models(
    data: Annotated[
        str, typer.Option(help="Dataset whose input shape and classes size the models.")
    ] = "fashion-mnist",
) -> None:
    """List the registered models with their parameter counts."""
    from prunelab.data import DATASETS
    from prunelab.models import describe_models
    from prunelab.ui import console, table

    info = DATASETS.get(data).info
    rows = describe_models(info.input_shape, info.num_classes)
    shape = "x".join(map(str, info.input_shape))
    console.print(
        table(
            f"Models for {data} ({shape}, {info.num_classes} classes)",
            ["model", "family", "parameters", "description"],
            rows,
        )
    )


@data_app.command("list")
def data_list(data_dir: DataDir = None) -> None:
    """Show each dataset with where it was found, or how to get it."""
    from prunelab.data import DATASETS, dataset_status
    from prunelab.ui import console, table

    rows = []
    for name in DATASETS.names():
        found, where = dataset_status(name, data_dir)
        rows.append((name, "found" if found else "missing", where))
    console.print(table("Datasets", ["dataset", "status", "where / how to get it"], rows))


@data_app.command("get")
def data_get(
    name: Annotated[str, typer.Argument(help="Dataset to download (mnist, fashion-mnist, cifar10).")],
    dest: Annotated[
        Path | None, typer.Option(help="Root folder; files go to DEST/NAME (default: the prunelab cache).")
    ] = None,
) -> None:
    """Download a dataset from its official mirror, verify its checksums, and store it atomically."""
    from prunelab.data import DATASETS, download
    from prunelab.ui import console

    if not DATASETS.get(name).needs_files:
        console.print(f"{name} needs no download: it is always available offline")
        return
    path = download(name, dest)
    console.print(f"{name}: ready in {path}")


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Model name (see `prunelab models`).")] = "lenet-300-100",
    data: Annotated[str, typer.Option(help="Dataset name (see `prunelab data list`).")] = "fashion-mnist",
    data_dir: DataDir = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training length in epochs.")] = None,  # noqa: UP045
    iterations: Annotated[
        int | None, typer.Option(help="Training length in iterations (instead of epochs).")
    ] = None,
    optimizer: Annotated[str, typer.Option(help="sgd, adam or adamw.")] = "adam",
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1.2e-3,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.0,
    nesterov: Annotated[bool, typer.Option(help="Nesterov momentum (SGD).")] = False,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 60,
    schedule: Annotated[str, typer.Option(help="LR schedule: constant, step or cosine.")] = "constant",
    milestones: Annotated[str, typer.Option(help="Step-schedule milestones, e.g. '80ep,120ep'.")] = "",
    warmup: Annotated[str, typer.Option(help="Linear LR warmup, e.g. '500it' or '1ep'.")] = "0it",
    eval_every: Annotated[
        str | None, typer.Option(help="Evaluate every '200it' or '1ep' (default: every epoch).")
    ] = None,
    val_size: Annotated[
        int | None, typer.Option(help="Validation examples held out of the training set.")
    ] = None,
    init: Annotated[
        str | None, typer.Option(help="Initialisation (glorot-normal, kaiming-normal, ...).")
    ] = None,
    mask: Annotated[
        Path | None, typer.Option(help="Mask file (.safetensors, or a torch.nn.utils.prune state dict).")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Replicate seed: initialisation and data order derive from it.")
    ] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (GPU only).")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Folder for final weights (safetensors) and metrics (JSON).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a dense model, or a masked one with --mask, and print its metrics."""
    options = dict(locals())
    from prunelab.commands import run_train

    run_train(**options)


Root = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--root", help="Results folder (else $PRUNELAB_HOME, else ~/.prunelab/runs)."),
]
Opt = Optional  # typer reads Optional[...] on every supported Python


@app.command()
def run(
    config: Annotated[
        Opt[Path], typer.Option(help="TOML/YAML experiment spec; flags given override it.")
    ] = None,
    model: Annotated[Opt[str], typer.Option(help="Model (default lenet-300-100).")] = None,
    data: Annotated[Opt[str], typer.Option(help="Dataset (default fashion-mnist).")] = None,
    data_dir: DataDir = None,
    method: Annotated[
        Opt[str],
        typer.Option(
            help="magnitude, random, l1-structured, l2-structured, linf-structured, lninf-structured, random-structured, hybrid, snip, grasp, synflow, large_final, magnitude_increase, movement."
        ),
    ] = None,
    scope: Annotated[Opt[str], typer.Option(help="layerwise, global or by-type.")] = None,
    structure: Annotated[
        Opt[str], typer.Option(help="Override the method's structure (e.g. structured-output).")
    ] = None,
    layers: Annotated[Opt[str], typer.Option(help="Which layers to prune: all, fc-only, conv-only.")] = None,
    exclude: Annotated[Opt[str], typer.Option(help="Comma-separated layer names never pruned.")] = None,
    layer_rates: Annotated[Opt[str], typer.Option(help="Per-layer rates, e.g. 'fc3=0.1'.")] = None,
    output_rate: Annotated[
        Opt[float], typer.Option(help="Prune the output layer at this factor of the rate (0.5 = half).")
    ] = None,
    rounds: Annotated[Opt[int], typer.Option(help="Pruning rounds (levels after dense).")] = None,
    rate: Annotated[Opt[float], typer.Option(help="Fraction of remaining weights pruned per round.")] = None,
    target_sparsity: Annotated[
        Opt[float], typer.Option(help="Reach this sparsity in --rounds rounds (overrides --rate).")
    ] = None,
    treatment: Annotated[
        Opt[str],
        typer.Option(
            help="rewind, rewind:500it, rewind:1ep, finetune, reinit, sign, sigma-sign, scratch-e, scratch-b."
        ),
    ] = None,
    controls: Annotated[
        Opt[str], typer.Option(help="Control branches per level: reinit, random-mask.")
    ] = None,
    seeds: Annotated[Opt[str], typer.Option(help="Replicates, e.g. 0-4 or 0,3.")] = None,
    epochs: Annotated[Opt[int], typer.Option(help="Training epochs per level.")] = None,
    iterations: Annotated[
        Opt[int], typer.Option(help="Training iterations per level (instead of epochs).")
    ] = None,
    optimizer: Annotated[Opt[str], typer.Option(help="sgd, adam or adamw.")] = None,
    lr: Annotated[Opt[float], typer.Option(help="Learning rate.")] = None,
    momentum: Annotated[Opt[float], typer.Option(help="SGD momentum.")] = None,
    weight_decay: Annotated[Opt[float], typer.Option(help="Weight decay.")] = None,
    batch_size: Annotated[Opt[int], typer.Option(help="Mini-batch size.")] = None,
    schedule: Annotated[Opt[str], typer.Option(help="constant, step or cosine.")] = None,
    warmup: Annotated[Opt[str], typer.Option(help="Linear warmup, e.g. '500it'.")] = None,
    device: Annotated[Opt[str], typer.Option(help="auto, cpu or cuda.")] = None,
    name: Annotated[
        Opt[str], typer.Option(help="A label for listings (not part of the experiment's id).")
    ] = None,
    root: Root = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run a pruning experiment (resumable: rerun the same command to continue)."""
    from prunelab.commands import build_experiment_spec, run_experiment

    train_options = dict(
        epochs=epochs,
        iterations=iterations,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        schedule=schedule,
        warmup=warmup,
        device=device,
    )
    spec = build_experiment_spec(
        config=config,
        seeds=seeds,
        treatment=treatment,
        controls=controls,
        exclude=exclude,
        layer_rates=layer_rates,
        train_options=train_options,
        model=model,
        data=data,
        method=method,
        scope=scope,
        structure=structure,
        layers=layers,
        rate=rate,
        rounds=rounds,
        target_sparsity=target_sparsity,
        output_rate_factor=output_rate,
        name=name,
    )
    run_experiment(spec, root=root, data_dir=data_dir, progress=progress)


@app.command("ls")
def ls(root: Root = None) -> None:
    """List experiments with their status."""
    from prunelab.commands import list_runs

    list_runs(root)


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="Experiment id (or unique prefix), label, or folder.")],
    root: Root = None,
    tolerance: Annotated[float, typer.Option(help="Winning ticket: within this of dense accuracy.")] = 0.005,
) -> None:
    """Per-level table of an experiment (mean ± std over seeds) and its winning ticket."""
    from prunelab.commands import show_experiment
    from prunelab.experiments.summary import find_experiment

    show_experiment(find_experiment(run, root), tolerance)


@app.command()
def demo(
    root: Root = None,
    data_dir: DataDir = None,
    rounds: Annotated[int, typer.Option(help="Pruning rounds (12 reaches ~7% of the hidden weights).")] = 12,
    epochs: Annotated[int, typer.Option(help="Training epochs per level.")] = 3,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The lottery-ticket demo: LeNet-300-100 IMP with rewinding on Fashion-MNIST, vs random reinit."""
    from prunelab.commands import run_demo

    run_demo(root=root, data_dir=data_dir, rounds=rounds, epochs=epochs, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one line and return 2; no traceback."""
    try:
        app(args=argv, prog_name="prunelab")
    except SystemExit as exc:  # typer exits on success, on --help and on usage errors (status 2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except PrunelabError as exc:
        from prunelab.ui import print_error

        print_error(str(exc))
        return 2
    return 0


def entry() -> None:
    sys.exit(main())
