"""Data-driven channel pruning and PCA shrinking on Fashion-MNIST (papers 002 and 004), one run.

Prints, from one run on this machine:
  * channel selection at the same budget, half the input channels of every conv after the first
    (LeNet-5: 3 of conv1's 6 channels; conv2: 32 of conv1's 64), chosen by L1 norm, ThiNet, LASSO
    or at random, each without and with least-squares reconstruction of the pruned layer (He et al.;
    ThiNet), plus Li et al.'s L1-filter (the same channels removed as conv1's filters): test
    accuracy of the trained network, right after pruning (no fine-tuning) and after fine-tuning;
  * PCA layer shrinking of LeNet-300-100 and LeNet-5 at explained-variance fractions 0.99, 0.95 and
    0.9 (every layer but the classifier): parameters, FLOPs, test accuracy (no fine-tuning) and CPU
    latency against dense (batch 256, interleaved repetitions, threads pinned), FLOP ratio beside it.
Dense models train from scratch here (seeded); calibration uses 256 training images.

    python bench/reconstruct.py [--train-iterations 2000] [--finetune-iterations 500] [--models lenet5,conv2]
    python bench/reconstruct.py --train-iterations 30 --finetune-iterations 10 --models conv2 --pca-models lenet-300-100 --data digits --repeats 2  # checks it runs
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

from prunelab.compress import Variant, benchmark
from prunelab.compress.pca import shrink
from prunelab.data import load_dataset
from prunelab.models import build_model
from prunelab.pruning import PruneContext, prune
from prunelab.pruning.calibration import reconstruct
from prunelab.training import TrainConfig, train
from prunelab.training.evaluation import evaluate

SELECTIONS = {
    "L1 norm": "l1-structured",
    "ThiNet": "thinet",
    "LASSO": "lasso",
    "random": "random-structured",
}


def accuracy(model, split) -> float:
    return evaluate(model, split)[1]


def calibration(data, images: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:images]
    return [(data.train.x[idx[i : i + 64]], data.train.y[idx[i : i + 64]]) for i in range(0, images, 64)]


def channel_rows(name: str, data, args) -> list[tuple]:
    """(method, reconstruction, accuracy after pruning, after fine-tuning) for ``name``."""
    info = data.info
    net = build_model(name, num_classes=info.num_classes, input_shape=info.input_shape, seed=0)
    train(
        net, data, TrainConfig(optimizer="adam", lr=1.2e-3, iterations=args.train_iterations, eval_every=None)
    )
    batches = calibration(data, args.images)
    convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    base = accuracy(net, data.test)
    rows = [("dense", "", base, base)]
    finetune = TrainConfig(optimizer="adam", lr=5e-4, iterations=args.finetune_iterations, eval_every=None)

    def finish(label: str, recon: str, model, mask) -> None:
        pruned = copy.deepcopy(model)
        mask.apply(pruned)
        before = accuracy(pruned, data.test)
        train(pruned, data, finetune, mask=mask, seed=1)
        rows.append((label, recon, before, accuracy(pruned, data.test)))
        print(f"  {name} {label:<10} {recon:<4} {before:.4f} -> {rows[-1][3]:.4f}", flush=True)

    context = PruneContext(batches=tuple(batches))
    for label, method in SELECTIONS.items():
        mask = prune(net, None, fraction=0.5, method=method, layers="conv-only", exclude=[convs[0]],
                     context=context, generator=torch.Generator().manual_seed(0))  # fmt: skip
        finish(label, "no", net, mask)
        refit = copy.deepcopy(net)
        new = reconstruct(net, None, mask, batches)
        with torch.no_grad():
            for key, weight in new.items():
                dict(refit.named_parameters())[key].copy_(weight)
        finish(label, "yes", refit, mask)
    # Li et al.: the same budget as conv1's filters, each layer on its own (a pruned filter's constant
    # output remains, as in any masked network, until compaction folds it)
    others = [
        n
        for n, m in net.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and n != convs[0]
    ]
    filters = prune(
        net, None, fraction=0.5, method="l1-filter", structure="structured-output", exclude=others
    )
    finish("L1-filter", "no", net, filters)
    return rows


def pca_rows(name: str, data, args) -> list[tuple]:
    info = data.info
    net = build_model(name, num_classes=info.num_classes, input_shape=info.input_shape, seed=0)
    train(
        net, data, TrainConfig(optimizer="adam", lr=1.2e-3, iterations=args.train_iterations, eval_every=None)
    )
    net.eval()
    batches = calibration(data, args.images)
    layers = [n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][:-1]
    shape = tuple(info.input_shape)
    variants = [Variant.of("dense", net, shape)]
    accs = {"dense": accuracy(net, data.test)}
    for fraction in (0.99, 0.95, 0.9):
        small = shrink(net, batches, layers=layers, variance=fraction).model.eval()
        label = f"PCA {fraction}"
        variants.append(Variant.of(label, small, shape))
        accs[label] = accuracy(small, data.test)
    timed = benchmark(variants, shape, [256], repeats=args.repeats, warmup=2, threads=args.threads)
    rows = []
    for v in variants:
        t = timed.find("", v.name, 256)
        rows.append(
            (
                name,
                v.name,
                v.params,
                v.flops,
                accs[v.name],
                t.median_ms,
                timed.speedup(t),
                timed.flop_ratio(t),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--models", default="lenet5,conv2", help="models for channel selection")
    parser.add_argument("--pca-models", default="lenet-300-100,lenet5")
    parser.add_argument("--train-iterations", type=int, default=2000)
    parser.add_argument("--finetune-iterations", type=int, default=500)
    parser.add_argument("--images", type=int, default=256, help="calibration images")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPU cores, load average {load:.2f}; torch {torch.__version__}; data {args.data}")
    data = load_dataset(args.data)
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        rows += [(name, *r) for r in channel_rows(name, data, args)]
    print(f"\nhalf the input channels of every conv after the first; test accuracy ({args.finetune_iterations} "
          f"fine-tuning iterations after {args.train_iterations} of training)")  # fmt: skip
    print(f"{'model':<8} {'selection':<10} {'refit':<5} {'pruned':>8} {'fine-tuned':>10}")
    for name, label, recon, before, after in rows:
        print(f"{name:<8} {label:<10} {recon:<5} {before:8.2%} {after:10.2%}")
    pca = []
    for name in [m for m in args.pca_models.split(",") if m]:
        pca += pca_rows(name, data, args)
    print("\nPCA shrinking (no fine-tuning); latency at batch 256, interleaved, threads pinned")
    print(
        f"{'model':<14} {'variant':<9} {'params':>9} {'FLOPs':>11} {'test acc':>8} {'ms':>8} {'speed-up':>8} {'FLOP ratio':>10}"
    )
    for name, label, params, flops, acc, ms, speedup, ratio in pca:
        print(
            f"{name:<14} {label:<9} {params:>9,} {flops:>11,} {acc:8.2%} {ms:8.2f} {speedup:8.2f} {ratio:10.2f}"
        )


if __name__ == "__main__":
    main()
