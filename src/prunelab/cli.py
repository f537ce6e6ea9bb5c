"""The ``prunelab`` command line. Every user error ends as one message and exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

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
