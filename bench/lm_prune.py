"""One-shot pruning of a language model trained here on real English text, and the cost of pruning
an OPT-125m-shaped model.

Prints, from one run on this machine:
  * the corpus: Debian's `fortunes` package (apt-get install fortunes: quotations, jokes, poems and
    definitions in English, /usr/share/games/fortunes), its sayings joined into one text; `--corpus
    FILE` takes any UTF-8 text instead. prunelab's `text:` data holds out its last 10% of tokens for
    testing and the 5% before them for validation;
  * a GPT-2-shaped model (default 4 layers, width 256, 4 heads, windows of 128 tokens) with a
    byte-level BPE vocabulary (2,048) trained on the corpus's training part (tokenizers), trained by
    prunelab's trainer (AdamW 3e-3, cosine schedule, batches of 8 windows) for --iterations (1,000,
    about 1.5 passes over the training text), then saved as a save_pretrained folder;
  * pruned one-shot through prunelab's runner (`prunelab run --weights hf:DEFAULT`, no retraining)
    to 50% unstructured, 2:4 and 4:8 (and 70% unstructured) with magnitude (per layer; N:M within each group), Wanda
    (per output row; N:M) and SparseGPT (column blocks of 128; N:M), each calibrated on
    --calibration windows of the training split: the test perplexity of each against dense,
    and the Jaccard similarity of Wanda's and SparseGPT's masks (and magnitude's) at each sparsity;
  * the time and peak resident memory of pruning an OPT-125m-shaped model (12 layers, width 768,
    FFN 3072, vocabulary 50,272; random weights: the cost does not depend on their values) to 50%
    with SparseGPT and Wanda on 32 x 512 calibration tokens; goals SparseGPT <= 5 min, Wanda <= 1 min
    (at 2 threads).

    python bench/lm_prune.py [--threads N] [--iterations 1000] [--corpus FILE] [--skip-opt]
    python bench/lm_prune.py --corpus tiny.txt --layers 1 --width 32 --heads 2 --iterations 4 \\
        --calibration 4 --opt-layers 1 --opt-width 64 --opt-tokens 32 --opt-sequences 4   # checks it runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from prunelab.analysis.similarity import compare_masks
from prunelab.cache import cache_base
from prunelab.experiments import ExperimentRunner, ExperimentSpec, TrunkSpec
from prunelab.experiments.single import train_once
from prunelab.models.causal import CausalLM, hf_state_dict
from prunelab.models.vision import import_transformers
from prunelab.profiling import measured
from prunelab.pruning import PruneContext, PruneSpec, prune
from prunelab.spec import build_spec
from prunelab.threads import set_threads
from prunelab.training import TrainConfig

FORTUNES = Path("/usr/share/games/fortunes")
METHODS = ("magnitude", "wanda", "sparsegpt")
#: Column -> (sparsity, structure): the papers' 50%, 2:4 and 4:8, and 70% where methods part further.
CASES = {"50%": (0.5, None), "2:4": (0.5, "2:4"), "4:8": (0.5, "4:8"), "70%": (0.7, None)}


def corpus_file(args: argparse.Namespace, work: Path) -> Path:
    """The corpus as one UTF-8 file: --corpus as it is, or Debian's fortunes joined into one text."""
    if args.corpus is not None:
        return args.corpus
    if not FORTUNES.is_dir():
        sys.exit(f"no corpus: {FORTUNES} is missing; install Debian's fortunes package (apt-get install fortunes) "
                 "or give --corpus FILE")  # fmt: skip
    sayings = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        sayings += [s.strip() for s in text.split("\n%\n") if s.strip()]
    out = work / "fortunes.txt"
    out.write_text("\n\n".join(sayings) + "\n")
    return out


