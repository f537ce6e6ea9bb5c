"""``prunelab count | export | bench | removal-table``: compression and deployment."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunelab.cli.options import DataDir, Device, Root, Threads, default_of
from prunelab.errors import SpecError

Run = Annotated[str, typer.Argument(help="Experiment id (or unique prefix), label, or folder.")]
Level = Annotated[
    Optional[int],  # noqa: UP045 - typer reads Optional on every supported Python
    typer.Option("--level", "-l", help="Level to use (default: the last finished)."),
]
Seed = Annotated[Optional[int], typer.Option(help="Replicate seed (default: the first).")]  # noqa: UP045
Control = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="A control branch (reinit, random-mask) instead of the ticket."),
]
Approximate = Annotated[
    bool,
    typer.Option(
        "--approximate",
        help="Also remove dead channels whose constant output feeds a zero-padded conv "
        "(border outputs then differ slightly from the masked model's).",
    ),
]


def _numbers(text: str, kind: type, what: str) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise SpecError(f"{what} must be comma-separated numbers, got {shown!r}") from None
    if not values:
        raise SpecError(f"{what} is empty")
    return values


def _device(name: str) -> str:
    """``auto`` as the device it stands for here (cuda when there is a GPU)."""
    if name != "auto":
        return name
    from prunelab.training.device import resolve_device

    return resolve_device(name).type


def _blocks(result) -> str:
    """The residual blocks a compaction replaced by their shortcut, for a table or a line."""
    return ", ".join(result.removed_blocks) or "none"


def _groups(result) -> str:
    """The groups a compaction removed from grouped convs, for a table or a line."""
    return (
        "; ".join(f"{conv} {', '.join(map(str, g))}" for conv, g in result.removed_groups.items()) or "none"
    )


def export(
    run: Run,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (must be new or empty).")],
    level: Level = None,
    seed: Seed = None,
    control: Control = None,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace an earlier export in that folder (never anything else); with --sparse, "
            "write the dense model of a level that has no unstructured sparsity."
        ),
    ] = False,
    onnx: Annotated[bool, typer.Option(help="Also write model.onnx (pip install prunelab[onnx]).")] = False,
    approximate: Approximate = False,
    sparse: Annotated[
        bool,
        typer.Option(
            help="Also run unstructured zeros sparse: each layer whose sparse format times faster than "
            "dense (at --batch-size, --threads, default 1) is stored sparse and load_compact runs it so."
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(help="With --sparse: the batch size the formats are timed at.", min=1, max=65536)
    ] = 1,
) -> None:
    """Write the physically compacted model: safetensors weights + JSON plan (load_compact).

    With --sparse, the formats are timed at --threads (default 1)."""
    from prunelab.compress.export import check_target, export_compact, read_plan, require_onnx
    from prunelab.compress.level import compact_level, sparsify_level
    from prunelab.experiments.store import find_experiment, results_root
    from prunelab.models import count_parameters
    from prunelab.pruning import sparsity_report
    from prunelab.table import Table
    from prunelab.ui import console, plain, show

    protect = [results_root(root)]
    task = find_experiment(run, root).spec.task
    if not task.compacts:  # a language model: its library's own folder, the pruned weights at zero
        _refuse_for_saved(run, sparse=sparse, onnx=onnx, approximate=approximate)
        _export_as_saved(task, run, out, level, seed, control, root, force, protect)
        return
    check_target(out, force, protect)  # refuse before any work
    if onnx and sparse:
        raise SpecError(
            "--onnx and --sparse cannot be combined: ONNX has no place for prunelab's sparse layers"
        )
    if onnx:
        require_onnx()
    item = compact_level(run, level, seed=seed, control=control, root=root, exact=not approximate)
    fast = sparsify_level(item, batch_size=batch_size, threads=threads or 1, force=force) if sparse else None
    export_compact(
        item.result,
        out,
        protect=[*protect, item.loaded.experiment.store.root],
        model=item.loaded.spec.model,
        num_classes=item.num_classes,
        input_shape=item.input_shape,
        image_size=item.loaded.spec.image_size,
        data=item.loaded.spec.data,
        force=force,
        onnx=onnx,
        source=item.source(),
        sparse=fast,
    )
    dense = count_parameters(item.loaded.model)
    small = count_parameters(item.result.model)
    rows = [
        ("parameters (dense)", dense),
        (
            "parameters kept by the mask (non-zero)",
            sparsity_report(item.loaded.model, item.loaded.mask).total_kept,
        ),
        ("parameters after removal", small),
        ("residual blocks removed", _blocks(item.result)),
        ("conv groups removed", _groups(item.result)),
        ("units removed", sum(item.result.removed.values())),
        ("dead units kept (exactness)", sum(item.result.kept_dead.values())),
        ("max |compact - masked| output", item.result.max_error),
    ]
    if fast is not None:
        rows += [
            (f"layers run sparse (timed at batch {batch_size}, {threads or 1} thread(s))", f"{len(fast.used)} of {len(fast.choices)}"),
            ("max |sparse - compact| output", fast.max_error),
        ]  # fmt: skip
    show(Table(f"{item.loaded.experiment.id} level {item.loaded.level} -> {out}", ["", "value"], rows))
    if fast is not None:
        show(Table("sparse layers", list(fast.COLUMNS), fast.rows()))
    elif sparse:
        console.print(
            plain("no unstructured sparsity to run sparse: the dense (compacted) model was written (--force)")
        )
    hf = read_plan(out).get("save_pretrained")
    if hf:
        console.print(hf)


def _refuse_for_saved(run: str, **given: bool) -> None:
    """The compaction flags mean nothing for an export as a save_pretrained folder: refuse them by name."""
    flags = [f"--{name}" for name, on in given.items() if on]
    if flags:
        raise SpecError(
            f"{', '.join(flags)}: {run} is a language model, exported as a save_pretrained folder with the "
            "pruned weights at zero (transformers loads it; it has no compacted or sparse layers); "
            f"export it without {' and '.join(flags)}"
        )


def _export_as_saved(task, run, out, level, seed, control, root, force, protect) -> None:
    """``export`` for a task that does not compact: what the task writes, and each layer's density."""
    from prunelab.compress.lm_export import layer_patterns
    from prunelab.experiments import load_level
    from prunelab.table import records_table
    from prunelab.ui import console, plain, show

    loaded = load_level(run, level, seed=seed, control=control, root=root)
    path = task.export(loaded, out, force=force, protect=[*protect, loaded.experiment.store.root])
    show(records_table(f"{loaded.experiment.id} level {loaded.level} -> {path}", layer_patterns(loaded.mask),
                       formats={"density": "pct"}))  # fmt: skip
    console.print(
        plain(
            f"{path}: a save_pretrained folder (AutoModelForCausalLM.from_pretrained loads it; its logits checked "
            f"against the pruned model's), the pruned weights at zero; masks.safetensors beside it"
        )
    )


