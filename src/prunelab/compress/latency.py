"""Inference latency of dense, masked, compacted and sparse versions over a sweep of batch sizes.

Method: threads pinned and denormals flushed (CPU) for the whole measurement and restored after;
each variant is warmed up, then repetitions are interleaved (every repetition runs every variant
once, in rotating order) so that a slow moment of a shared machine hits all variants alike; the
median and 90th percentile are reported. Each timed call directly follows an untimed call of the
same variant, so caches hold that variant's weights, as in a server running one model. CPU times
come from ``perf_counter``, GPU times from CUDA events. Speed-up (dense / variant latency) is shown
beside the FLOP ratio (dense / variant non-zero FLOPs), as in Ou Yang & Xu's Figs. 6 and 7.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from prunelab.compress.compact import compact
from prunelab.compress.count import nonzero_flops
from prunelab.compress.level import level_input_shape
from prunelab.compress.sparse import LayerChoice, sparsify
from prunelab.errors import PrunelabError, SpecError
from prunelab.experiments import load_level
from prunelab.models import count_parameters, example_input
from prunelab.models.encoder import is_encoder
from prunelab.pruning import Mask, sparsity_report

BATCH_SIZES = (1, 16, 64, 256)


def flush_denormal_enabled() -> bool:
    """Whether float32 denormals are currently flushed to zero."""
    return bool(torch.tensor([1e-39]) * 1.0 == 0)


@contextmanager
def pinned(threads: int | None) -> Iterator[None]:
    """A fixed intra-op thread count and flushed denormals while timing; both restored after."""
    old_threads, old_flush = torch.get_num_threads(), flush_denormal_enabled()
    if threads is not None:
        if threads < 1:
            raise PrunelabError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.set_flush_denormal(old_flush)


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Milliseconds one call takes: CUDA events on a GPU, perf_counter on CPU."""
    if device.type == "cuda":

        def cuda_ms(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return cuda_ms

    def cpu_ms(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return cpu_ms


@torch.inference_mode()
def time_interleaved(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    *,
    repeats: int = 20,
    warmup: int = 3,
    rewarm: int = 1,
) -> dict[str, list[float]]:
    """Per model, ``repeats`` latencies (ms) of ``model(x)``, measured interleaved after a warm-up.

    Each timed call follows ``rewarm`` untimed calls of the same model, so that every model is
    timed with its own weights in cache, as when it serves alone, not after another model evicted
    them (which penalises small sparse models most).
    """
    if repeats < 1 or warmup < 0 or rewarm < 0:
        raise PrunelabError(
            f"repeats must be >= 1, warmup and rewarm >= 0; got {repeats}, {warmup}, {rewarm}"
        )
    names = list(models)
    for name in names:
        for _ in range(warmup):
            models[name](x)
    timer = _timer(x.device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for i in range(len(names)):
            model = models[names[(r + i) % len(names)]]
            for _ in range(rewarm):
                model(x)
            samples[names[(r + i) % len(names)]].append(timer(lambda model=model: model(x)))
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass
class Variant:
    """One version of a model to time; ``build`` makes a batch-size-specific one (sparse layers)."""

    name: str
    params: int
    flops: int
    model: nn.Module | None = None
    build: Callable[[torch.Tensor], nn.Module] | None = None
    choices: dict[int, list[LayerChoice]] | None = None  # a sparse builder's decisions, by batch size

    @classmethod
    def of(cls, name: str, model: nn.Module, input_shape: Sequence[int]) -> Variant:
        """``model`` as it is: its parameter count and its FLOPs per example (every weight counted)."""
        from prunelab.compress.count import total_flops

        return cls(name, count_parameters(model), total_flops(model, input_shape), model=model)


@dataclass(frozen=True)
class Timing:
    label: str
    variant: str
    batch_size: int
    median_ms: float
    p90_ms: float
    params: int
    flops: int


@dataclass
class BenchResult:
    """Timings of every (label, variant, batch size); ``label`` tells levels apart."""

    timings: list[Timing] = field(default_factory=list)
    device: str = "cpu"
    threads: int = 1
    repeats: int = 0
    sparse_choices: dict[tuple[str, int], list[LayerChoice]] = field(default_factory=dict)

    def find(self, label: str, variant: str, batch_size: int) -> Timing | None:
        for t in self.timings:
            if (t.label, t.variant, t.batch_size) == (label, variant, batch_size):
                return t
        return None

    def speedup(self, t: Timing) -> float | None:
        dense = self.find(t.label, "dense", t.batch_size)
        return dense.median_ms / t.median_ms if dense and t.median_ms > 0 else None

    def flop_ratio(self, t: Timing) -> float | None:
        dense = self.find(t.label, "dense", t.batch_size)
        return dense.flops / t.flops if dense and t.flops else None

    def rows(self) -> list[tuple]:
        return [
            (
                t.label,
                t.variant,
                t.batch_size,
                t.median_ms,
                t.p90_ms,
                self.speedup(t),
                self.flop_ratio(t),
                t.params,
            )
            for t in self.timings
        ]

    COLUMNS = ("level", "variant", "batch", "median ms", "p90 ms", "speed-up", "FLOP ratio", "parameters")

    def sparse_tables(self) -> list[tuple[str, list[str], list[tuple]]]:
        """Per level, a title, columns and one row per layer tried sparse: its zeros and, per batch
        size, the format that ran and its speed-up over the dense layer (or dense)."""
        tables = []
        for label in dict.fromkeys(label for label, _ in self.sparse_choices):
            by_batch = {b: cs for (lb, b), cs in self.sparse_choices.items() if lb == label}
            zeros = {c.layer: c.sparsity for cs in by_batch.values() for c in cs if c.sparse_ms is not None}
            cells = {(b, c.layer): c.summary() for b, cs in by_batch.items() for c in cs}
            rows = [
                (name, round(100 * z, 1), *(cells.get((b, name), "") for b in by_batch))
                for name, z in zeros.items()
            ]
            summary = "; ".join(
                f"batch {b}: {sum(c.used for c in cs)} of {len(cs)} layers sparse"
                for b, cs in by_batch.items()
            )
            columns = ["layer", "zeros %", *(f"batch {b}" for b in by_batch)]
            tables.append((f"level {label}, the sparse version ({summary})", columns, rows))
        return tables

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "threads": self.threads,
            "repeats": self.repeats,
            "timings": [
                asdict(t) | {"speedup": self.speedup(t), "flop_ratio": self.flop_ratio(t)}
                for t in self.timings
            ],
            "sparse_layers": [
                {"level": label, "batch_size": batch, **asdict(c)}
                for (label, batch), choices in self.sparse_choices.items()
                for c in choices
            ],
        }


def benchmark(
    variants: Sequence[Variant],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    *,
    label: str = "",
    repeats: int = 20,
    warmup: int = 3,
    rewarm: int = 1,
    threads: int | None = 1,
    device: str | torch.device = "cpu",
    result: BenchResult | None = None,
    seed: int = 0,
) -> BenchResult:
    """Time every variant at every batch size (see the module docstring for the method)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunelabError("device 'cuda' was asked for but no CUDA GPU is available")
    result = result if result is not None else BenchResult(device=str(device), repeats=repeats)
    generator = torch.Generator().manual_seed(seed)
    with pinned(threads if device.type == "cpu" else None):
        result.threads = torch.get_num_threads()
        for batch in batch_sizes:
            if batch < 1:
                raise PrunelabError(f"batch sizes must be positive, got {batch}")
            probe = next((v.model for v in variants if v.model is not None), None)
            if probe is not None:
                x = example_input(probe, input_shape, batch, generator=generator, device=device)
            else:
                x = torch.randn(batch, *input_shape, generator=generator).to(device)
            models = {}
            for v in variants:
                model = v.build(x) if v.build is not None else v.model
                if model is None:
                    raise PrunelabError(f"variant {v.name!r} has neither a model nor a builder")
                models[v.name] = model.to(device).eval()
                if v.choices is not None and batch in v.choices:
                    result.sparse_choices[(label, batch)] = v.choices[batch]
            samples = time_interleaved(models, x, repeats=repeats, warmup=warmup, rewarm=rewarm)
            for v in variants:
                s = samples[v.name]
                result.timings.append(
                    Timing(label, v.name, batch, statistics.median(s), percentile(s, 0.9), v.params, v.flops)
                )
    return result


def standard_variants(
    model: nn.Module,
    mask: Mask,
    input_shape: Sequence[int],
    *,
    dense: nn.Module | None = None,
    sparse: bool = True,
    sparse_repeats: int = 10,
    compacts: bool = True,
) -> list[Variant]:
    """dense / masked / compact / sparse versions of a masked model.

    ``sparse`` is the compacted model with each layer swapped for its fastest sparse format where
    that beats dense, decided anew at every batch size (its decisions are kept in the variant's
    ``choices``). ``dense`` is the unpruned network (same architecture, no zeros); default:
    ``model`` with its zeros refilled from a normal draw, which times the same as the trained dense
    network. ``compacts=False`` (a language model's unstructured or N:M zeros: nothing to remove)
    leaves out the compact version; the sparse one is then the masked model made sparse.
    """
    masked = copy.deepcopy(model).eval()
    mask.apply(masked)
    if dense is None:
        dense = copy.deepcopy(masked)
        with torch.no_grad():
            for p in dense.parameters():
                p.copy_(torch.where(p == 0, torch.randn_like(p) * 0.01, p))

    def flops(m: nn.Module, mask_=None) -> int:
        return sum(nonzero_flops(m, input_shape, mask_).values())

    kept = sparsity_report(masked, mask).total_kept
    variants = [
        Variant("dense", count_parameters(dense), flops(dense), model=dense),
        Variant("masked", kept, flops(masked, mask), model=masked),
    ]
    small = masked
    if compacts:
        small = compact(masked, mask, example_input(masked, input_shape)).model
        variants.append(Variant("compact", count_parameters(small), flops(small), model=small))
    if sparse:
        variants.append(sparse_variant(small, kept, flops(masked, mask), repeats=sparse_repeats))
    return variants


def sparse_variant(
    model: nn.Module, params: int, flops: int, *, repeats: int = 10, name: str = "sparse"
) -> Variant:
    """``model`` (its zeros as the mask) made sparse at each batch size it is timed at, the
    decisions kept in the variant's ``choices``."""
    choices: dict[int, list[LayerChoice]] = {}

    def build(x: torch.Tensor) -> nn.Module:
        result = sparsify(model, x, repeats=repeats)
        choices[x.shape[0]] = result.choices
        return result.model

    return Variant(name, params, flops, build=build, choices=choices)


def check_bench_settings(
    batch_sizes: Sequence[int], repeats: int, warmup: int, threads: int | None, device: str
) -> None:
    """Refuse, before any work, settings a benchmark cannot run with."""
    if device not in ("cpu", "cuda"):
        raise SpecError(f"device {device!r}: benchmarks run on 'cpu' or 'cuda'")
    bad = [b for b in batch_sizes if not 1 <= b <= MAX_BATCH]
    if bad or not batch_sizes:
        raise SpecError(f"batch sizes must be in 1..{MAX_BATCH:,}, got {list(batch_sizes)[:8]}")
    if not 1 <= repeats <= 100_000 or not 0 <= warmup <= 100_000:
        raise SpecError(f"repeats must be in 1..100,000 and warmup in 0..100,000, got {repeats} and {warmup}")
    if threads is not None and not 1 <= threads <= 1024:
        raise SpecError(f"threads must be in 1..1024, got {threads}")


MAX_BATCH = 65_536


def bench_level(
    run: str | Path,
    levels: Sequence[int | None] = (None,),
    *,
    seed: int | None = None,
    control: str | None = None,
    root: str | Path | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
    device: str = "cpu",
    sparse: bool = True,
    tokens: int | None = None,
) -> BenchResult:
    """Latency of each level of experiment ``run`` in its dense, masked, compact and sparse versions.

    A text model reads sequences of ``tokens`` tokens (default: the data's length).
    """
    check_bench_settings(batch_sizes, repeats, warmup, threads, device)
    if device == "cuda" and not torch.cuda.is_available():
        raise PrunelabError("device 'cuda' was asked for but no CUDA GPU is available")
    result = BenchResult(device=device, repeats=repeats)
    for level in levels:
        loaded = load_level(run, level, seed=seed, control=control, root=root)
        shape = level_input_shape(loaded)
        if tokens is not None:
            shape = _token_shape(loaded, tokens)
        dense = loaded.spec.build_model(pretrained=False)
        variants = standard_variants(
            loaded.model, loaded.mask, shape, dense=dense, sparse=sparse, compacts=loaded.spec.task.compacts
        )
        benchmark(
            variants,
            shape,
            batch_sizes,
            label=str(loaded.level),
            repeats=repeats,
            warmup=warmup,
            threads=threads,
            device=device,
            result=result,
        )
    return result


def _token_shape(loaded, tokens: int) -> tuple[int]:
    """The input shape of ``tokens``-long sequences, refused for a model that does not read tokens."""
    if not is_encoder(loaded.model):
        raise SpecError(
            f"--tokens applies to text models; {loaded.spec.model} reads inputs of shape "
            f"{tuple(level_input_shape(loaded))}"
        )
    longest = int(getattr(loaded.model.model.config, "max_position_embeddings", tokens))
    if not 1 <= tokens <= longest:
        raise SpecError(f"--tokens must be in 1..{longest} (the model's position embeddings), got {tokens}")
    return (tokens,)


def plot_latency(result: BenchResult, path: str | Path, title: str = "") -> Path:
    """Ou Yang & Xu, Figs. 6 and 7: latency against batch size (last level) and against parameters."""
    from prunelab.analysis.plots import write_figure

    path = Path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    labels = list(dict.fromkeys(t.label for t in result.timings))
    variants = list(dict.fromkeys(t.variant for t in result.timings))
    batches = sorted({t.batch_size for t in result.timings})
    last = labels[-1] if labels else ""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for v in variants:
        ts = [t for t in result.timings if t.label == last and t.variant == v]
        xs, med, p90 = [t.batch_size for t in ts], [t.median_ms for t in ts], [t.p90_ms for t in ts]
        left.plot(xs, med, marker="o", label=v)
        left.fill_between(xs, med, p90, alpha=0.15)
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="latency (ms): median, band to p90")
    left.set_xticks(batches, [str(b) for b in batches])
    left.set_title(f"inference time vs batch size (level {last})")
    left.legend()
    markers = dict(zip(variants, "osD^v<>", strict=False))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, b in enumerate(batches):
        for v in variants:
            ts = sorted(
                (t for t in result.timings if t.variant == v and t.batch_size == b), key=lambda t: t.params
            )
            right.plot(
                [t.params for t in ts],
                [t.median_ms for t in ts],
                marker=markers[v],
                linestyle="-" if v == "compact" else "none",
                color=colors[i % len(colors)],
            )
    handles = [
        Line2D([], [], color=colors[i % len(colors)], label=f"batch {b}") for i, b in enumerate(batches)
    ]
    handles += [Line2D([], [], color="gray", marker=m, linestyle="none", label=v) for v, m in markers.items()]
    right.set(xscale="log", yscale="log", xlabel="parameters (non-zero)", ylabel="latency (ms, median)")
    right.set_title("inference time vs parameters (line: compacted)")
    right.legend(handles=handles, fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        write_figure(fig, path)
    finally:
        plt.close(fig)
    return path
