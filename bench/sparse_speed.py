"""Unstructured sparsity on a CPU: prunelab's sparse Linear against dense, per layer and end to end.

Prints, from one run on this machine, at 1 and at 2 threads (pinned; denormals flushed; dense and
sparse repetitions interleaved, see prunelab.compress.latency):
  * the machine: CPU, cores, load average, and the bandwidth a plain stream reaches in this run
    (copy: 256 MB into another 256 MB, read + written bytes counted; read: a 256 MB sum);
  * per BERT-base-shaped layer (out x in: 768x768 attention, 3072x768 FFN in, 768x3072 FFN out;
    random weights, magnitude masks) at 80, 90, 95 and 98% zeros and 2:4 (the 2 largest of every
    4 consecutive inputs), batch 1, 8 and 64 (tokens as batch rows): the format timing picks
    (as `sparsify` does), then dense (torch: MKL / oneDNN) and sparse latency with the weights
    streamed from memory (each call runs the next of enough copies of the layer to hold 256 MB
    together, as in a model too big for the caches) and the speed-up; the byte ceiling of the
    format (dense bytes / the format's bytes: the speed-up if both ran at the same bandwidth;
    formulas printed) and speed-up / ceiling; the GB/s the dense and sparse calls reach; and the
    speed-up with weights warm in cache (each timed call right after an untimed one of the same
    layer, as when a layer is timed alone);
  * end to end: BERT-base (12 layers, hidden 768, FFN 3072, random weights from a transformers
    config, nothing downloaded) with 90% of every encoder linear's weights zeroed (magnitude, per
    layer), 128 tokens, batch 1 and 8: `sparsify` decides per layer at that batch size, then the
    whole model's latency against the dense model (weights in their natural place: 340 MB of them
    do not fit a cache);
  * goals (issue 27, fp32): per layer at 95%: >= 6x at batch 1, >= 3x at batch 64; at 90%: >= 3.5x
    at batch 1; BERT-base at 90%, batch 1: >= 3x.

    python bench/sparse_speed.py [--threads 1,2] [--repeats 15] [--bert-repeats 5] [--no-bert]
                                 [--sparsities 90%,95%] [--batches 1,64] [--bert-batches 1]
    python bench/sparse_speed.py --quick   # small sizes: checks that it runs
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from prunelab.compress import native, sparsify
from prunelab.compress.formats import FORMATS, Pattern, dense_bytes
from prunelab.compress.latency import pinned, time_interleaved
from prunelab.compress.sparse import SparseLinear, fits

SHAPES = ((768, 768), (3072, 768), (768, 3072))
SPARSITIES = ("80%", "90%", "95%", "98%", "2:4")
BATCHES = (1, 8, 64)
WORKING_SET_MB = 256


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def magnitude(w: torch.Tensor, kind: str) -> torch.Tensor:
    """``w`` with the smallest |w| zeroed: a share ("90%") of the whole layer, or N:M ("2:4")."""
    if ":" in kind:
        n, m = (int(v) for v in kind.split(":"))
        groups = w.abs().reshape(w.shape[0], -1, m)
        keep = torch.zeros_like(groups).scatter_(2, groups.topk(n, dim=2).indices, 1.0)
        return w * keep.reshape(w.shape)
    k = round(w.numel() * float(kind.rstrip("%")) / 100)
    threshold = w.abs().flatten().kthvalue(k).values
    return w * (w.abs() > threshold)


class Rotation:
    """Copies of one layer whose weights together exceed the caches (WORKING_SET_MB); each call
    runs the next copy, so that its weights come from memory, as in a model too big for the
    caches, while the code, the Python objects and the input stay in cache."""

    def __init__(self, layer: nn.Module, nbytes: int) -> None:
        copies = max(2, -(-WORKING_SET_MB * 2**20 // max(nbytes, 1)))
        self.layers = [layer, *(copy.deepcopy(layer) for _ in range(copies - 1))]

    def per_call_ms(self, x: torch.Tensor) -> float:
        """One pass over every copy; the time per call."""
        start = time.perf_counter()
        for layer in self.layers:
            layer(x)
        return (time.perf_counter() - start) * 1e3 / len(self.layers)


def streamed(rotations: dict[str, Rotation], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms per call of each rotation, passes interleaved in rotating order after one untimed pass."""
    names = list(rotations)
    for r in rotations.values():
        r.per_call_ms(x)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            samples[name].append(rotations[name].per_call_ms(x))
    return {n: statistics.median(s) for n, s in samples.items()}