def tokenizer(text: str, vocab: int):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = import_transformers()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(text.split("\n\n"), trainer)
    return t.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def trained_model(args: argparse.Namespace, corpus: Path, work: Path) -> tuple[Path, float]:
    """A save_pretrained folder of the GPT-2-shaped model trained on ``corpus`` (reused when the same
    settings trained it before), and its training time in seconds."""
    t = import_transformers()
    settings = {
        k: getattr(args, k)
        for k in ("layers", "width", "heads", "vocab", "tokens", "batch", "iterations", "lr")
    }
    settings["corpus"] = str(corpus)
    settings["corpus_bytes"] = corpus.stat().st_size
    folder = work / "trained"
    marker = folder / "bench-settings.json"
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return folder, json.loads(marker.read_text())["seconds"]
    text = corpus.read_text()
    fast = tokenizer(text[: int(len(text) * 0.85)], args.vocab)  # the vocabulary from the training part
    init = work / "init"
    torch.manual_seed(0)
    config = t.GPT2Config(
        vocab_size=len(fast), n_positions=args.tokens, n_embd=args.width, n_layer=args.layers, n_head=args.heads,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    t.GPT2LMHeadModel(config).save_pretrained(init)
    fast.save_pretrained(init)
    spec = build_spec(
        TrunkSpec, model=f"hf:{init}", weights="hf:DEFAULT", data=f"text:{corpus}", sequence_length=args.tokens,
        train=TrainConfig(optimizer="adamw", lr=args.lr, weight_decay=0.1, batch_size=args.batch,
                          iterations=args.iterations, schedule="cosine", warmup=f"{max(1, args.iterations // 20)}it",
                          eval_every=f"{max(1, args.iterations // 4)}it"),
    )  # fmt: skip
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 10) == 0:
            print(f"  training: iteration {done} of {total}, {time.perf_counter() - start:.0f} s", flush=True)

    done = train_once(spec, seed=0, on_progress=progress)
    seconds = time.perf_counter() - start
    model = done.trainer.model
    assert isinstance(model, CausalLM)
    fresh = type(model.model)(model.model.config)
    fresh.load_state_dict(hf_state_dict(model))
    fresh.save_pretrained(folder)
    fast.save_pretrained(folder)
    marker.write_text(json.dumps({"settings": settings, "seconds": seconds}))
    return folder, seconds


def prune_all(args: argparse.Namespace, corpus: Path, folder: Path, root: Path) -> dict:
    """Test perplexity of dense and each method at each sparsity, and the runs (for their masks)."""
    results, runs = {}, {}
    for label, (sparsity, structure) in CASES.items():
        for method in METHODS:
            pruning = {
                "method": method,
                "target_sparsity": sparsity,
                "rounds": 1,
                "calibration_sequences": args.calibration,
            }
            if structure is not None:
                pruning["structure"] = structure
            spec = build_spec(
                ExperimentSpec, model=f"hf:{folder}", weights="hf:DEFAULT", data=f"text:{corpus}",
                sequence_length=args.tokens, pruning=pruning,
            )  # fmt: skip
            runner = ExperimentRunner(spec, root, log=lambda m: print(f"  {m}", flush=True))
            result = runner.run()
            dense, pruned = result.levels[0]
            results["dense"] = dense.value("test_ppl")
            results[(method, label)] = (pruned.value("test_ppl"), pruned.density)
            runs[(method, label)] = runner.store.read(runner.directory)
    return {"ppl": results, "runs": runs}


