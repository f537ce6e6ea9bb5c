"""CPU latency of a BERT-base-shaped encoder before and after removing half its heads and FFN neurons.

Prints, from one run on this machine (threads pinned, denormals flushed, dense and compacted
repetitions interleaved, each timed call right after an untimed one of the same model; see
prunelab.compress.latency):
  * a BERT-base-shaped sequence classifier (12 layers, hidden 768, 12 heads, FFN 3072; random
    weights: latency does not depend on their values) reading sequences of 128 tokens;
  * 50% of the heads and 50% of the FFN neurons of every block pruned (L1 norm of each head's
    Q/K/V rows and output columns, of each neuron's row and column: `--method l1-structured
    --structure heads` then `ffn`), then removed by prunelab's compaction (checked against the
    masked model's logits);
  * per batch size: dense and compacted medians and p90, speed-up (dense / compacted), FLOP ratio
    (dense / compacted FLOPs per sequence, attention's QK^T and AV products included) and
    speed-up / FLOP ratio, the share of the FLOP saving that turns into time;
  * goal: speed-up / FLOP ratio >= 0.7 at batch 8 x 128 tokens.

    python bench/bert_speed.py [--batches 1,8,32] [--tokens 128] [--repeats 5] [--threads N]
    python bench/bert_speed.py --layers 2 --hidden 128 --heads 2 --ffn 512 --batches 1 --repeats 2  # checks it runs
"""

from __future__ import annotations

import argparse
import os

import torch

from prunelab.compress import Variant, benchmark, compact
from prunelab.compress.latency import check_bench_settings
from prunelab.models import count_parameters, example_input
from prunelab.models.encoder import encoder_blocks
from prunelab.models.hf import TextClassifier
from prunelab.models.vision import import_transformers
from prunelab.pruning import prune

GOAL_BATCH, GOAL = 8, 0.7


def variants(args: argparse.Namespace) -> tuple[list[Variant], str]:
    """Dense and compacted encoders, and a line saying what was removed."""
    t = import_transformers()
    torch.manual_seed(0)
    config = t.BertConfig(
        vocab_size=30522, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.ffn, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    dense = TextClassifier(t.BertForSequenceClassification(config), pad_id=0).eval()
    mask = prune(dense, None, fraction=0.5, method="l1-structured", structure="heads")
    mask = prune(dense, mask, fraction=0.5, method="l1-structured", structure="ffn")
    shape = (args.tokens,)
    result = compact(dense, mask, example_input(dense, shape, 2))
    small = result.model
    before, after = encoder_blocks(dense), encoder_blocks(small)
    note = (
        f"BERT-shaped encoder: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, FFN {args.ffn}, "
        f"{args.tokens} tokens; heads {sum(b.heads for b in before)} -> {sum(b.heads for b in after)}, "
        f"FFN neurons {sum(b.ffn_size for b in before):,} -> {sum(b.ffn_size for b in after):,}; "
        f"{count_parameters(dense):,} -> {count_parameters(small):,} parameters "
        f"(checked: max |compact - masked| logits = {result.max_error:.2g})"
    )
    return [Variant.of("dense", dense, shape), Variant.of("compact", small, shape)], note


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (sequences)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per model and batch")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model before timing")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads, pinned while timing"
    )
    args = parser.parse_args()
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if args.hidden % args.heads or args.heads < 2 or not 1 <= args.tokens <= 512:
        parser.error("--heads must be >= 2 and divide --hidden; --tokens must be in 1..512")
    check_bench_settings(batches, args.repeats, args.warmup, args.threads, "cpu")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPU cores, load average {load:.2f}; torch {torch.__version__}")
    models, note = variants(args)
    shape = (args.tokens,)
    result = benchmark(models, shape, batches, repeats=args.repeats, warmup=args.warmup, threads=args.threads)
    print(f"\n{note}")
    print(f"threads used: {result.threads} (pinned), {result.repeats} interleaved repetitions")
    print(
        f"{'batch':>5} {'dense ms':>10} {'p90':>8} {'compact ms':>10} {'p90':>8} {'speed-up':>9} "
        f"{'FLOP ratio':>10} {'speed-up / FLOP ratio':>21}"
    )
    shares = {}
    for batch in batches:
        dense, small = result.find("", "dense", batch), result.find("", "compact", batch)
        speedup, ratio = result.speedup(small), result.flop_ratio(small)
        shares[batch] = speedup / ratio
        print(
            f"{batch:5d} {dense.median_ms:10.1f} {dense.p90_ms:8.1f} {small.median_ms:10.1f} {small.p90_ms:8.1f} "
            f"{speedup:9.2f} {ratio:10.2f} {shares[batch]:21.2f}"
        )
    share = shares.get(GOAL_BATCH)
    outcome = (
        f"{share:.2f} -> {'met' if share >= GOAL else 'not met'}"
        if share is not None
        else f"not measured (needs {GOAL_BATCH} in --batches)"
    )
    print(f"goal: >= {GOAL} at batch {GOAL_BATCH} x {args.tokens} tokens (speed-up / FLOP ratio): {outcome}")


if __name__ == "__main__":
    main()