def stream(threads: int) -> tuple[float, float]:
    """(copy, read) GB/s of plain torch streams of WORKING_SET_MB at this thread count."""
    a, b = torch.randn(WORKING_SET_MB * 2**20 // 4), torch.empty(WORKING_SET_MB * 2**20 // 4)
    with pinned(threads):
        b.copy_(a)
        copy = min(_seconds(lambda: b.copy_(a)) for _ in range(5))
        read = min(_seconds(lambda: a.sum()) for _ in range(5))
    return 2 * a.numel() * 4 / copy / 1e9, a.numel() * 4 / read / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fastest_format(w: torch.Tensor, x: torch.Tensor) -> tuple[str, SparseLinear]:
    """The format `sparsify` would pick for this layer at this batch (warm timing, median of 7)."""
    pattern = Pattern.of(w)
    layers = {f: SparseLinear(pattern, format=f) for f in fits(pattern)}
    with torch.inference_mode():
        times = time_interleaved(layers, x, repeats=7, warmup=2)
    best = min(times, key=lambda f: statistics.median(times[f]))
    return best, layers[best]


def per_layer(threads: int, shapes, sparsities, batches, repeats: int) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for out_f, in_f in shapes:
        dense_w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
        dense = nn.Linear(in_f, out_f, bias=False)
        with torch.no_grad():
            dense.weight.copy_(dense_w)
        for kind in sparsities:
            w = magnitude(dense_w, kind)
            pattern = Pattern.of(w)
            for batch in batches:
                x = torch.randn(batch, in_f, generator=g)
                with pinned(threads), torch.inference_mode():
                    name, sparse = fastest_format(w, x)
                    nbytes = FORMATS.get(name).nbytes(pattern)
                    rotations = {
                        "dense": Rotation(dense, dense_bytes(out_f, in_f)),
                        "sparse": Rotation(sparse, nbytes),
                    }
                    far = streamed(rotations, x, repeats)
                    del rotations
                    warm = time_interleaved({"dense": dense, "sparse": sparse}, x, repeats=repeats, warmup=2)
                rows.append(
                    {
                        "shape": f"{out_f}x{in_f}",
                        "sparsity": kind,
                        "batch": batch,
                        "format": name,
                        "dense_ms": far["dense"],
                        "sparse_ms": far["sparse"],
                        "speedup": far["dense"] / far["sparse"],
                        "ceiling": dense_bytes(out_f, in_f) / nbytes,
                        "dense_gbs": dense_bytes(out_f, in_f) / far["dense"] / 1e6,
                        "sparse_gbs": nbytes / far["sparse"] / 1e6,
                        "warm_speedup": statistics.median(warm["dense"]) / statistics.median(warm["sparse"]),
                    }
                )
                r = rows[-1]
                print(
                    f"{r['shape']:>9} {kind:>4} {batch:5d} {name:>7} {r['dense_ms']:9.3f} {r['sparse_ms']:9.3f} "
                    f"{r['speedup']:8.2f} {r['ceiling']:8.2f} {r['speedup'] / r['ceiling']:8.2f} "
                    f"{r['dense_gbs']:8.1f} {r['sparse_gbs']:8.1f} {r['warm_speedup']:8.2f}",
                    flush=True,
                )
    return rows


def bert(
    threads: int, batches, tokens: int, repeats: int, layers: int, hidden: int, ffn: int
) -> dict[int, float]:
    """Whole-model speed-up of BERT-base at 90% zeros on every encoder linear, per batch size."""
    from prunelab.models.hf import TextClassifier
    from prunelab.models.vision import import_transformers
    from prunelab.pruning import Mask

    t = import_transformers()
    torch.manual_seed(0)
    config = t.BertConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
        intermediate_size=ffn, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    dense = TextClassifier(t.BertForSequenceClassification(config), pad_id=0).eval()
    encoder = [n for n, m in dense.named_modules() if isinstance(m, nn.Linear) and ".encoder.layer." in n]
    mask = Mask(
        {f"{n}.weight": magnitude(dense.get_submodule(n).weight.detach(), "90%") != 0 for n in encoder}
    )
    print(
        f"\nBERT-base end to end: {layers} layers, hidden {hidden}, FFN {ffn}, {tokens} tokens; "
        f"{len(encoder)} encoder linears at 90% zeros (magnitude, per layer); pooler and classifier dense"
    )
    print(f"{'batch':>5} {'dense ms':>10} {'sparse ms':>10} {'speed-up':>9}  layers run sparse (formats)")
    speedups = {}
    for batch in batches:
        x = torch.randint(
            1, config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(batch)
        )
        with pinned(threads), torch.inference_mode():
            result = sparsify(dense, x, mask, repeats=5)
            times = time_interleaved({"dense": dense, "sparse": result.model}, x, repeats=repeats, warmup=1)
        d, s = statistics.median(times["dense"]), statistics.median(times["sparse"])
        speedups[batch] = d / s
        used = [c for c in result.choices if c.used]
        formats = ", ".join(
            f"{f} {sum(c.format == f for c in used)}" for f in sorted({c.format for c in used})
        )
        print(
            f"{batch:5d} {d:10.1f} {s:10.1f} {d / s:9.2f}  {len(used)} of {len(encoder)} ({formats})",
            flush=True,
        )
    return speedups


def goals(rows: list[dict], threads: int, bert_speedups: dict[int, float]) -> None:
    def worst(kind: str, batch: int) -> float | None:
        found = [r["speedup"] for r in rows if r["sparsity"] == kind and r["batch"] == batch]
        return min(found) if found else None

    print(f"\ngoals at {threads} thread(s) (the smallest per-layer speed-up over the three shapes):")
    for kind, batch, goal in (("95%", 1, 6.0), ("95%", 64, 3.0), ("90%", 1, 3.5)):
        got = worst(kind, batch)
        shown = "not measured" if got is None else f"{got:.2f}x -> {'met' if got >= goal else 'not met'}"
        print(f"  {kind} zeros, batch {batch}: >= {goal}x per layer: {shown}")
    got = bert_speedups.get(1)
    shown = "not measured" if got is None else f"{got:.2f}x -> {'met' if got >= 3.0 else 'not met'}"
    print(f"  BERT-base at 90%, batch 1: >= 3x end to end: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions per layer variant")
    parser.add_argument("--bert-repeats", type=int, default=5, help="timed repetitions per BERT model")
    parser.add_argument("--no-bert", action="store_true", help="skip the end-to-end BERT-base part")
    parser.add_argument("--sparsities", default=",".join(SPARSITIES), help="per-layer zeros: shares or N:M")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="per-layer batch sizes")
    parser.add_argument("--bert-batches", default="1,8", help="end-to-end batch sizes (sequences)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (checks it runs)")
    args = parser.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
        batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
        bert_batches = tuple(int(b) for b in args.bert_batches.split(",") if b.strip())
    except ValueError:
        parser.error("--threads, --batches and --bert-batches take comma-separated integers")
    sparsities = tuple(k.strip() for k in args.sparsities.split(",") if k.strip())
    bad = [k for k in sparsities if not (k.endswith("%") or ":" in k)]
    if bad:
        parser.error(f"--sparsities takes shares such as 90% or N:M such as 2:4, got {bad}")
    shapes = SHAPES
    bert_shape = dict(layers=12, hidden=768, ffn=3072, tokens=128, batches=bert_batches)
    if args.quick:
        shapes, batches, sparsities = ((96, 80),), (1, 8), ("90%", "2:4")
        bert_shape = dict(layers=2, hidden=128, ffn=256, tokens=16, batches=(1,))
        args.repeats, args.bert_repeats = 3, 2

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"{cpu_name()}, {os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    kernel = native.sparse_kernel()
    print(f"sparse kernel: {'prunelab sparse_linear.c' if kernel else native.fallback_message()}")
    print(
        "\nbyte ceilings (speed-up if dense and sparse ran at the same bandwidth) = 4*rows*cols / format bytes:"
    )
    for name, fmt in FORMATS.items():
        print(f"  {name:>6}: {fmt.formula}")
    for t in threads:
        copy, read = stream(t)
        print(
            f"\n=== {t} thread(s): stream copy {copy:.1f} GB/s (read + write), stream read {read:.1f} GB/s ==="
        )
        print(
            f"streamed: every call runs the next of copies of the layer holding {WORKING_SET_MB} MB together "
            "(weights from memory); warm x: the same layer again (weights in cache)"
        )
        print(
            f"{'layer':>9} {'zero':>4} {'batch':>5} {'format':>7} {'dense ms':>9} {'sparse ms':>9} {'speed-up':>8} "
            f"{'ceiling':>8} {'/ceil':>8} {'dense GB/s':>8} {'sparse GB/s':>8} {'warm x':>8}"
        )
        rows = per_layer(t, shapes, sparsities, batches, args.repeats)
        speedups = {} if args.no_bert else bert(t, repeats=args.bert_repeats, **bert_shape)
        goals(rows, t, speedups)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