def bench(
    run: Run,
    level: Annotated[
        Optional[list[int]],  # noqa: UP045
        typer.Option("--level", "-l", help="Level(s) to time; repeat for a sweep (default: the last)."),
    ] = None,
    seed: Seed = None,
    control: Control = None,
    root: Root = None,
    data_dir: DataDir = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,16,64,256",
    repeats: Annotated[int, typer.Option(help="Timed repetitions per variant and batch size.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 3,
    threads: Annotated[
        int,
        typer.Option(
            help="CPU threads torch runs while timing (pinned; the latencies are per thread count)."
        ),
    ] = 1,
    device: Device = "cpu",
    sparse: Annotated[
        bool,
        typer.Option(
            help="Include the sparse version (compacted, then each layer in its fastest sparse format "
            "where that beats dense at each batch size) and say which layers run sparse."
        ),
    ] = True,
    tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Text models: sequence length to time (default: the data's).", min=1),
    ] = None,
    plot: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Figure path (default: prunelab-bench-<experiment>.png)."),
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not draw the figure.")] = False,
    json_out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--json", help="Also write the timings as JSON."),
    ] = None,
) -> None:
    """Latency of dense, masked, compacted and sparse versions over batch sizes, with FLOP ratios."""
    from prunelab.analysis.plots import figure_format
    from prunelab.compress.latency import bench_level, plot_latency
    from prunelab.experiments.store import find_experiment
    from prunelab.io import atomic_write_json
    from prunelab.table import Table
    from prunelab.ui import console, show

    sizes = _numbers(batch_sizes, int, "--batch-sizes")
    plot_path = None if no_plot else plot or Path(f"prunelab-bench-{run[:12]}.png")
    if plot_path is not None:
        figure_format(plot_path)
    exp = find_experiment(run, root)
    result = bench_level(
        exp.directory,
        level or [None],
        seed=seed,
        control=control,
        root=root,
        batch_sizes=sizes,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        device=_device(device),
        sparse=sparse,
        tokens=tokens,
    )
    title = f"{exp.id}: latency on {result.device} ({result.threads} thread(s), {repeats} repeats)"
    show(Table(title, list(result.COLUMNS), result.rows()))
    console.print("speed-up = dense latency / latency; FLOP ratio = dense FLOPs / non-zero FLOPs")
    for table_title, columns, rows in result.sparse_tables():
        show(Table(table_title, columns, rows))
    if result.sparse_choices:
        console.print(
            "each cell: the fastest sparse format and its speed-up over the dense layer; dense where none is faster"
        )
    if plot_path is not None:
        path = plot_latency(result, plot or Path(f"prunelab-bench-{exp.id}.png"), title)
        console.print(f"plot: {path}")
    if json_out is not None:
        atomic_write_json(json_out, result.to_json())


def count(
    run: Run,
    level: Level = None,
    seed: Seed = None,
    control: Control = None,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
    per_layer: Annotated[bool, typer.Option(help="Also print one row per layer.")] = False,
    approximate: Approximate = False,
) -> None:
    """Parameters, MACs and FLOPs of the dense, masked (non-zero) and compacted model."""
    from prunelab.compress.count import count as count_model
    from prunelab.compress.level import compact_level
    from prunelab.compress.lm_export import layer_patterns
    from prunelab.experiments.store import find_experiment
    from prunelab.table import Table, records_table
    from prunelab.ui import console, show

    if not find_experiment(run, root).spec.task.compacts:  # unstructured or N:M: nothing to remove
        from prunelab.experiments import load_level

        loaded = load_level(run, level, seed=seed, control=control, root=root)
        shape = tuple(loaded.spec.data_info.input_shape)
        report = count_model(loaded.model, shape, loaded.mask, None)
        title = f"{loaded.experiment.id} level {loaded.level} (per sequence of {shape[0]} tokens; FLOPs = 2 x MACs)"
        show(Table(title, ["", "dense", "masked (non-zero)"], [r[:3] for r in report.summary_rows()]))
        show(records_table("Density and N:M pattern per layer", layer_patterns(loaded.mask),
                           formats={"density": "pct"}))  # fmt: skip
        if per_layer:
            columns = ["layer", "params", "masked", "compact", "FLOPs", "masked FLOPs", "compact FLOPs"]
            show(Table("", columns, report.layer_rows()))
        return
    item = compact_level(run, level, seed=seed, control=control, root=root, exact=not approximate)
    report = count_model(item.loaded.model, item.input_shape, item.loaded.mask, item.result.model)
    rows = [
        (name, dense, masked, small, small / dense if dense and small is not None else None)
        for name, dense, masked, small in report.summary_rows()
    ]
    title = f"{item.loaded.experiment.id} level {item.loaded.level} (per example; FLOPs = 2 x MACs)"
    show(Table(title, ["", "dense", "masked (non-zero)", "compact", "compact / dense"], rows))
    if item.result.removed_blocks:
        console.print(f"residual blocks removed: {_blocks(item.result)}")
    if item.result.removed_groups:
        console.print(f"conv groups removed: {_groups(item.result)}")
    if per_layer:
        columns = ["layer", "params", "masked", "compact", "FLOPs", "masked FLOPs", "compact FLOPs"]
        show(Table("", columns, report.layer_rows()))


def removal_table(
    model: Annotated[str, typer.Argument(help="Model name (see `prunelab models`).")],
    data: Annotated[
        str, typer.Option(help="Dataset whose input shape and classes size the model.")
    ] = "cifar10",
    fractions: Annotated[
        str, typer.Option(help="Comma-separated pruning fractions.")
    ] = "0.1,0.3,0.5,0.7,0.9",
    method: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help=lambda: (
                "A structured pruning method (default: "
                f"{default_of('prunelab.compress.count:removal_table', 'method')})."
            )
        ),
    ] = None,
    structure: Annotated[
        str, typer.Option(help="structured-output or structured-input.")
    ] = "structured-output",
    layers: Annotated[
        str, typer.Option(help="all, conv-only or fc-only (output layer never pruned).")
    ] = "all",
    threads: Threads = None,
) -> None:
    """Ou Yang & Xu's Fig. 2: parameters left by masking against parameters left after real removal."""
    from prunelab.compress.count import removal_table as make_table
    from prunelab.data import resolve_dataset
    from prunelab.table import Table
    from prunelab.ui import show

    info = resolve_dataset(data).info
    values = _numbers(fractions, float, "--fractions")
    method = method or default_of("prunelab.compress.count:removal_table", "method")
    rows = make_table(
        model,
        values,
        input_shape=info.input_shape,
        num_classes=info.num_classes,
        method=method,
        structure=structure,
        layers=layers,
    )
    columns = ["fraction", "dense", "masked (non-zero)", "masked %", "after removal", "removal %"]
    body = [(r.fraction, r.dense, r.masked, r.masked_pct, r.removed, r.removed_pct) for r in rows]
    show(Table(f"{model} on {data}: parameters left, {method} {structure}", columns, body))