def opt_cost(args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    """(method, wall seconds, CPU seconds, peak resident GiB) of pruning an OPT-125m-shaped model to 50%."""
    t = import_transformers()
    torch.manual_seed(0)
    config = t.OPTConfig(
        vocab_size=50272, hidden_size=args.opt_width, num_hidden_layers=args.opt_layers, ffn_dim=4 * args.opt_width,
        num_attention_heads=max(1, args.opt_width // 64), max_position_embeddings=2048, word_embed_proj_dim=args.opt_width,
    )  # fmt: skip
    model = CausalLM(t.OPTForCausalLM(config)).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50272, (args.opt_sequences, args.opt_tokens), generator=g)
    batches = tuple((ids[i : i + 8], None) for i in range(0, len(ids), 8))
    out = []
    for method in ("wanda", "sparsegpt"):
        spec = build_spec(PruneSpec, method=method, target_sparsity=0.5, rounds=1)
        with measured() as cost:
            prune(model, None, spec, context=PruneContext(batches=batches, updates={}))
        out.append((method, cost.seconds, cost.cpu_seconds, cost.peak_rss / (1 << 30)))
        print(f"  OPT-125m-shaped, {method}: {cost.text()}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, default=None, help="a UTF-8 text file (default: Debian's fortunes)"
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for the corpus, models and runs")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=128, help="sequence length")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--calibration", type=int, default=128, help="calibration windows")
    parser.add_argument("--opt-layers", type=int, default=12)
    parser.add_argument("--opt-width", type=int, default=768)
    parser.add_argument("--opt-tokens", type=int, default=512)
    parser.add_argument("--opt-sequences", type=int, default=32)
    parser.add_argument("--skip-opt", action="store_true", help="leave out the OPT-125m-shaped timing")
    parser.add_argument("--opt-only", action="store_true", help="only the OPT-125m-shaped timing")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    work = args.work or cache_base() / "bench-lm"
    work.mkdir(parents=True, exist_ok=True)
    if not args.opt_only:
        trained_and_pruned(args, work, threads)
    if not args.skip_opt:
        print(
            f"\npruning an OPT-125m-shaped model ({args.opt_layers} layers, width {args.opt_width}) to 50% on "
            f"{args.opt_sequences} x {args.opt_tokens} calibration tokens, {threads} thread(s):"
        )
        for method, secs, cpu, gib in opt_cost(args):
            goal = 300 if method == "sparsegpt" else 60
            print(
                f"{method:<10} {secs:8.1f} s ({cpu:.1f} s of CPU)  peak resident {gib:.2f} GiB   "
                f"goal <= {goal} s (at 2 threads)"
            )


def trained_and_pruned(args: argparse.Namespace, work: Path, threads: int) -> None:
    """The GPT-2-shaped model trained on the corpus and pruned 12 ways: perplexities and Jaccards."""
    corpus = corpus_file(args, work)
    print(f"corpus {corpus} ({corpus.stat().st_size:,} bytes); {threads} thread(s)", flush=True)
    folder, seconds = trained_model(args, corpus, work)
    print(
        f"GPT-2-shaped model: {args.layers} layers, width {args.width}, {args.heads} heads, vocabulary {args.vocab}, "
        f"windows of {args.tokens}; trained {args.iterations} iterations of {args.batch} windows in {seconds:.0f} s",
        flush=True,
    )
    found = prune_all(args, corpus, folder, work / "runs")
    ppl = found["ppl"]
    print(f"\ntest perplexity, one-shot (no retraining); dense {ppl['dense']:.2f}")
    print(f"{'method':<12}" + "".join(f"{label:>12}" for label in CASES))
    for method in METHODS:
        print(f"{method:<12}" + "".join(f"{ppl[(method, label)][0]:>12.2f}" for label in CASES))
    print("\nmask Jaccard similarity (kept weights, all pruned layers)")
    for a, b in (("wanda", "sparsegpt"), ("magnitude", "wanda"), ("magnitude", "sparsegpt")):
        values = []
        for label in CASES:
            rows = compare_masks(found["runs"][(a, label)].mask(0, 1), found["runs"][(b, label)].mask(0, 1))
            values.append(rows[-1]["jaccard"])
        pairs = "".join(f"{label}: {v:.3f}   " for label, v in zip(CASES, values, strict=True))
        print(f"{a + ' vs ' + b:<24}{pairs}")


if __name__ == "__main__":
    main()
