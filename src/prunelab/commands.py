"""What the CLI commands do, kept apart from argument parsing so the Python API can call it too."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prunelab.data import DATASETS, load_dataset
from prunelab.io import atomic_write_json, save_tensors
from prunelab.models import MODELS, build_model
from prunelab.pruning.mask import Mask, sparsity_report
from prunelab.seeding import derive_seed
from prunelab.spec import build_spec
from prunelab.training import TrainConfig, Trainer
from prunelab.ui import console, progress_bar, table


def run_train(
    *,
    model: str,
    data: str,
    data_dir: Path | None,
    val_size: int | None,
    init: str | None,
    mask: Path | None,
    seed: int,
    out: Path | None,
    progress: bool,
    milestones: str,
    **train_options,
) -> None:
    """`prunelab train`: check every input first, then load data, build, train and report."""
    MODELS.get(model)
    loader = DATASETS.get(data)
    cfg = build_spec(
        TrainConfig,
        milestones=tuple(m.strip() for m in milestones.split(",") if m.strip()),
        **train_options,
    )
    if cfg.epochs is None and cfg.iterations is None:
        cfg = cfg.model_copy(update={"epochs": 1})
    keep = Mask.load(mask) if mask is not None else None
    info = loader.info
    net = build_model(
        model,
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        init=init,
        seed=derive_seed(seed, "init"),
    )
    if keep is not None:
        keep.check_fits(net)
    dataset = load_dataset(data, data_dir=data_dir, val_size=val_size)
    console.print(
        f"[bold]{model}[/] on [bold]{data}[/] ({dataset.source}); "
        f"train {len(dataset.train):,} / val {len(dataset.val):,} / test {len(dataset.test):,}"
    )
    trainer = Trainer(net, dataset, cfg, mask=keep, seed=seed)
    with progress_bar(f"training {model}", enabled=progress) as update:
        result = trainer.run(on_progress=update)
    report = sparsity_report(trainer.model, keep)
    history_rows = [
        (f"{r.epoch:.2f}", r.iteration, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.test_acc)
        for r in result.history
    ]
    console.print(
        table(
            None,
            ["epoch", "iteration", "train loss", "train acc", "val loss", "val acc", "test acc"],
            history_rows,
        )
    )
    best = result.early_stop
    summary = [
        ("test accuracy (final)", result.final.test_acc),
        ("validation accuracy (final)", result.final.val_acc),
        ("early-stop iteration (min val loss)", best.iteration),
        ("test accuracy at early stop", best.test_acc),
        ("weights kept (prunable)", f"{report.prunable_kept:,} / {report.prunable_params:,}"),
        ("sparsity (prunable / all parameters)", f"{report.prunable_sparsity:.2%} / {report.sparsity:.2%}"),
        ("training time (s)", result.wall_time),
    ]
    console.print(table(f"{model} on {data}, seed {seed}", ["metric", "value"], summary))
    if out is not None:
        save_tensors(out / "model.safetensors", trainer.model.state_dict())
        atomic_write_json(
            out / "metrics.json",
            {
                "model": model,
                "data": data,
                "seed": seed,
                "train": json.loads(cfg.model_dump_json()),
                "summary": result.summary(),
                "history": [asdict(r) for r in result.history],
                "sparsity": {"prunable": report.prunable_sparsity, "all": report.sparsity},
            },
        )
        console.print(f"weights and metrics written to {out}")
