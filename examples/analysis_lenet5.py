"""Paper 001 on Fashion-MNIST: four pruning methods on LeNet-5 with rewinding, two seeds, one report.

L1-unstructured (magnitude), L1-structured (input channels / neurons), random-unstructured and
hybrid (L1-structured convs, L1-unstructured linear layers), 5 rounds at 30% per round, 2 epochs
per level. Results are cached: a rerun only rebuilds the report. About 20-40 minutes on 2 busy CPU cores
(use --threads 1 when other jobs share them).

    python examples/analysis_lenet5.py [--root DIR] [--out DIR] [--epochs 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import prunelab
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec, results_root
from prunelab.training import TrainConfig

METHODS = {
    "L1-unstructured": "magnitude",
    "L1-structured": "l1-structured",
    "random-unstructured": "random",
    "hybrid": "hybrid",
}


def specs(epochs: int, rounds: int, rate: float) -> list[ExperimentSpec]:
    """One experiment per method; the dense trunk (level 0) is trained once and shared."""
    return [
        ExperimentSpec(
            model="lenet5",
            data="fashion-mnist",
            name=f"lenet5 {label}",
            train=TrainConfig(epochs=epochs, eval_every="400it"),
            pruning=PruneSpec(method=method, rate=rate, rounds=rounds),
            treatment=TreatmentSpec(kind="rewind"),
            seeds=(0, 1),
        )
        for label, method in METHODS.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="results root (default: $PRUNELAB_HOME)")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    parser.add_argument("--no-report", action="store_true", help="only run the experiments")
    args = parser.parse_args()
    prunelab.set_threads(args.threads)  # default: the CPUs this process may use

    start = time.time()
    runs = []
    for spec in specs(args.epochs, args.rounds, args.rate):
        print(f"{spec.experiment_id()}  {spec.label()}", flush=True)
        runner = ExperimentRunner(spec, args.root, log=print)
        runner.run()
        runs.append(str(runner.directory))
    print(f"experiments done in {time.time() - start:.0f} s", flush=True)
    if args.no_report:
        return
    from rich.console import Console

    from prunelab.analysis import accuracy_table, ensemble_table, winning_table, write_report
    from prunelab.analysis.ensemble import Predictions
    from prunelab.ui import render

    console = Console(width=160)  # the main table is wide; do not squeeze it into 80 columns

    out = args.out or results_root(args.root) / "reports" / "analysis-lenet5"
    report = write_report(runs, out, force=True, log=lambda msg: print(f"  {msg}...", flush=True))
    console.print(render(accuracy_table(runs)))
    console.print(render(winning_table(runs)))
    for row in ensemble_table(runs, predictions=Predictions()):
        console.print(f"level {row['level']}: ensemble of all four {row['ensemble']:.2%}")
    print(f"report: {report} ({time.time() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
