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


# experiments ----------------------------------------------------------------------------------
def build_experiment_spec(
    *,
    config: Path | None,
    seeds: str | None,
    treatment: str | None,
    controls: str | None,
    exclude: str | None,
    layer_rates: str | None,
    train_options: dict,
    **options,
):
    """An ExperimentSpec from --config and/or flags; a flag that is given overrides the file."""
    from prunelab.experiments import ExperimentSpec, TreatmentSpec, load_spec_file, parse_seeds

    base = load_spec_file(config).model_dump(exclude_defaults=True) if config else {}
    values = {
        **base,
        **{
            k: v
            for k, v in options.items()
            if v is not None and k in {"model", "data", "init", "val_size", "name"}
        },
    }
    values.setdefault("model", "lenet-300-100")
    values.setdefault("data", "fashion-mnist")
    pruning = {
        **base.get("pruning", {}),
        **{
            k: v
            for k, v in options.items()
            if v is not None
            and k
            in {
                "method",
                "scope",
                "structure",
                "layers",
                "rate",
                "rounds",
                "target_sparsity",
                "output_rate_factor",
            }
        },
    }
    if exclude is not None:
        pruning["exclude"] = tuple(x.strip() for x in exclude.split(",") if x.strip())
    if layer_rates is not None:
        pruning["layer_rates"] = _parse_layer_rates(layer_rates)
    train = {**base.get("train", {}), **{k: v for k, v in train_options.items() if v is not None}}
    if train.get("epochs") is None and train.get("iterations") is None:
        train["epochs"] = 1
    values.update(pruning=pruning, train=build_spec(TrainConfig, **train))
    if treatment is not None:
        values["treatment"] = TreatmentSpec.parse(treatment)
    if controls is not None:
        values["controls"] = tuple(c.strip() for c in controls.split(",") if c.strip())
    if seeds is not None:
        values["seeds"] = parse_seeds(seeds)
    return build_spec(ExperimentSpec, **values)


def _parse_layer_rates(text: str) -> dict[str, float]:
    from prunelab.errors import SpecError

    rates = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SpecError(f"--layer-rates {text!r}: write e.g. 'fc3=0.1,conv1=0'") from None
    return rates


def run_experiment(spec, *, root: Path | None, data_dir: Path | None, progress: bool) -> None:
    from prunelab.experiments import ExperimentRunner
    from prunelab.experiments.summary import find_experiment

    runner = ExperimentRunner(
        spec,
        root,
        data_dir=data_dir,
        progress=(lambda label: progress_bar(label, enabled=progress)),
        log=lambda msg: console.print(f"[yellow]{msg}[/]"),
    )
    console.print(
        f"experiment [bold]{spec.experiment_id()}[/] ({spec.label()}), seeds {list(spec.seeds)}; "
        f"{spec.pruning.rounds} rounds at {runner.rate:.1%} per round"
    )
    runner.run()
    show_experiment(find_experiment(str(runner.directory)))


def show_experiment(exp, tolerance: float = 0.005) -> None:
    from prunelab.experiments.summary import level_rows, winning_ticket

    def pm(value):
        return (
            None
            if value is None
            else f"{value[0]:.2%} ± {value[1]:.2%}"
            if len(exp.levels) > 1
            else f"{value[0]:.2%}"
        )

    names = list(exp.controls)
    rows = [
        (
            r["level"],
            f"{r['density']:.2%}",
            pm(r["ticket"]),
            *(pm(r.get(n)) for n in names),
            None if r["early_stop"] is None else round(r["early_stop"][0]),
        )
        for r in level_rows(exp)
    ]
    columns = ["level", "density", "test acc", *(f"{n} control" for n in names), "early-stop it"]
    title = f"{exp.id}  {exp.spec.label()}  seeds {sorted(exp.levels)}  ({exp.status()})"
    console.print(table(title, columns, rows))
    ticket = winning_ticket(exp, tolerance)
    if ticket is None:
        console.print(f"no pruned level within {tolerance:.1%} of dense test accuracy yet")
    else:
        console.print(
            f"winning ticket: level {ticket['level']} at {ticket['density']:.2%} density, test accuracy "
            f"{ticket['test_acc']:.2%} vs dense {ticket['dense_test_acc']:.2%} (tolerance {tolerance:.1%}); "
            f"early stop at iteration {ticket['early_stop']:.0f} vs dense {ticket['dense_early_stop']:.0f}"
        )
    console.print(f"results: {exp.directory}")


def list_runs(root: Path | None) -> None:
    from prunelab.experiments.store import results_root
    from prunelab.experiments.summary import list_experiments

    runs = list_experiments(root)
    if not runs:
        console.print(
            f"no experiments under {results_root(root)} yet; start one with `prunelab run` or `prunelab demo`"
        )
        return
    rows = [
        (e.id, e.spec.label(), ",".join(map(str, e.spec.seeds)), e.spec.pruning.rounds, e.status())
        for e in runs
    ]
    console.print(
        table(f"Experiments under {results_root(root)}", ["id", "label", "seeds", "rounds", "status"], rows)
    )


def run_demo(*, root: Path | None, data_dir: Path | None, rounds: int, epochs: int, progress: bool) -> None:
    """LeNet-300-100 IMP with rewinding on Fashion-MNIST (digits if absent), with a random-reinit control."""
    from prunelab.data import dataset_status
    from prunelab.experiments import ExperimentSpec, PruneSpec, TreatmentSpec

    data = "fashion-mnist"
    if not dataset_status(data, data_dir)[0]:
        console.print(
            "[yellow]Fashion-MNIST not found; running on scikit-learn's digits instead. "
            "Get it with `apt-get install dataset-fashion-mnist` or `prunelab data get fashion-mnist`.[/]"
        )
        data = "digits"
    spec = ExperimentSpec(
        model="lenet-300-100",
        data=data,
        name=f"demo: lenet-300-100 IMP + rewinding on {data}",
        train=TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, epochs=epochs),
        pruning=PruneSpec(
            method="magnitude", scope="layerwise", rate=0.2, rounds=rounds, output_rate_factor=0.5
        ),
        treatment=TreatmentSpec(kind="rewind"),
        controls=("reinit",),
    )
    run_experiment(spec, root=root, data_dir=data_dir, progress=progress)
