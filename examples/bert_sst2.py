"""Paper 003 Figs. 8-9 on a transformer: iterative unstructured pruning of BERT with fine-tuning,
at two prune fractions per round that reach about the same density (20% x 6 rounds, 50% x 2).

The model is ``bert-tiny`` (2 layers, hidden 128, a WordPiece vocabulary trained on the data), or
any ``--model hf:PATH`` folder saved with ``save_pretrained`` (``--weights hf:DEFAULT`` starts from
its own weights). The data is GLUE SST-2 when ``--sst2 DIR`` holds its ``train.tsv`` and
``dev.tsv``; otherwise prunelab's SYNTHETIC sentiment task (generated sentences with a learnable
rule), and the output says so. The encoder's Linear layers are pruned (attention Q/K/V/output, FFN
in/out, pooler); the classifier is kept whole. Results are cached: a rerun reads them back.

    python examples/bert_sst2.py [--sst2 DIR] [--model bert-tiny] [--iterations 300] [--root DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import prunelab
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec, results_root
from prunelab.training import TrainConfig

SCHEDULES = {"20% x 6 rounds": (0.2, 6), "50% x 2 rounds": (0.5, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sst2", type=Path, default=None, help="a folder with SST-2's train.tsv and dev.tsv")
    parser.add_argument("--model", default="bert-tiny", help="bert-tiny or hf:PATH")
    parser.add_argument("--weights", default=None, help="hf:DEFAULT to start from the folder's weights")
    parser.add_argument("--iterations", type=int, default=300, help="training iterations per level")
    parser.add_argument("--root", type=Path, default=None, help="results root (default: $PRUNELAB_HOME)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    args = parser.parse_args()
    prunelab.set_threads(args.threads)
    start = time.time()
    have_sst2 = (
        args.sst2 is not None and (args.sst2 / "train.tsv").is_file() and (args.sst2 / "dev.tsv").is_file()
    )
    data = f"sst2:{args.sst2}" if have_sst2 else "synthetic-sentiment"
    print(
        f"model: {args.model}; data: "
        + ("GLUE SST-2" if have_sst2 else "SYNTHETIC sentiment task (no SST-2 given)")
    )
    train = TrainConfig(optimizer="adam", lr=2e-3 if args.weights is None else 5e-5, batch_size=32,
                        iterations=args.iterations, eval_every="50it")  # fmt: skip
    rows = []
    for label, (rate, rounds) in SCHEDULES.items():
        spec = ExperimentSpec(
            model=args.model, weights=args.weights, data=data, train=train, name=f"{args.model} {label}",
            pruning=PruneSpec(method="magnitude", scope="global", rate=rate, rounds=rounds, exclude=("model.classifier",)),
            treatment=TreatmentSpec(kind="finetune"),
        )  # fmt: skip
        print(f"\n{spec.experiment_id()}  {spec.label()}", flush=True)
        result = ExperimentRunner(spec, results_root(args.root), log=print).run()
        for level, metrics in enumerate(result.levels[0]):
            rows.append((label if level else "dense", level, metrics.density, metrics.early_stop.test_acc))
    print(f"\n{'schedule':<16} {'level':>5} {'density':>8} {'test acc':>9}")
    seen = set()
    for label, level, density, acc in rows:
        if level == 0 and label in seen:
            continue
        seen.add(label)
        print(f"{label:<16} {level:>5} {density:>8.1%} {acc:>9.2%}")
    print(f"done in {time.time() - start:.0f} s" + ("" if have_sst2 else "  [SYNTHETIC data]"))


if __name__ == "__main__":
    main()
