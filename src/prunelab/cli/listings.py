"""``prunelab methods | treatments | controls | models | data``: what the registries hold.

Each listing is read from its registry (names, descriptions, what each entry needs), so a method,
treatment, control, model or dataset registered in code appears here without editing this file.
Those that need no model are kept between runs (:mod:`prunelab.cli.cached`): read back while
prunelab's code and the folders searched are unchanged, they answer without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunelab.cli.cached import listing
from prunelab.cli.options import Command, DataDir, Group

NEED_WORDS = {"batches": "data", "initial_state": "initial weights", "input_shape": "input shape"}

data_app = typer.Typer(
    name="data", cls=Group, help="Datasets: where they are, and how to get them.", no_args_is_help=True
)


def _settings_text(spec_cls, fields=None) -> str:
    """``--flag (default)`` for each field of a settings spec."""
    from prunelab.cli.options import spec_flags

    flags = (
        spec_flags(spec_cls) if fields is None else [f for f in spec_flags(spec_cls) if f.path[-1] in fields]
    )
    return ", ".join(f"{f.name} ({f.default})" if f.default else f.name for f in flags) or "–"


def methods() -> None:
    """List the pruning methods (what each needs, its settings) and the training-time plug-ins."""
    _show(listing("methods", lambda: ([_methods_table(), _plugins_table()], []), "prunelab.pruning"))


def _methods_table():
    from prunelab.pruning import METHODS, Method
    from prunelab.table import Table

    rows = []
    entries = sorted(METHODS.items(), key=lambda item: not isinstance(item[1], Method))  # scorers' first
    for name, m in entries:
        needs = [NEED_WORDS[n] for n in sorted(m.needs)] + ([m.requires] if m.requires else [])
        structure = m.structure + (" (structured only)" if m.structured_only else "")
        settings = _settings_text(m.Settings) if m.Settings else "–"
        rows.append([name, METHODS.describe(name), structure, ", ".join(needs) or "–", settings])
    columns = ["method", "description", "structure", "needs", "settings"]
    return Table(
        "Pruning methods (--method); --structure overrides the grouping, --scope picks the pools",
        columns,
        rows,
        note="needs: what the method reads besides the weights (an experiment supplies it), "
        "and what the model must have. Not a mask, so not here: PCA layer shrinking (pca), a "
        "post-training command: prunelab shrink RUN -o DIR.",
    )


def _plugins_table():
    """The training plug-ins: which method runs each, when, and which join a training alone."""
    from prunelab.pruning import METHODS
    from prunelab.table import Table
    from prunelab.training.plugins import PLUGINS, standalone

    runs = {}
    for name, m in METHODS.items():
        plugin = getattr(m, "plugin", None)
        if plugin is not None:
            runs.setdefault(plugin.plugin_name, []).append(f"{name} ({m.hooks_text()})")
    alone = standalone()
    rows = [
        [
            name,
            PLUGINS.describe(name),
            "; ".join(runs.get(name, [])) or "–",
            cls.needs or "–",
            f"--plugins {name}" if name in alone else "–",
        ]
        for name, cls in PLUGINS.items()
    ]
    return Table(
        "Training-time plug-ins: what a method runs while its trainings run",
        ["plug-in", "description", "run by", "needs", "alone"],
        rows,
        note="alone: a regulariser (it changes neither the mask nor the architecture a training ends "
        f"with) joins a training without its method, at its default settings: --plugins {','.join(alone)} "
        "on prunelab train, or on prunelab run for every training of the experiment.",
    )


def _show(tables) -> None:
    from prunelab.ui import show

    for table in tables:
        show(table)


def _branches(kind: str, title: str):
    from prunelab.experiments import CONTROLS, TREATMENTS, TreatmentSpec
    from prunelab.table import Table

    registry = {"treatments": TREATMENTS, "controls": CONTROLS}[kind]
    rows = []
    for name, cls in registry.items():
        needs = ["structured masks"] if cls.requires_structured else []
        settings = _settings_text(TreatmentSpec, cls.uses) if cls.uses else "–"
        rows.append([name, registry.describe(name), ", ".join(needs) or "–", settings])
    return Table(title, ["name", "description", "needs", "settings"], rows)


def treatments() -> None:
    """List the weight treatments: what each pruned level trains from."""
    title = "Treatments (--treatment): what each pruned level starts from"
    _show(listing("treatments", lambda: ([_branches("treatments", title)], []), "prunelab.experiments"))


def controls() -> None:
    """List the control branches that can be trained beside every level."""
    title = "Controls (--controls a,b): trained beside every pruned level"
    _show(listing("controls", lambda: ([_branches("controls", title)], []), "prunelab.experiments"))


def models(
    data: Annotated[
        str, typer.Option(help="Dataset whose input shape and classes size the models.")
    ] = "fashion-mnist",
) -> None:
    """List the registered models with their parameter counts, and the other forms --model takes."""
    from prunelab.data import resolve_dataset
    from prunelab.models import SOURCES, describe_models
    from prunelab.models.source import ZooSource
    from prunelab.table import Table
    from prunelab.ui import show

    info = resolve_dataset(data).info
    rows = [list(r) for r in describe_models(info.input_shape, info.num_classes)]
    shape = "x".join(map(str, info.input_shape))
    show(
        Table(
            f"Models for {data} ({shape}, {info.num_classes} classes)",
            ["model", "family", "parameters", "description"],
            rows,
        )
    )
    forms = [[cls.usage, SOURCES.describe(key)] for key, cls in SOURCES.items() if cls is not ZooSource]
    show(Table("Other models (--model FORM; --weights FILE or SOURCE:NAME)", ["form", "what it is"], forms))


@data_app.command("list", cls=Command)
def data_list(data_dir: DataDir = None) -> None:
    """Show each dataset with where it was found, or how to get it."""
    import os

    from prunelab.cache import cache_base, data_search_dirs

    inputs = {
        "data_dir": None if data_dir is None else str(data_dir.expanduser().absolute()),
        "searched": [str(p) for p in data_search_dirs()],
        "PRUNELAB_DATA": os.environ.get("PRUNELAB_DATA", ""),
        "cache": str(cache_base()),
    }
    _show(listing("data-list", lambda: _data_tables(data_dir), "prunelab.data", inputs))


def _data_tables(data_dir: Path | None):
    """The datasets' table and the data sources' forms, and the folders searched."""
    from prunelab.data import DATA_SOURCES, DATASETS, candidate_dirs, dataset_status
    from prunelab.table import Table

    rows = []
    for name in DATASETS.names():
        found, where = dataset_status(name, data_dir)
        rows.append([name, DATASETS.describe(name), "found" if found else "missing", where])
    forms = [[cls.usage, DATA_SOURCES.describe(key)] for key, cls in DATA_SOURCES.items()]
    folders = [d for name in DATASETS.names() for d in candidate_dirs(name, data_dir)]
    return [
        Table("Datasets", ["dataset", "description", "status", "where / how to get it"], rows),
        Table("Your own data (--data FORM)", ["form", "what it is"], forms),
    ], folders


@data_app.command("get", cls=Command)
def data_get(
    name: Annotated[str, typer.Argument(help="Dataset to download (mnist, fashion-mnist, cifar10).")],
    dest: Annotated[
        Path | None, typer.Option(help="Root folder; files go to DEST/NAME (default: the prunelab cache).")
    ] = None,
) -> None:
    """Download a dataset from its official mirror, verify its checksums, and store it atomically."""
    from prunelab.data import DATASETS, download
    from prunelab.ui import console, plain

    if not DATASETS.get(name).needs_files:
        console.print(plain(f"{name} needs no download: it is always available offline"))
        return
    path = download(name, dest)
    console.print(plain(f"{name}: ready in {path}"))
