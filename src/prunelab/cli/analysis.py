"""``prunelab report | compare | similarity | effective | stability | ensemble | mask-plot | heads``.

The analyses return records (:class:`~prunelab.table.Table`, figures); these commands print and save
them. User errors raise PrunelabError (exit status 2 in ``prunelab.cli.main``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunelab.cli.options import DataDir, Root, Threads, default_of
from prunelab.errors import PrunelabError, SpecError

Runs = Annotated[list[str], typer.Argument(help="Experiments: ids (or unique prefixes), labels or folders.")]
Run = Annotated[str, typer.Argument(help="Experiment id (or unique prefix), label or folder.")]
Opt = Optional


def _seeds(text: str | None) -> list[int] | None:
    from prunelab.experiments import parse_seeds

    return None if text is None else list(parse_seeds(text))


def _print(table) -> None:
    from prunelab.ui import show

    show(table)


def _save_csv(table, path: Path | None) -> None:
    if path is not None:
        from prunelab.io import atomic_write_bytes
        from prunelab.ui import console

        atomic_write_bytes(path, table.to_csv().encode())
        console.print(f"CSV written to {path}")


def _save_figure(fig, path: Path) -> None:
    from prunelab.analysis.plots import write_figure
    from prunelab.ui import console, plain

    console.print(plain(f"plot written to {write_figure(fig, path)}"))


def _check_figure(path: Path | None) -> None:
    """Refuse a plot name without a figure format before any work."""
    if path is not None:
        from prunelab.analysis.plots import figure_format

        figure_format(path)


def report(
    runs: Annotated[
        Opt[list[str]],
        typer.Argument(help="Experiments: ids (or unique prefixes), labels or folders (or give --sweep)."),
    ] = None,
    out: Annotated[
        Opt[Path], typer.Option("--out", "-o", help="Folder for report.html, images/ and tables/.")
    ] = None,
    sweep: Annotated[
        Opt[Path], typer.Option(help="A sweep file: report over its experiments, with the sweep's table.")
    ] = None,
    root: Root = None,
    force: Annotated[
        bool, typer.Option(help="Replace an earlier report in that folder (never anything else).")
    ] = False,
    data_dir: DataDir = None,
    threads: Threads = None,
    tolerance: Annotated[float, typer.Option(help="Winning ticket: within this of dense accuracy.")] = 0.005,
    ensembles: Annotated[bool, typer.Option(help="Ensembles and agreement (loads the dataset).")] = True,
    svg: Annotated[bool, typer.Option(help="SVG copies of the figures beside the PNGs.")] = True,
) -> None:
    """Write one self-contained HTML report (specs, tables, plots, analyses) with images and CSVs."""
    from prunelab.analysis.report import write_report
    from prunelab.ui import console, err_console, plain

    if out is None:
        raise PrunelabError("give the report's folder with --out (-o)")
    tables, title = [], None
    if sweep is not None:
        from prunelab.sweeps import sweep_experiments

        exps, table = sweep_experiments(sweep, root)
        runs, tables, title = [*(runs or []), *exps], [table], f"prunelab report: sweep {sweep.name}"
    if not runs:
        raise PrunelabError("give experiments to report on (ids, labels or folders), or --sweep FILE")
    path = write_report(
        runs,
        out,
        root=root,
        tables=tables,
        title=title,
        force=force,
        data_dir=data_dir,
        tolerance=tolerance,
        ensembles=ensembles,
        formats=("png", "svg") if svg else ("png",),
        log=lambda msg: err_console.print(plain(msg), style="dim"),
    )
    console.print(f"report written to {path}")


def compare(
    runs: Runs,
    root: Root = None,
    threads: Threads = None,
    metric: Annotated[
        Opt[str],
        typer.Option(help="test_acc, val_acc, train_acc, test_loss, test_ppl, ... (default: the task's)"),
    ] = None,
    table: Annotated[
        str, typer.Option(help="accuracy, learning, layers, params, winning or all.")
    ] = "accuracy",
    tolerance: Annotated[float, typer.Option(help="Winning ticket: within this of dense accuracy.")] = 0.005,
    csv: Annotated[Opt[Path], typer.Option(help="Also write the accuracy table as CSV.")] = None,
) -> None:
    """Print the main table: accuracy per pruning level for each experiment (mean ± std over seeds)."""
    from prunelab.analysis import tables as t
    from prunelab.analysis.runs import resolve_all

    choices = ("accuracy", "learning", "layers", "params", "winning", "all")
    if table not in choices:
        raise PrunelabError(f"--table {table!r}: choose one of {', '.join(choices)}")
    metrics = (
        "test_acc",
        "val_acc",
        "train_acc",
        "test_loss",
        "val_loss",
        "train_loss",
        "test_ppl",
        "val_ppl",
    )
    if metric is not None and metric not in metrics:
        raise PrunelabError(f"unknown metric {metric!r}; choose one of {', '.join(metrics)}")
    exps = resolve_all(runs, root)
    metric = metric or t.headline_metric(exps)
    if table in ("accuracy", "all"):
        main = t.accuracy_table(exps, metric=metric)
        _print(main)
        _save_csv(main, csv)
    if table in ("winning", "all", "accuracy") and all(e.spec.task.higher_is_better for e in exps):
        _print(t.winning_table(exps, tolerance=tolerance))
    if table in ("learning", "all"):
        for exp in exps:
            _print(t.learning_table(exp))
    if table in ("layers", "all"):
        for exp in exps:
            _print(t.layer_sparsity_table(exp))
    if table in ("params", "all"):
        _print(t.parameters_table([e.spec.model for e in exps], exps[0].spec.data))


def similarity(
    runs: Annotated[
        list[str], typer.Argument(help="One experiment (across its levels) or two (between them).")
    ],
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
    seeds: Annotated[Opt[str], typer.Option(help="Seeds, e.g. 0-2 (default: all with results).")] = None,
    reference: Annotated[
        str, typer.Option(help="One experiment: compare each level with 'previous' or a level number.")
    ] = "previous",
    layers: Annotated[bool, typer.Option(help="Show every layer, not only the overall row.")] = False,
    csv: Annotated[Opt[Path], typer.Option(help="Write all rows (per seed and layer) as CSV.")] = None,
    plot: Annotated[Opt[Path], typer.Option(help="Save a per-layer plot (.png/.svg).")] = None,
) -> None:
    """Jaccard similarity/distance and Hamming distance of masks, per level (mean over seeds)."""
    from prunelab.analysis import plots
    from prunelab.analysis.runs import average, resolve_all, series_names
    from prunelab.analysis.similarity import similarity_across_levels, similarity_between
    from prunelab.table import records_table

    _check_figure(plot)
    if len(runs) not in (1, 2):
        raise PrunelabError(
            "give one experiment (compared across its levels) or two (compared with each other)"
        )
    exps = resolve_all(runs, root)
    if len(exps) == 1:
        ref: str | int = reference
        if reference != "previous":
            try:
                ref = int(reference)
            except ValueError:
                raise PrunelabError(
                    f"--reference {reference!r}: write 'previous' or a level number"
                ) from None
        rows = similarity_across_levels(exps[0], reference=ref, seeds=_seeds(seeds))
        title = f"Mask similarity across levels of {exps[0].id} (against {reference})"
        name = series_names(exps)[0]
    else:
        rows = similarity_between(exps[0], exps[1], seeds=_seeds(seeds))
        name = " vs ".join(series_names(exps))
        title = f"Mask similarity: {name} (same seed)"
    shown = rows if layers else [r for r in rows if r["layer"] == "overall"]
    avg = average(
        shown, ("level", "layer"), ("jaccard", "jaccard_distance", "hamming", "density_a", "density_b")
    )
    cols = ["level", "layer", "jaccard", "jaccard_distance", "hamming", "density_a", "density_b", "seeds"]
    _print(records_table(title, avg, cols, formats={"density_a": "pct", "density_b": "pct"}))
    _save_csv(records_table(title, rows), csv)
    if plot is not None:
        _save_figure(plots.plot_similarity({name: rows}, title=title), plot)


def effective(
    run: Run,
    level: Annotated[Opt[int], typer.Option(help="Level (default: the last finished).")] = None,
    seed: Annotated[Opt[int], typer.Option(help="Seed (default: the first).")] = None,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
) -> None:
    """Explicit and effective sparsity per layer, and neuron sparsity, of one trained level."""
    from prunelab.analysis.effective import effective_sparsity, neuron_sparsity
    from prunelab.experiments import load_level
    from prunelab.table import records_table

    lv = load_level(run, level, seed=seed, root=root)
    where = f"{lv.experiment.id} seed {lv.seed} level {lv.level}"
    rows = effective_sparsity(lv.model, lv.mask, lv.experiment.spec.data_info.input_shape)
    fmt = {"sparsity": "pct", "effective_sparsity": "pct"}
    _print(records_table(f"Explicit and effective sparsity: {where}", rows, formats=fmt))
    cols = [
        "layer",
        "units",
        "dead_in",
        "inputs",
        "dead_out",
        "unit_density_min",
        "unit_density_median",
        "unit_density_max",
    ]
    _print(
        records_table(
            f"Neuron sparsity (dead_in: no incoming weight; dead_out: no outgoing weight): {where}",
            neuron_sparsity(lv.mask),
            cols,
            formats={c: "pct" for c in cols if c not in ("layer", "units", "inputs")},
        )
    )


def stability(
    runs: Runs,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
    layer: Annotated[
        Opt[str], typer.Option(help="Plot this layer's weight trajectories (with --plot).")
    ] = None,
    seed: Annotated[Opt[int], typer.Option(help="Seed for the trajectories (default: the first).")] = None,
    plot: Annotated[
        Opt[Path], typer.Option(help="Save a plot (.png/.svg): trajectories with --layer, else bars.")
    ] = None,
) -> None:
    """Weight stability: mean |w_i - w_{i-1}| per layer over consecutive levels (lower = more stable)."""
    from prunelab.analysis import plots
    from prunelab.analysis.runs import resolve_all, series_names
    from prunelab.analysis.stability import stability_summary, weight_stability, weight_trajectories
    from prunelab.table import records_table

    _check_figure(plot)
    if plot is None and (layer is not None or seed is not None):
        raise PrunelabError("--layer and --seed choose the trajectories to plot: give --plot FILE with them")
    exps = resolve_all(runs, root)
    names = series_names(exps)
    summaries = {n: stability_summary(weight_stability(e)) for n, e in zip(names, exps, strict=True)}
    rows = [r | {"experiment": n} for n, rs in summaries.items() for r in rs]
    _print(
        records_table(
            "Weight stability per layer", rows, ["experiment", "layer", "mean_abs_change", "std", "pairs"]
        )
    )
    if plot is not None:
        if layer is not None:
            traj = weight_trajectories(exps[0], layer, seed=seed)
            fig = plots.plot_trajectories(traj, names[0], plots.styles(exps)[0].color)
        else:
            fig = plots.plot_stability(summaries, dict(zip(names, plots.styles(exps), strict=True)))
        _save_figure(fig, plot)


def ensemble_cmd(
    runs: Runs,
    level: Annotated[Opt[int], typer.Option(help="The same level index in every member.")] = None,
    density: Annotated[Opt[float], typer.Option(help="Each member's level closest to this density.")] = None,
    seeds: Annotated[Opt[str], typer.Option(help="Seeds, e.g. 0-2 (default: all common ones).")] = None,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
    plot: Annotated[Opt[Path], typer.Option(help="Save the agreement heatmap (.png/.svg).")] = None,
) -> None:
    """Ensemble of subnetworks (averaged probabilities) beside each member, and their agreement.

    Members are taken at the same level (default: the last all finished) or closest to a density.
    """
    from prunelab.analysis import plots
    from prunelab.analysis.ensemble import Predictions, ensemble
    from prunelab.table import Table

    _check_figure(plot)
    r = ensemble(
        runs, level=level, density=density, seeds=_seeds(seeds), root=root, predictions=Predictions(data_dir)
    )
    rows = [
        [n, lv, d, (a, s)]
        for n, lv, d, a, s in zip(r.names, r.levels, r.densities, r.member_acc, r.member_acc_std, strict=True)
    ]
    rows.append(["ensemble", None, None, (r.ensemble_acc, r.ensemble_acc_std)])
    _print(
        Table(
            f"Ensemble (seeds {r.seeds})",
            ["member", "level", "density", "test acc"],
            rows,
            formats={"density": "pct", "test acc": "pm"},
        )
    )
    agree = [[n, *(float(v) for v in row)] for n, row in zip(r.names, r.agreement, strict=True)]
    _print(Table("Prediction agreement (fraction of test examples)", ["", *r.names], agree))
    if plot is not None:
        _save_figure(plots.plot_agreement(r.names, r.agreement), plot)


def mask_plot(
    run: Run,
    layer: Annotated[str, typer.Option(help="Layer name, e.g. conv2 or fc1.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Image file (.png, .svg or .pdf).")],
    level: Annotated[Opt[int], typer.Option(help="Level (default: the last finished).")] = None,
    seed: Annotated[Opt[int], typer.Option(help="Seed (default: the first).")] = None,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
) -> None:
    """Picture of a layer's mask and masked weights (red positive, blue negative, grey pruned)."""
    from prunelab.analysis import plots
    from prunelab.experiments import load_level
    from prunelab.pruning.layers import prunable_layers, resolve_layer

    _check_figure(out)
    lv = load_level(run, level, seed=seed, root=root)
    param = resolve_layer(layer, prunable_layers(lv.model)).param
    weight = dict(lv.model.named_parameters())[param]
    title = f"{lv.spec.label()}: {param.removesuffix('.weight')}, level {lv.level}, seed {lv.seed}"
    keep = weight.detach() != 0
    if param in lv.mask:
        keep = lv.mask[param]
    _save_figure(plots.plot_mask(weight, keep, title), out)


