"""Paper 003 Figs. 8-9 on a transformer: iterative unstructured pruning of BERT with fine-tuning,
at two prune fractions per round that reach about the same density (20% x 6 rounds, 50% x 2);
then the structured pruning Ou Yang & Xu left open: half the attention heads and half the FFN
neurons of every block (first-order Taylor importance), physically removed, with the latency of
the compacted model against the dense one (batch 1, 8 and 32 x 128 tokens).

The model is ``bert-tiny`` (2 layers, hidden 128, a WordPiece vocabulary trained on the data), or
any ``--model hf:PATH`` folder saved with ``save_pretrained`` (``--weights hf:DEFAULT`` starts from
its own weights). The data is GLUE SST-2 when ``--sst2 DIR`` holds its ``train.tsv`` and
``dev.tsv``; otherwise prunelab's SYNTHETIC sentiment task (generated sentences with a learnable
rule), and the output says so. The encoder's Linear layers are pruned (attention Q/K/V/output, FFN
in/out, pooler); the classifier is kept whole. Results are cached: a rerun reads them back.

    python examples/bert_sst2.py [--sst2 DIR] [--model bert-tiny] [--iterations 300] [--root DIR] [--tokens 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import prunelab
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec, results_root
from prunelab.training import TrainConfig

SCHEDULES = {"20% x 6 rounds": (0.2, 6), "50% x 2 rounds": (0.5, 2)}
STRUCTURED = "heads+FFN 50%"  # --method taylor --structure heads+ffn --rate 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sst2", type=Path, default=None, help="a folder with SST-2's train.tsv and dev.tsv")
    parser.add_argument("--model", default="bert-tiny", help="bert-tiny or hf:PATH")
    parser.add_argument("--weights", default=None, help="hf:DEFAULT to start from the folder's weights")
    parser.add_argument("--iterations", type=int, default=300, help="training iterations per level")
    parser.add_argument("--root", type=Path, default=None, help="results root (default: $PRUNELAB_HOME)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    parser.add_argument("--tokens", type=int, default=128, help="sequence length for the latency table")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions in the latency table")
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
    rows, runs = [], {}
    prunings = {
        label: PruneSpec(method="magnitude", scope="global", rate=rate, rounds=rounds, exclude=("model.classifier",))
        for label, (rate, rounds) in SCHEDULES.items()
    } | {STRUCTURED: PruneSpec(method="taylor", structure="heads+ffn", rate=0.5, rounds=1)}  # fmt: skip
    for label, pruning in prunings.items():
        spec = ExperimentSpec(
            model=args.model, weights=args.weights, data=data, train=train, name=f"{args.model} {label}",
            pruning=pruning, treatment=TreatmentSpec(kind="finetune"),
        )  # fmt: skip
        print(f"\n{spec.experiment_id()}  {spec.label()}", flush=True)
        result = ExperimentRunner(spec, results_root(args.root), log=print).run()
        runs[label] = spec.experiment_id()
        for level, metrics in enumerate(result.levels[0]):
            rows.append((label if level else "dense", level, metrics.density, metrics.early_stop.test_acc))
    print(f"\n{'schedule':<16} {'level':>5} {'density':>8} {'test acc':>9}")
    seen = set()
    for label, level, density, acc in rows:
        if level == 0 and label in seen:
            continue
        seen.add(label)
        print(f"{label:<16} {level:>5} {density:>8.1%} {acc:>9.2%}")
    latency_table(runs, args)
    print(f"done in {time.time() - start:.0f} s" + ("" if have_sst2 else "  [SYNTHETIC data]"))


def latency_table(runs: dict[str, str], args: argparse.Namespace) -> None:
    """Each schedule's last level compacted: heads and FFN neurons left, parameters, CPU latency."""
    from prunelab.compress.latency import bench_level
    from prunelab.compress.level import compact_level
    from prunelab.models.encoder import encoder_blocks

    root = results_root(args.root)
    batches = (1, 8, 32)
    print(f"\nlast level, compacted; median ms at batch {', '.join(map(str, batches))} x {args.tokens} tokens, "
          f"{torch.get_num_threads()} thread(s)")  # fmt: skip
    print(
        f"{'schedule':<16} {'heads':>6} {'FFN':>6} {'params':>9} "
        + " ".join(f"{'b' + str(b):>14}" for b in batches)
    )
    for label, run in runs.items():
        item = compact_level(run, root=root)
        blocks = encoder_blocks(item.result.model)
        params = sum(p.numel() for p in item.result.model.parameters())
        timed = bench_level(run, root=root, batch_sizes=batches, tokens=args.tokens, repeats=args.repeats,
                            warmup=1, threads=torch.get_num_threads(), sparse=False)  # fmt: skip
        cells = []
        for b in batches:
            dense, small = (
                timed.find(str(item.loaded.level), "dense", b),
                timed.find(str(item.loaded.level), "compact", b),
            )
            cells.append(f"{dense.median_ms:5.1f}->{small.median_ms:5.1f}")
        print(f"{label:<16} {sum(b.heads for b in blocks):>6} {sum(b.ffn_size for b in blocks):>6} {params:>9,} "
              + " ".join(f"{c:>14}" for c in cells))  # fmt: skip
    print("(dense -> compacted; unstructured masks remove no whole head or neuron, so they do not speed up)")


if __name__ == "__main__":
    main()
