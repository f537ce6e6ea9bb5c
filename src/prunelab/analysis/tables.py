"""The report's tables, each as a :class:`Table` that prints in the terminal and writes CSV and HTML.

Accuracy per pruning iteration per method (Paganini & Forde 2020, Table 2), parameters left per pruning
fraction (Table 1), per-parameter sparsity including biases (Ou Yang & Xu, Table I), learning speed
and train-test gap per level, winning tickets, and any list of analysis records.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prunelab.analysis.runs import (
    RunRef,
    levels_of,
    resolve,
    resolve_all,
    seeds_of,
    series_names,
)
from prunelab.experiments.store import StoredExperiment
from prunelab.experiments.summary import winning_ticket
from prunelab.pruning.mask import prunable_names
from prunelab.stats import mean_std
from prunelab.table import Table


def _per_level(exp: StoredExperiment, key) -> dict[int, list]:
    out: dict[int, list] = {}
    for per_seed in exp.levels.values():
        for level, m in per_seed.items():
            out.setdefault(level, []).append(key(m))
    return out


def accuracy_table(
    runs: Sequence[RunRef],
    *,
    root: str | Path | None = None,
    metric: str = "test_acc",
    early_stop: bool = False,
    title: str | None = None,
) -> Table:
    """The main table (Paganini & Forde 2020, Table 2): per level, each experiment's mean ± std over seeds,
    followed by its control branches (random reinit, random mask) where it has them.

    One density column when all experiments reach the same density at each level (within 1%),
    else a density column per experiment (e.g. methods pruning at different rates). With
    ``early_stop``, each experiment's early-stop iteration (minimum validation loss) as well.
    This is the table ``prunelab show`` and ``prunelab compare`` print.
    """
    exps = resolve_all(runs, root)
    names = series_names(exps)
    acc = [_per_level(e, lambda m: m.value(metric)) for e in exps]
    dens = [{lv: mean_std(v)[0] for lv, v in _per_level(e, lambda m: m.density).items()} for e in exps]
    for exp, name, d in zip(exps, list(names), list(dens), strict=True):  # controls: the ticket's densities
        for control, per_seed in exp.controls.items():
            values: dict[int, list] = {}
            for levels in per_seed.values():
                for level, m in levels.items():
                    values.setdefault(level, []).append(m.value(metric))
            names.append(f"{name} ({control} control)")
            acc.append(values)
            dens.append({lv: d[lv] for lv in values if lv in d})
    levels = sorted(set().union(*acc))
    shared = all(max(ds) <= 1.01 * min(ds) for lv in levels if (ds := [d[lv] for d in dens if lv in d]))
    columns, rows = ["level"] + (["density"] if shared else []), []
    for level in levels:
        row: list[object] = [level]
        if shared:
            row.append(mean_std([d[level] for d in dens if level in d])[0])
        for a, d in zip(acc, dens, strict=True):
            values = [v for v in a.get(level, ()) if v is not None]  # no train metrics without training
            row.append(mean_std(values) if values else None)
            if not shared:
                row.append(d.get(level))
        rows.append(row)
    for n in names:
        columns += [n] if shared else [n, f"{n} density"]
    pair = "pm" if metric.endswith("acc") else "pmf"
    formats = dict.fromkeys(names, pair) | dict.fromkeys([c for c in columns if c.endswith("density")], "pct")
    if early_stop:
        stops = [_per_level(e, lambda m: m.early_stop_iteration) for e in exps]
        for row, level in zip(rows, levels, strict=True):
            row += [mean_std(s[level])[0] if level in s else None for s in stops]
        stop_columns = [
            f"{n} early-stop it" if len(exps) > 1 else "early-stop it" for n in series_names(exps)
        ]
        columns += stop_columns
        formats |= dict.fromkeys(stop_columns, "int")
    seeds = sorted(set().union(*(e.levels for e in exps)))
    return Table(
        title or f"{metric_name(metric)} per pruning level (mean ± std over seeds {seeds})",
        columns,
        rows,
        formats=formats,
        note="Level 0 is the dense network; each level prunes the previous level's survivors.",
    )


def metric_name(metric: str) -> str:
    """``test_ppl`` -> "test perplexity", ``val_acc`` -> "val acc"."""
    return metric.replace("_ppl", " perplexity").replace("_", " ")


def headline_metric(exps: Sequence[StoredExperiment]) -> str:
    """What the experiments are judged by: their task's metric (test accuracy, or a language model's
    test perplexity); accuracy when they mix tasks."""
    metrics = {exp.spec.task.metric for exp in exps}
    return metrics.pop() if len(metrics) == 1 else "test_acc"


def learning_table(run: RunRef, *, root: str | Path | None = None) -> Table:
    """Learning speed and generalisation per level: early-stop iteration (minimum validation loss),
    accuracy there, final train and test accuracy and their gap, mean over seeds."""
    exp = resolve(run, root)
    rows = []
    for level in sorted(_per_level(exp, lambda m: 0)):
        ms = [lv[level] for lv in exp.levels.values() if level in lv]
        rows.append(
            [
                level,
                mean_std([m.density for m in ms])[0],
                mean_std([m.early_stop_iteration for m in ms])[0],
                mean_std([m.early_stop.test_acc for m in ms]),
                mean_std([m.final.train_acc for m in ms]),
                mean_std([m.final.test_acc for m in ms]),
                mean_std([m.final.train_acc - m.final.test_acc for m in ms]),
            ]
        )
    cols = [
        "level",
        "density",
        "early-stop it",
        "test acc at early stop",
        "train acc",
        "test acc",
        "train-test gap",
    ]
    formats = {"density": "pct", "early-stop it": "int"} | {c: "pm" for c in cols[3:]}
    return Table(f"Learning speed and train-test gap: {exp.spec.label()}", cols, rows, formats=formats)


def parameters_table(
    models: Sequence[str],
    data: str = "fashion-mnist",
    fractions: Sequence[float] = (0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99),
) -> Table:
    """Paganini & Forde 2020, Table 1: parameters left (thousands) in each model at each pruning fraction.

    The fraction applies to the prunable weights (conv and linear); biases and norms stay.
    """
    from prunelab.data import resolve_dataset
    from prunelab.models import build_model

    info = resolve_dataset(data).info
    rows = []
    for name in dict.fromkeys(models):
        model = build_model(name, num_classes=info.num_classes, input_shape=info.input_shape, data=data)
        params = dict(model.named_parameters())
        prunable = sum(params[n].numel() for n in prunable_names(model))
        total = sum(p.numel() for p in params.values())
        rows.append([name, *(round((total - prunable * f) / 1000, 1) for f in fractions)])
    cols = [f"{f:g}" for f in fractions]
    return Table(
        f"Parameters left (thousands) at each pruning fraction, on {data}",
        ["model", *cols],
        rows,
        formats=dict.fromkeys(cols, "f1"),
        note="Pruning fractions apply to conv and linear weights; biases and normalisation parameters are kept.",
    )


def layer_sparsity_table(
    run: RunRef,
    *,
    seed: int | None = None,
    levels: Sequence[int] | None = None,
    root: str | Path | None = None,
) -> Table:
    """Ou Yang & Xu, Table I: sparsity (exact zeros) of every weight and bias at each level, one seed."""
    exp = resolve(run, root)
    seed = seeds_of(exp)[0] if seed is None else seed
    levels = list(levels) if levels is not None else levels_of(exp, seed)
    params = dict(exp.build_model().named_parameters())
    weights = {lv: exp.weights(seed, lv) for lv in levels}
    rows = []
    for name, p in params.items():
        zeros = [float((weights[lv][name] == 0).float().mean()) for lv in levels]
        rows.append([name, p.numel(), *zeros])
    total = sum(p.numel() for p in params.values())
    overall = [sum(int((weights[lv][n] == 0).sum()) for n in params) / total for lv in levels]
    rows.append(["all parameters", total, *overall])
    cols = ["parameter", "count", *(f"level {lv}" for lv in levels)]
    return Table(
        f"Sparsity per parameter (weights and biases), seed {seed}: {exp.spec.label()}",
        cols,
        rows,
        formats={c: "pct" for c in cols[2:]},
    )


def winning_table(
    runs: Sequence[RunRef], *, root: str | Path | None = None, tolerance: float = 0.005
) -> Table:
    """The sparsest level of each experiment within ``tolerance`` of dense test accuracy."""
    exps = resolve_all(runs, root)
    rows = []
    for name, exp in zip(series_names(exps), exps, strict=True):
        t = winning_ticket(exp, tolerance)
        if t is None:
            rows.append([name, None, None, None, None, None, None])
        else:
            rows.append(
                [
                    name,
                    t["level"],
                    t["density"],
                    t["test_acc"],
                    t["dense_test_acc"],
                    round(t["early_stop"]),
                    round(t["dense_early_stop"]),
                ]
            )
    cols = [
        "experiment",
        "level",
        "density",
        "test acc",
        "dense test acc",
        "early-stop it",
        "dense early-stop it",
    ]
    return Table(
        f"Winning tickets (sparsest level within {tolerance:.1%} of dense test accuracy)",
        cols,
        rows,
        formats={"density": "pct", "test acc": "pct", "dense test acc": "pct"},
        note="– : no pruned level stays within the tolerance.",
    )