def heads(
    run: Run,
    level: Annotated[Opt[int], typer.Option(help="Level (default: the last finished).")] = None,
    seed: Annotated[Opt[int], typer.Option(help="Seed (default: the first).")] = None,
    batches: Annotated[
        int, typer.Option(min=1, max=10000, help="Validation batches to accumulate over.")
    ] = 10,
    plot: Annotated[Opt[Path], typer.Option(help="Heatmap path (.png/.svg/.pdf).")] = None,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
) -> None:
    """Attention-head importance of a transformer level (Michel et al. 2019): |dL/d gate| per head."""
    from prunelab.analysis.heads import importance_table, level_head_importance, plot_head_importance
    from prunelab.experiments import load_level

    _check_figure(plot)
    lv = load_level(run, level, seed=seed, root=root)
    importance, used = level_head_importance(lv, batches, data_dir)
    where = f"{lv.experiment.id} seed {lv.seed} level {lv.level}, {used} validation batches"
    _print(importance_table(importance, f"Head importance (per-layer normalised): {where}"))
    if plot is not None:
        _save_figure(plot_head_importance(importance, f"head importance: {where}"), plot)


def sensitivity(
    run: Run,
    level: Annotated[Opt[int], typer.Option(help="Level (default: the last finished).")] = None,
    seed: Annotated[Opt[int], typer.Option(help="Seed (default: the first).")] = None,
    method: Annotated[
        Opt[str],
        typer.Option(
            help=lambda: (
                "Pruning method applied to each layer alone (default: "
                f"{default_of('prunelab.analysis.sensitivity:sensitivity', 'method')})."
            )
        ),
    ] = None,
    layers: Annotated[str, typer.Option(help="Which layers (all, conv-only, fc-only).")] = "conv-only",
    exclude: Annotated[Opt[list[str]], typer.Option(help="Layers left out (repeat).")] = None,
    fractions: Annotated[
        str, typer.Option(help="Comma-separated fractions of each layer's units.")
    ] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    tolerance: Annotated[
        float, typer.Option(min=0, max=1, help="Accuracy drop allowed per layer when suggesting rates.")
    ] = 0.01,
    split: Annotated[str, typer.Option(help="val or test.")] = "val",
    plot: Annotated[
        Opt[Path], typer.Option(help="Figure path (.png/.svg/.pdf), like Li et al.'s Fig. 2.")
    ] = None,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
) -> None:
    """Each layer pruned alone at 10..90% of its units, accuracy without retraining (Li et al. 2017)."""
    from prunelab.analysis.sensitivity import level_sensitivity, plot_sensitivity
    from prunelab.cli.compress import _numbers
    from prunelab.experiments import load_level
    from prunelab.ui import console, plain

    if split not in ("val", "test"):
        raise SpecError(f"--split must be 'val' or 'test', got {split!r}")
    values = _numbers(fractions, float, "--fractions")
    _check_figure(plot)
    lv = load_level(run, level, seed=seed, root=root)
    method = method or default_of("prunelab.analysis.sensitivity:sensitivity", "method")
    result = level_sensitivity(
        lv, split, method=method, layers=layers, exclude=tuple(exclude or ()), fractions=values
    )
    where = f"{lv.experiment.id} seed {lv.seed} level {lv.level}, {method}, {split} split"
    _print(result.table(f"Sensitivity: {where}"))
    rates = result.rates(tolerance)
    console.print(
        plain(f"rates within {tolerance:.1%} of the unpruned accuracy, for a one-shot run (then fine-tune):")
    )
    console.print(plain("  --layer-rates " + ",".join(f"{k}={v:g}" for k, v in rates.items() if v > 0)))
    if plot is not None:
        _save_figure(plot_sensitivity(result, f"sensitivity: {where}"), plot)
