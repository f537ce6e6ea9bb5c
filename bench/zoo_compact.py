"""Coupled-group pruning and compaction over a model zoo, beside Torch-Pruning (a benchmark).

For every torchvision classification model up to 150M parameters, six timm models and a Hugging
Face ViT built from a config: random weights with trained-like normalisation statistics (BatchNorm
and LayerNorm scales around 1, non-zero shifts and running statistics, no zero-initialised heads or
layer scales), 30% of the units of every coupled group pruned by L1 (``prunelab.prune(...,
method="l1-filter", structure="groups")``: channels, and attention heads as units), then
``prunelab.compress.compact`` (checked against the masked model in eval and in train mode). Printed
per model: whether it compacted, the parameter ratio, the classes kept, discovery + compaction
time (one trace shared by the pruning and the compaction), and Torch-Pruning 1.6.1's ratio for the same request (``MetaPruner`` with
``MagnitudeImportance(p=1)``, ``pruning_ratio=0.3``, the layers writing the classes ignored so
they stay)
where it runs. One model per process at one thread; results are appended to a JSON-lines file as
they come, so an interrupted run resumes where it stopped.

    python bench/zoo_compact.py                   # everything (about an hour on 2 cores)
    python bench/zoo_compact.py --only resnet18,vit_b_16 --results zoo.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

LIMIT = 150e6
LIMIT_BYTES = 16 * 2**30  # address space of one model's process
TIMM = ["resnet50", "convnext_atto", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "efficientnet_b0",
        "regnety_002"]  # fmt: skip


def names() -> list[str]:
    from prunelab.models.vision import import_torchvision

    tv = import_torchvision()
    out = [f"torchvision:{n}" for n in tv.models.list_models(module=tv.models)]
    return out + [f"timm:{n}" for n in TIMM] + ["hf:vit"]


def build(name: str, size: int | None = None):
    import torch

    source, _, model = name.partition(":")
    size = size or (299 if model == "inception_v3" else 224)
    if source == "torchvision":
        from prunelab.models.vision import import_torchvision

        tv = import_torchvision()
        extra = {"init_weights": False} if model in ("googlenet", "inception_v3") else {}
        net = tv.models.get_model(model, weights=None, **extra)
    elif source == "timm":
        from prunelab.models.vision import import_timm

        timm = import_timm()

        net = timm.create_model(model, pretrained=False)
    else:
        from prunelab.models.vision import import_transformers

        t = import_transformers()
        config = t.ViTConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
                             image_size=224, patch_size=16, num_labels=1000)  # fmt: skip

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.vit = t.ViTForImageClassification(config)

            def forward(self, x):
                return self.vit(pixel_values=x).logits

        net = Logits()
    trained_like(net)
    return net.eval(), torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def trained_like(net) -> None:
    """Norm scales around 1 with non-zero shifts and running statistics; no all-constant tensors
    (zero-initialised heads, layer scales at 1e-6), which would hide channels' differences."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
                    p.copy_(
                        torch.randn(p.shape, generator=g) * 0.02
                        + (1.0 if name == "weight" and p.dim() == 1 else 0.0)
                    )
            if isinstance(
                module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)
            ):
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.rand(module.bias.shape, generator=g) * 0.4 - 0.2)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=g) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


def one(name: str, size: int | None = None) -> dict:
    """Prune, compact and compare one model (in its own process)."""
    import copy

    import torch

    import prunelab
    from prunelab.compress import compact

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))  # a peer that runs away fails alone
    net, x = build(name, size)
    params = sum(p.numel() for p in net.parameters())
    row: dict = {"model": name, "params": params}
    if params > LIMIT:
        row["skipped"] = f"{params / 1e6:.0f}M parameters"
        return row
    outputs = net(x).shape[-1]
    start = time.perf_counter()
    try:
        from prunelab.coupling import discover
        from prunelab.pruning import PruneContext

        groups = discover(net, x)
        traced = time.perf_counter()
        mask = prunelab.prune(
            net,
            None,
            fraction=0.3,
            method="l1-filter",
            structure="groups",
            context=PruneContext(groups=groups),
        )
        pruned = time.perf_counter()
        result = compact(net, mask, x, groups=groups)
        done = time.perf_counter()
    except prunelab.PrunelabError as exc:
        row["error"] = str(exc)[:300]
        return row
    small = result.model
    kept = sum(p.numel() for p in small.parameters())
    with torch.no_grad():
        classes = small(x).shape[-1]
    row.update(
        compacted=True, ratio=kept / params, classes=classes == outputs, error_max=result.max_error,
        groups=len(groups.prunable()), frozen=sum(len(g.frozen) for g in groups.prunable()),
        discover_s=traced - start, prune_s=pruned - traced, compact_s=done - pruned, seconds=done - start,
    )  # fmt: skip
    row.update(peer(copy.deepcopy(net), x, outputs))
    return row