def shrink(
    run: Run,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (must be new or empty).")],
    level: Level = None,
    seed: Seed = None,
    variance: Annotated[
        float, typer.Option(help="Explained-variance fraction each layer keeps, in (0, 1].")
    ] = 0.95,
    layers: Annotated[
        str, typer.Option(help="Which layers (all, conv-only, fc-only); never the output layer.")
    ] = "all",
    exclude: Annotated[Optional[list[str]], typer.Option(help="Layers left whole (repeat).")] = None,  # noqa: UP045
    images: Annotated[int, typer.Option(help="Calibration images from the training data.")] = 256,
    plot: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Explained-variance curves per layer (.png/.svg/.pdf)."),
    ] = None,
    root: Root = None,
    data_dir: DataDir = None,
    threads: Threads = None,
    force: Annotated[bool, typer.Option(help="Replace an earlier export in that folder.")] = False,
) -> None:
    """PCA layer shrinking (Zhang et al.): each layer a rank-k factorisation fitted to its outputs."""
    from prunelab.analysis.plots import figure_format, write_figure
    from prunelab.compress.compact import CompactResult, layer_plan
    from prunelab.compress.count import total_flops
    from prunelab.compress.export import check_target, export_compact
    from prunelab.compress.pca import check_variance, plot_explained, shrink_level
    from prunelab.experiments import load_level
    from prunelab.experiments.store import results_root
    from prunelab.models import count_parameters
    from prunelab.table import Table
    from prunelab.training.evaluation import evaluate
    from prunelab.ui import console, plain, show

    protect = [results_root(root)]
    check_target(out, force, protect)
    check_variance(variance)
    if plot is not None:
        figure_format(plot)
    loaded = load_level(run, level, seed=seed, root=root)
    result = shrink_level(
        loaded,
        variance=variance,
        layers=layers,
        exclude=tuple(exclude or ()),
        images=images,
        data_dir=data_dir,
    )
    shape = tuple(loaded.spec.data_info.input_shape)
    export_compact(
        CompactResult(result.model, layer_plan(result.model), {}), out, protect=[*protect, loaded.experiment.store.root],
        model=loaded.spec.model, num_classes=loaded.spec.data_info.num_classes, input_shape=shape,
        image_size=loaded.spec.image_size, data=loaded.spec.data, force=force, source={"experiment": loaded.experiment.id, "level": loaded.level, "pca_variance": variance},
    )  # fmt: skip
    rows = []
    for name, curve in result.explained.items():
        k = result.ranks.get(name)
        rows.append(
            (
                name,
                len(curve),
                k if k else "dense",
                round(100 * curve[(k or len(curve)) - 1], 2),
                result.kept_dense.get(name, ""),
            )
        )
    show(Table(f"{loaded.experiment.id} level {loaded.level}: PCA at {variance:.0%} explained variance -> {out}",
               ["layer", "outputs", "rank kept", "explained %", "note"], rows))  # fmt: skip
    data = loaded.spec.load_data(data_dir)
    dense = loaded.model.eval()
    summary = [
        ("parameters", count_parameters(dense), count_parameters(result.model)),
        ("FLOPs per example", total_flops(dense, shape), total_flops(result.model, shape)),
        (
            "test accuracy",
            round(evaluate(dense, data.test)[1], 4),
            round(evaluate(result.model, data.test)[1], 4),
        ),
    ]
    show(Table("", ["", "level", "shrunk"], summary))
    if plot is not None:
        console.print(
            plain(
                f"plot written to {write_figure(plot_explained(result, f'{loaded.experiment.id} explained variance'), plot)}"
            )
        )


