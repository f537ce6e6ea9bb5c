"""CPU latency of torchvision models before and after structured pruning and compaction.

Prints, from one run on this machine (threads pinned, denormals flushed, dense and compacted
repetitions interleaved, each timed call right after an untimed one of the same model; see
prunelab.compress.latency):
  * torchvision VGG-16-BN and ResNet-18 with 50% of the channels of every coupled group removed,
    ResNet-50 and ViT-B/16 with 30% of the units of every group (channels, and ViT's attention
    heads) removed (random init, 3x224x224 by default; L1 masks by coupled group, the classes
    kept; ``prunelab.prune(..., method="l1-filter")``), then compacted (prunelab.compress.compact);
  * per model and batch size: dense ms, compacted ms (medians), speed-up (dense / compacted),
    FLOP ratio (dense / compacted FLOPs per example, operator-level, prunelab.compress.count) and
    speed-up / FLOP ratio, the share of the FLOP saving that turns into time;
  * goals: speed-up / FLOP ratio >= 0.7 for VGG-16 at batch 16, >= 0.8 for ResNet-50 and ViT-B/16
    at batch 32.
Weights are freshly initialised (latency does not depend on their values once denormals are
flushed); the masks are real L1 masks of those weights.

    python bench/compact_speed.py [--size 224] [--batches 1,16,32] [--repeats 5] [--threads N]
    python bench/compact_speed.py --models resnet50,vit_b_16 --batches 32
    python bench/compact_speed.py --size 32 --batches 1 --repeats 2 --models vgg16_bn,resnet18   # seconds
"""

from __future__ import annotations

import argparse
import os

import torch

from prunelab.compress import Variant, benchmark, compact
from prunelab.compress.latency import check_bench_settings
from prunelab.models import count_parameters
from prunelab.models.vision import import_torchvision
from prunelab.pruning import prune

#: torchvision name -> (label, fraction of each group's units, structure)
MODELS = {
    "vgg16_bn": ("VGG-16", 0.5, "channels"),
    "resnet18": ("ResNet-18", 0.5, "channels"),
    "resnet50": ("ResNet-50", 0.3, "groups"),
    "vit_b_16": ("ViT-B/16", 0.3, "groups"),
}
GOALS = {("vgg16_bn", 16): 0.7, ("resnet50", 32): 0.8, ("vit_b_16", 32): 0.8}


def variants(name: str, shape: tuple[int, int, int]) -> tuple[list[Variant], str]:
    """Dense and compacted versions of torchvision ``name``, and a line saying what was removed."""
    tv = import_torchvision()
    torch.manual_seed(0)
    label, fraction, structure = MODELS[name]
    dense = getattr(tv.models, name)(num_classes=1000).eval()
    x = torch.zeros(1, *shape)
    mask = prune(dense, None, fraction=fraction, method="l1-filter", structure=structure, example=x)
    result = compact(dense, mask, x)
    small = result.model
    units = "units (channels and heads)" if structure == "groups" else "channels"
    note = (
        f"{label} ({name}), {shape[0]}x{shape[1]}x{shape[2]}: {fraction:.0%} of the {units} of every coupled "
        f"group masked and compacted; {count_parameters(dense):,} -> {count_parameters(small):,} parameters "
        f"(checked: max |compact - masked| = {result.max_error:.2g})"
    )
    return [Variant.of("dense", dense, shape), Variant.of("compact", small, shape)], note


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=224, help="input height and width (3 channels)")
    parser.add_argument("--batches", default="1,16,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per model and batch")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model before timing")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads, pinned while timing"
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    args = parser.parse_args()
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if args.size < 32:
        parser.error(f"--size must be at least 32 (five 2x poolings), got {args.size}")
    check_bench_settings(batches, args.repeats, args.warmup, args.threads, "cpu")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPU cores, load average {load:.2f}; torch {torch.__version__}")
    shape = (3, args.size, args.size)
    shares: dict[tuple[str, int], float] = {}
    threads = None
    for name in names:
        models, note = variants(name, shape)
        result = benchmark(
            models, shape, batches, repeats=args.repeats, warmup=args.warmup, threads=args.threads
        )
        threads = result.threads
        print(f"\n{note}")
        print(f"threads used: {result.threads} (pinned), {result.repeats} interleaved repetitions")
        print(
            f"{'batch':>5} {'dense ms':>10} {'compact ms':>10} {'speed-up':>9} {'FLOP ratio':>10} "
            f"{'speed-up / FLOP ratio':>21}"
        )
        for batch in batches:
            dense, small = result.find("", "dense", batch), result.find("", "compact", batch)
            speedup, ratio = result.speedup(small), result.flop_ratio(small)
            shares[name, batch] = speedup / ratio
            print(
                f"{batch:5d} {dense.median_ms:10.2f} {small.median_ms:10.2f} {speedup:9.2f} "
                f"{ratio:10.2f} {shares[name, batch]:21.2f}"
            )
    print(f"\nthreads used: {threads}")
    for (name, batch), goal in GOALS.items():
        share = shares.get((name, batch))
        if share is None:
            outcome = f"not measured (needs {name} in --models and {batch} in --batches)"
        else:
            outcome = f"{share:.2f} at {args.size}x{args.size} -> {'met' if share >= goal else 'not met'}"
        print(f"goal: >= {goal} for {MODELS[name][0]} at batch {batch} (speed-up / FLOP ratio): {outcome}")


if __name__ == "__main__":
    main()