def peer(net, x, classes: int) -> dict:
    """Torch-Pruning's ratio for the same request (every layer whose outputs are the classes
    ignored, so they stay), or why it does not run."""
    import torch

    try:
        import torch_pruning as tp
    except ImportError:
        return {"tp": "not installed"}
    params = sum(p.numel() for p in net.parameters())
    heads = [
        m for m in net.modules()
        if (isinstance(m, torch.nn.Linear) and m.out_features == classes)
        or (isinstance(m, torch.nn.Conv2d) and m.out_channels == classes)
    ]  # fmt: skip
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(
            net, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.3, ignored_layers=heads
        )
        pruner.step()
        with torch.no_grad():
            net(x)
    except Exception as exc:
        return {"tp": f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"}
    return {
        "tp_ratio": sum(p.numel() for p in net.parameters()) / params,
        "tp_s": time.perf_counter() - start,
    }


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<46} {'params':>8} {'ratio':>6} {'TP':>6} {'classes':>7} {'time s':>7}  note"]
    for r in rows:
        tp = f"{r['tp_ratio']:.3f}" if "tp_ratio" in r else "-"
        if r.get("compacted"):
            lines.append(
                f"{r['model']:<46} {r['params'] / 1e6:>7.1f}M {r['ratio']:>6.3f} {tp:>6} {'kept' if r['classes'] else 'LOST':>7} "
                f"{r['seconds']:>7.1f}  {r.get('tp', '')[:60]}"
            )
        else:
            lines.append(
                f"{r['model']:<46} {r.get('params', 0) / 1e6:>7.1f}M {'-':>6} {tp:>6} {'':>7} {'':>7}  {r.get('error') or r.get('skipped')}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="zoo_compact.jsonl", help="JSON-lines file (appended, resumed)")
    parser.add_argument("--only", help="comma-separated model names (torchvision:resnet18, timm:..., hf:vit)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--size", type=int, help="input height and width (default 224; 299 for Inception-V3)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.size)))
        return
    path = Path(args.results)
    done = (
        {json.loads(line)["model"]: json.loads(line) for line in path.read_text().splitlines()}
        if path.exists()
        else {}
    )
    wanted = args.only.split(",") if args.only else names()
    wanted = [w if ":" in w else f"torchvision:{w}" for w in wanted]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in wanted:
        if name in done:
            continue
        try:
            size = ["--size", str(args.size)] if args.size else []
            proc = subprocess.run([sys.executable, __file__, "--one", name, *size], capture_output=True, text=True,
                                  timeout=args.timeout, env=env)  # fmt: skip
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            row = (
                json.loads(lines[-1])
                if lines
                else {"model": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
            )
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timed out after {args.timeout:.0f} s"}
        done[name] = row
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[1], flush=True)
    rows = [done[n] for n in wanted]
    print(table(rows))
    measured = [r for r in rows if "skipped" not in r]
    ok = [r for r in measured if r.get("compacted") and r.get("classes")]
    print(f"\ncompacted exactly, classes kept: {len(ok)} of {len(measured)} models")
    compared = [r for r in ok if "tp_ratio" in r]
    worse = [r["model"] for r in compared if r["ratio"] > r["tp_ratio"] + 0.01]
    print(f"Torch-Pruning ran on {len(compared)}; prunelab's ratio above TP's + 0.01 on: {worse or 'none'}")
    slow = [r["model"] for r in ok if r["seconds"] > 30]
    print(f"discovery + pruning + compaction over 30 s: {slow or 'none'}")


if __name__ == "__main__":
    main()