def groups(
    model: Annotated[
        str,
        typer.Argument(
            help="Any --model form: a zoo name, torchvision:NAME, timm:NAME, hf:PATH, FILE.py:FACTORY."
        ),
    ],
    data: Annotated[
        str, typer.Option(help="Dataset whose input shape and classes size the model (as for run).")
    ] = "fashion-mnist",
    image_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Resize the input batches to this size as they enter the model (as for run)."),
    ] = None,
    members: Annotated[
        bool, typer.Option(help="List every member (layer, dimension) of each group.")
    ] = False,
    data_dir: DataDir = None,
    threads: Threads = None,
) -> None:
    """The coupled groups of a model: what shrinks together when structured pruning removes a unit,
    and which channels are kept whole, and why."""
    import torch

    from prunelab.coupling import discover
    from prunelab.data import resolve_dataset
    from prunelab.models import build_model, example_input
    from prunelab.table import Table
    from prunelab.ui import console, show

    info = resolve_dataset(data).info
    net = build_model(model, num_classes=info.num_classes, input_shape=info.input_shape, image_size=image_size,
                      data=data, seed=0).eval()  # fmt: skip
    x = example_input(net, info.input_shape, 1, generator=torch.Generator().manual_seed(0))
    found = discover(net, x)
    rows = []
    for g in found.prunable():
        layers = g.layers()
        shown = layers if members else layers[:3] + ([f"+{len(layers) - 3}"] if len(layers) > 3 else [])
        rows.append((g.name, g.kind, g.count, len(g.frozen) or "", " ".join(shown)))
    shape = "x".join(map(str, info.input_shape))
    shape += f" resized to {image_size}x{image_size}" if image_size else ""
    title = f"Coupled groups of {model} ({shape} input): each unit leaves every layer listed (:in = its input side)"
    show(Table(title, ["group", "kind", "units", "frozen", "layers"], rows))
    frozen = found.frozen_reasons()
    if frozen:
        show(Table("Kept whole (frozen), and why", ["units", "reason", "where"], frozen))
    for error in found.errors:
        console.print(f"note: {error}")
