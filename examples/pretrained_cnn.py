"""Paper 003's workflow on torchvision's ResNet-18: fine-tune, prune iteratively, prune filters, compact.

1. Fine-tune ``torchvision:resnet18`` on CIFAR-10 (level 0). ImageNet weights are used when they
   are in torch's cache ($TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth); otherwise the model
   starts from a random initialisation, and the output says so.
2. Iterative L1 unstructured pruning (magnitude, global over the convs and the head), fine-tuning
   between rounds (Ou Yang & Xu, Figs. 3-4).
3. L1 filter pruning: half the filters of every conv, one round, fine-tuned, then physically removed
   through the dependency graph (Fig. 5).

It ends with a table of accuracy and parameters per step. CIFAR-10 is used where prunelab finds it
(`prunelab data list`); otherwise a synthetic CIFAR-shaped set (3x32x32, 10 classes, class
templates plus noise) is generated and used, and the output says so: the numbers then show the
workflow, not CIFAR-10 accuracy. Results are cached in the results root; a rerun reads them back.

    python examples/pretrained_cnn.py [--root DIR] [--iterations 300] [--rounds 3] [--image-size 224]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import prunelab
from prunelab.compress import compact_level, export_compact
from prunelab.data import resolve_dataset
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec, results_root
from prunelab.models import count_parameters
from prunelab.models.weights import hub_dir
from prunelab.pruning.mask import prunable_names
from prunelab.training import TrainConfig

MODEL = "torchvision:resnet18"
IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1


def synthetic_cifar(folder: Path, train: int = 5000, test: int = 1000) -> Path:
    """A CIFAR-shaped npz file: a random 3x32x32 template per class plus Gaussian noise (seeded)."""
    path = folder / f"synthetic-cifar-{train}-{test}.npz"
    if path.is_file():
        return path
    g = np.random.default_rng(0)
    templates = g.uniform(0.2, 0.8, (10, 3, 32, 32))

    def samples(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = g.permutation(np.arange(n) % 10)
        x = np.clip(templates[y] + 0.25 * g.standard_normal((n, 3, 32, 32)), 0, 1)
        return (x * 255).round().astype(np.uint8), y

    (x_train, y_train), (x_test, y_test) = samples(train), samples(test)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="results root (default: $PRUNELAB_HOME)")
    parser.add_argument("--iterations", type=int, default=300, help="training iterations per level")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of unstructured pruning")
    parser.add_argument("--rate", type=float, default=0.5, help="fraction pruned per unstructured round")
    parser.add_argument(
        "--image-size", type=int, default=None, help="resize batches (224 as in Ou Yang & Xu)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    args = parser.parse_args()
    prunelab.set_threads(args.threads)
    root = results_root(args.root)
    start = time.time()

    cached = (hub_dir() / IMAGENET_FILE).is_file()
    weights = "torchvision:IMAGENET1K_V1" if cached else None
    print(
        f"model: {MODEL}, "
        + (f"ImageNet weights from {hub_dir() / IMAGENET_FILE}" if cached else
           f"random initialisation (no {IMAGENET_FILE} in {hub_dir()}; put it there for the pretrained start)")
    )  # fmt: skip
    found, _ = resolve_dataset("cifar10").status(None)
    if found:
        data = "cifar10"
        print("data: CIFAR-10")
    else:
        data = f"npz:{synthetic_cifar(root / 'example-data')}"
        print("data: SYNTHETIC CIFAR-shaped set (CIFAR-10 not found; `prunelab data get cifar10` fetches it)")

    train = TrainConfig(
        optimizer="sgd", lr=0.01, momentum=0.9, batch_size=64, iterations=args.iterations, eval_every="100it"
    )
    common = dict(model=MODEL, weights=weights, data=data, image_size=args.image_size, train=train)
    unstructured = ExperimentSpec(
        **common,
        name="resnet18 L1 unstructured + finetune",
        pruning=PruneSpec(method="magnitude", scope="global", rate=args.rate, rounds=args.rounds),
        treatment=TreatmentSpec(kind="finetune"),
    )
    filters = ExperimentSpec(
        **common,
        name="resnet18 L1 filters + finetune",
        pruning=PruneSpec(
            method="l1-structured", structure="structured-output", layers="conv-only", rate=0.5, rounds=1
        ),
        treatment=TreatmentSpec(kind="finetune"),
    )
    rows = []
    for spec in (unstructured, filters):  # the fine-tuned dense trunk is trained once, then shared
        print(f"\n{spec.experiment_id()}  {spec.label()}", flush=True)
        result = ExperimentRunner(spec, root, log=print).run()
        for level, metrics in enumerate(result.levels[0]):
            if spec is filters and level == 0:
                continue
            dense = "fine-tuned dense" if cached else "dense (from random init)"
            kind = dense if level == 0 else spec.name.split(" + ")[0].removeprefix("resnet18 ")
            rows.append((f"{kind}, level {level}", metrics.density, metrics.early_stop.test_acc, None))

    item = compact_level(filters.experiment_id(), root=root)
    out = root / "example-exports" / filters.experiment_id()
    export_compact(
        item.result, out, model=MODEL, num_classes=item.num_classes, input_shape=item.input_shape,
        image_size=args.image_size, force=True, source=item.source(),
    )  # fmt: skip
    dense_params = count_parameters(item.loaded.model)
    small_params = count_parameters(item.result.model)
    prunable = sum(
        p.numel() for n, p in item.loaded.model.named_parameters() if n in prunable_names(item.loaded.model)
    )
    label, density, acc, _ = rows[-1]
    rows[-1] = (label + ", compacted", density, acc, small_params)

    print(f"\n{'step':<42} {'density':>8} {'test acc':>9} {'parameters':>11}")
    print(f"{'dense (torchvision resnet18)':<42} {1:>8.1%} {'':>9} {dense_params:>11,}")
    for label, density, acc, params in rows:
        kept = dense_params - round((1 - density) * prunable)  # biases and norms are never pruned
        shown = f"{params:,}" if params is not None else f"{kept:,}*"
        print(f"{label:<42} {density:>8.1%} {acc:>9.2%} {shown:>11}")
    print("* weights kept by the mask (unstructured masks leave the tensors their full size)")
    print(f"compacted model exported to {out} (prunelab.load_compact)")
    print(f"done in {time.time() - start:.0f} s" + ("" if found else "  [SYNTHETIC data]"))


if __name__ == "__main__":
    main()
