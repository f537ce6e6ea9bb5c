"""Coupled groups against per-layer rows at the same FLOPs: a residual network on real data.

ResNet-20 is trained dense on Fashion-MNIST (one shared trunk), then pruned once by L1 in two ways
and each fine-tuned the same number of epochs:

* **coupled**: ``l1-filter`` (structure ``channels``): units of coupled groups, a channel leaving
  every conv that writes or reads it (a residual stage's convs, BatchNorms, shortcuts, the next
  convs' columns);
* **per-layer rows**: ``l1-structured`` with structure ``structured-output``: each conv's filters
  on their own, as structured pruning was done before coupled groups (the output layer kept).

Each method's rate is found by bisection on the trained weights so that the masked model keeps the
same share of the dense FLOPs (``--flops``, default 0.5; non-zero FLOPs, operator level). Printed:
the rate, masked FLOPs, test accuracy (dense, and each pruned and fine-tuned level), and what the
compaction makes of each mask: the compacted model's parameters and FLOPs, as shares of the dense.

    python bench/coupled_vs_layers.py [--epochs 3] [--finetune-epochs 1] [--flops 0.5] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

import prunelab
from prunelab.compress import compact
from prunelab.compress.count import layer_flops, nonzero_flops
from prunelab.experiments import ExperimentRunner, ExperimentSpec, Store, TreatmentSpec
from prunelab.models import count_parameters
from prunelab.pruning import PruneSpec, prune
from prunelab.training import TrainConfig

METHODS = {
    "coupled groups (l1-filter, channels)": dict(method="l1-filter"),
    "per-layer rows (l1-structured, structured-output)": dict(
        method="l1-structured", structure="structured-output", exclude=("fc",)
    ),
}


def spec(args, rate: float, **pruning) -> ExperimentSpec:
    return ExperimentSpec(
        model="resnet20",
        data=args.data,
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=128,
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="cosine",
        ),
        pruning=PruneSpec(rate=rate, rounds=1, **pruning),
        treatment=TreatmentSpec(kind="finetune", finetune_epochs=args.finetune_epochs, finetune_lr=0.01),
        seeds=(0,),
    )


def flops_share(model, shape, mask) -> float:
    return sum(nonzero_flops(model, shape, mask).values()) / sum(layer_flops(model, shape).values())


def rate_for(model, shape, target: float, example, **pruning) -> float:
    """The rate whose mask keeps ``target`` of the dense FLOPs (bisection, to 0.2%)."""
    low, high = 0.0, 0.95
    for _ in range(20):
        mid = (low + high) / 2
        share = flops_share(model, shape, prune(model, None, fraction=mid, example=example, **pruning))
        if abs(share - target) < 0.002:
            return mid
        low, high = (mid, high) if share > target else (low, mid)
    return (low + high) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs after pruning")
    parser.add_argument("--flops", type=float, default=0.5, help="share of the dense FLOPs the masks keep")
    parser.add_argument("--root", type=Path, help="results folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.root or Path(tempfile.mkdtemp(prefix="coupled-vs-layers-"))
    print(f"{os.cpu_count()} CPU cores, {args.threads} threads; results under {root}")
    base = spec(args, 0.5, **METHODS[next(iter(METHODS))])
    ExperimentRunner(base, root).train_trunk(0)
    shape = tuple(base.data_info.input_shape)
    model = base.build_model(0)
    model.load_state_dict(Store(root).dense(base.trunk_id(), 0).weights())
    model.eval()
    example = torch.zeros(1, *shape)
    dense_params, dense_flops = count_parameters(model), sum(layer_flops(model, shape).values())
    rows = []
    for label, pruning in METHODS.items():
        rate = rate_for(model, shape, args.flops, example, **pruning)
        experiment = spec(args, round(rate, 4), **pruning)
        result = prunelab.run(experiment, root)
        dense_acc = result.levels[0][0].final.test_acc
        level = prunelab.load(experiment.experiment_id(), level=1, root=root)
        small = compact(level.model, level.mask, example).model
        rows.append(
            (
                label,
                rate,
                flops_share(level.model, shape, level.mask),
                level.metrics.final.test_acc,
                count_parameters(small) / dense_params,
                sum(layer_flops(small, shape).values()) / dense_flops,
            )
        )
    print(f"\nResNet-20 on {args.data}: dense {dense_params:,} parameters, {dense_flops / 1e6:.1f} MFLOPs per "
          f"example, test accuracy {100 * dense_acc:.2f}% after {args.epochs} epochs")  # fmt: skip
    print(
        f"pruned once to {args.flops:.0%} of the dense FLOPs (masked), fine-tuned {args.finetune_epochs} epoch(s)\n"
    )
    print(
        f"{'method':<52} {'rate':>6} {'masked FLOPs':>12} {'test acc':>9} {'compact params':>14} {'compact FLOPs':>13}"
    )
    for label, rate, share, acc, params, flops in rows:
        print(f"{label:<52} {rate:>6.3f} {share:>12.1%} {100 * acc:>8.2f}% {params:>14.1%} {flops:>13.1%}")


if __name__ == "__main__":
    main()
