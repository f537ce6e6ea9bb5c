"""Inference speed of compacted and CSR models against dense ones (issue 5's benchmark).

Prints, from one run on this machine (threads pinned, denormals flushed, interleaved repetitions,
each timed call right after an untimed one of the same model; see prunelab.compress.latency):
  * VGG-11 and ResNet-20 (3x32x32) with 50% of the channels of every layer but the classifier
    removed (L1 structured-output mask, then physical removal): latency of dense, masked and
    compacted over batch sizes, with the compacted speed-up beside the FLOP ratio;
    goal (issue 5, for vgg11 or resnet20): speed-up >= 0.7 x FLOP ratio at batch 64;
  * LeNet-300-100 (1x28x28) at 95% unstructured sparsity (magnitude, every layer): dense against
    CSR layers (each swapped in only where timing at batch 256 says it is faster), run by
    prunelab's kernel and, for comparison, by MKL's sparse product (torch's CPU path);
    goal: CSR at least 3x faster at batch 256.
Weights are freshly initialised (latency does not depend on their values once denormals are
flushed); the masks are real L1 / magnitude masks of those weights.

    python bench/infer_speed.py [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os

import torch

from prunelab.compress import (
    Variant,
    benchmark,
    compact,
    native,
    nonzero_flops,
    pinned,
    sparsify,
)
from prunelab.models import build_model, count_parameters
from prunelab.pruning import prune, sparsity_report


def flops(model: torch.nn.Module, shape: tuple[int, ...], mask=None) -> int:
    return sum(nonzero_flops(model, shape, mask).values())


def structured(name: str, threads: int, repeats: int) -> float:
    shape = (3, 32, 32)
    dense = build_model(name, input_shape=shape, seed=0).eval()
    mask = prune(
        dense,
        None,
        fraction=0.5,
        method="l1-structured",
        structure="structured-output",
        exclude=[dense.output_layer],
    )
    masked = mask.apply(build_model(name, input_shape=shape, seed=0).eval())
    small = compact(dense, mask, torch.zeros(1, *shape)).model
    variants = [
        Variant("dense", count_parameters(dense), flops(dense, shape), model=dense),
        Variant("masked", sparsity_report(masked, mask).total_kept, flops(masked, shape, mask), model=masked),
        Variant("compact", count_parameters(small), flops(small, shape), model=small),
    ]
    result = benchmark(variants, shape, (1, 16, 64, 256), repeats=repeats, warmup=2, threads=threads)
    print(
        f"\n{name}, 50% of channels removed: {count_parameters(dense):,} -> {count_parameters(small):,} parameters"
    )
    print(f"{'variant':8} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'speed-up':>9} {'FLOP ratio':>10}")
    for t in result.timings:
        print(
            f"{t.variant:8} {t.batch_size:5d} {t.median_ms:10.2f} {t.p90_ms:9.2f} "
            f"{result.speedup(t):9.2f} {result.flop_ratio(t):10.2f}"
        )
    at64 = result.find("", "compact", 64)
    share = result.speedup(at64) / result.flop_ratio(at64)
    print(f"compacted speed-up / FLOP ratio at batch 64: {share:.2f} (goal >= 0.7)")
    return share


def csr(threads: int, repeats: int) -> float:
    shape, batch = (1, 28, 28), 256
    dense = build_model("lenet-300-100", seed=0).eval()
    mask = prune(dense, None, fraction=0.95, method="magnitude")
    masked = mask.apply(build_model("lenet-300-100", seed=0).eval())
    x = torch.randn(batch, *shape)
    with pinned(threads):  # decide per layer under the same conditions as the measurement
        sparse = sparsify(masked, x, mask, repeats=20)
    kept = sparsity_report(masked, mask).total_kept
    mkl = sparsify(masked, x, mask, repeats=1, force=True, formats=("mkl",)).model  # every layer, MKL
    variants = [
        Variant("dense", count_parameters(dense), flops(dense, shape), model=dense),
        Variant("masked", kept, flops(masked, shape, mask), model=masked),
        Variant("sparse", kept, flops(masked, shape, mask), model=sparse.model),
        Variant("csr-mkl", kept, flops(masked, shape, mask), model=mkl),
    ]
    result = benchmark(variants, shape, (batch,), repeats=repeats * 10, warmup=5, threads=threads)
    print(f"\nLeNet-300-100 at {mask.sparsity():.1%} sparsity, batch {batch}")
    for c in sparse.choices:
        timing = (
            f"dense {c.dense_ms:.3f} ms, {c.format} {c.sparse_ms:.3f} ms"
            if c.sparse_ms is not None
            else "not tried"
        )
        print(f"  {c.layer}: sparsity {c.sparsity:.1%}, {timing} -> {c.format if c.used else 'dense'}")
    for t in result.timings:
        print(
            f"{t.variant:8} median {t.median_ms:.3f} ms  p90 {t.p90_ms:.3f} ms  speed-up {result.speedup(t):.2f}"
        )
    speedup = result.speedup(result.find("", "sparse", batch))
    kernel = "prunelab's kernel" if native.sparse_kernel() is not None else "MKL (no C compiler found)"
    print(f"CSR speed-up over dense at batch {batch}: {speedup:.2f}x with {kernel} (goal >= 3)")
    return speedup


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads, pinned while timing")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions per variant and batch")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{os.cpu_count()} CPU cores, {args.threads} thread(s) pinned, load average {load:.2f}; torch {torch.__version__}"
    )
    shares = {name: structured(name, args.threads, args.repeats) for name in ("vgg11", "resnet20")}
    speedup = csr(args.threads, args.repeats)
    print(
        "\nsummary: "
        + ", ".join(f"{n} {s:.2f} of FLOP ratio" for n, s in shares.items())
        + f"; CSR {speedup:.2f}x"
    )
    best = max(shares, key=shares.get)
    print(
        f"compaction goal (vgg11 or resnet20 >= 0.7): {best} {shares[best]:.2f} -> {'met' if shares[best] >= 0.7 else 'not met'}"
    )


if __name__ == "__main__":
    main()
