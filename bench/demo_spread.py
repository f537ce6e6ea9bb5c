"""The demo over several seeds: what `prunelab demo` shows for one, and how far each figure moves.

Runs (or, when finished, reads back) the demo's experiment (LeNet-300-100 IMP with rewinding on
Fashion-MNIST, beside a reinit control) at ``--seeds``, then prints per level the test accuracy of
the ticket and of the control as mean ± std over the seeds, and each seed's early-stop iteration;
then the margins the README quotes. ``--out FILE`` writes them as JSON, with the machine and thread
count they came from: ``tests/data/demo_result.json`` is one such run, which ``tests/test_readme.py``
checks the README's figures against.

    python bench/demo_spread.py [--seeds 0-2] [--threads 1] [--root DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

import prunelab
from prunelab.experiments import parse_seeds
from prunelab.experiments.demo import demo_spec
from prunelab.stats import mean_std
from prunelab.threads import set_threads


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(exp, seeds: list[int]) -> dict:
    """Per seed: each level's density, final test accuracy, early-stop iteration, the reinit control's
    final test accuracy (None at level 0), and the seconds its trainings took."""
    out = {}
    for seed in seeds:
        levels = [exp.levels[seed][k] for k in sorted(exp.levels[seed])]
        control = exp.controls["reinit"][seed]
        out[str(seed)] = {
            "density": [m.density for m in levels],
            "test_acc": [m.final.test_acc for m in levels],
            "early_stop": [m.early_stop.iteration for m in levels],
            "reinit_test_acc": [None] + [control[k].final.test_acc for k in range(1, len(levels))],
            "train_seconds": round(
                sum(m.wall_time for m in levels) + sum(c.wall_time for c in control.values()), 1
            ),
        }
    return out


def margins(seeds: dict) -> dict:
    """The README's claims, as the smallest and largest margin over seeds and levels (points): the
    ticket against its dense network from level 2 (64% density) on and against the reinit control
    from level 3 (51%) on, the control against the dense network; the early-stop iterations' spread."""
    runs = list(seeds.values())
    n = len(runs[0]["test_acc"])
    over_dense = [100 * (r["test_acc"][k] - r["test_acc"][0]) for r in runs for k in range(2, n)]
    over_control = [100 * (r["test_acc"][k] - r["reinit_test_acc"][k]) for r in runs for k in range(3, n)]
    control_vs_dense = [100 * (r["reinit_test_acc"][k] - r["test_acc"][0]) for r in runs for k in range(1, n)]
    dense_stop = [r["early_stop"][0] for r in runs]
    level_spread = [
        max(r["early_stop"][k] for r in runs) - min(r["early_stop"][k] for r in runs) for k in range(n)
    ]
    return {
        "ticket_over_dense_from_level_2": [min(over_dense), max(over_dense)],
        "ticket_over_control_from_level_3": [min(over_control), max(over_control)],
        "control_minus_dense": [min(control_vs_dense), max(control_vs_dense)],
        "dense_early_stop": [min(dense_stop), max(dense_stop)],
        "early_stop_spread_at_a_level": max(level_spread),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs usable)")
    parser.add_argument("--root", default=None, help="results root (default: prunelab's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    seeds = list(parse_seeds(args.seeds))
    spec = demo_spec().model_copy(update={"seeds": tuple(seeds)})
    prunelab.run(spec, args.root, data_dir=args.data_dir)
    exp = prunelab.Store(args.root).read(prunelab.Store(args.root).experiment_dir(spec.experiment_id()))
    per_seed = collect(exp, seeds)
    recorded = exp.metrics(seeds[0], 0).environment
    result = {
        "experiment": spec.experiment_id(),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": recorded.get("threads", threads),
            "torch": recorded.get("torch", torch.__version__),
            "step": recorded.get("step"),
        },
        "seeds": per_seed,
        "margins": margins(per_seed),
    }
    runs = list(per_seed.values())
    print(f"{spec.label()}: seeds {seeds}, {result['machine']}")
    print(f"{'level':>5} {'density':>8} {'ticket':>16} {'reinit':>16}  early stop per seed")
    for k, density in enumerate(runs[0]["density"]):
        ticket = mean_std(r["test_acc"][k] for r in runs)
        control = mean_std(r["reinit_test_acc"][k] for r in runs) if k else None
        shown = f"{control[0]:.2%} ± {control[1]:.2%}" if control else "–"
        stops = ", ".join(f"{r['early_stop'][k]:,}" for r in runs)
        print(f"{k:>5} {density:>8.2%} {ticket[0]:>7.2%} ± {ticket[1]:.2%} {shown:>16}  {stops}")
    print("margins (points):", json.dumps(result["margins"]))
    print("training seconds per seed:", [r["train_seconds"] for r in runs])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
