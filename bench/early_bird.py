"""Training cost to a pruned, retrained network of the same channel budget: early-bird against slimming.

Both train a BatchNorm conv net with network slimming's L1 push on the BatchNorm scales, prune the
same fraction of channels by one global |gamma| threshold and fine-tune for the same epochs. Network
slimming trains the dense network to the end first; early-bird stops it when the channel mask has
settled (You et al. 2020). Prints, from one run of each on this machine:
  * dense iterations and total iterations (dense + fine-tuning) of each, and their ratio;
  * the wall time of each (one run, so a busy machine moves it) and their ratio;
  * the test accuracy of each pruned, fine-tuned network, and whether they are within a point.

    python bench/early_bird.py [--model conv4-bn] [--data fashion-mnist] [--epochs 20] [--rate 0.5]
"""

from __future__ import annotations

import argparse
import tempfile

from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec
from prunelab.threads import set_threads
from prunelab.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="conv2-bn")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=20, help="dense epochs (early-bird: at most)")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.5, help="fraction of the channels pruned")
    parser.add_argument("--penalty", type=float, default=1e-4, help="s of the L1 push on BatchNorm scales")
    parser.add_argument("--root", default=None, help="results root (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs usable)")
    args = parser.parse_args()
    set_threads(args.threads)

    train = TrainConfig(epochs=args.epochs, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9)
    treatment = TreatmentSpec(kind="finetune", finetune_epochs=args.finetune_epochs)
    settings = {
        "slimming": {"slimming": {"penalty": args.penalty}},
        "early-bird": {"early_bird": {"penalty": args.penalty}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        rows = {}
        for method in ("slimming", "early-bird"):
            spec = ExperimentSpec(
                model=args.model,
                data=args.data,
                train=train,
                pruning=PruneSpec(method=method, rate=args.rate, **settings[method]),
                treatment=treatment,
            )
            result = ExperimentRunner(spec, root, log=print).run()
            dense, level = result.levels[0]
            rows[method] = (dense, level)
    print(
        f"\n{args.model} on {args.data}: {args.rate:.0%} of the channels pruned, {args.finetune_epochs} fine-tuning epochs"
    )
    print(f"{'method':<12}{'dense it':>10}{'total it':>10}{'wall s':>9}{'test acc':>10}  stop")
    for method, (dense, level) in rows.items():
        total = dense.iterations + level.iterations
        wall = dense.wall_time + level.wall_time
        print(
            f"{method:<12}{dense.iterations:>10,}{total:>10,}{wall:>9.1f}{level.final.test_acc:>10.2%}  "
            f"{dense.stopped_early or 'ran to the end'}"
        )
    (sd, sl), (ed, el) = rows["slimming"], rows["early-bird"]
    print(
        f"iterations early-bird / slimming: {(ed.iterations + el.iterations) / (sd.iterations + sl.iterations):.2f}"
    )
    print(
        f"wall time early-bird / slimming (one run): {(ed.wall_time + el.wall_time) / (sd.wall_time + sl.wall_time):.2f}"
    )
    gap = abs(el.final.test_acc - sl.final.test_acc)
    print(f"test accuracies within a point: {'yes' if gap <= 0.01 else 'no'} ({gap:.2%} apart)")


if __name__ == "__main__":
    main()
