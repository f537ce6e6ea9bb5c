"""Physical removal from transformer encoders: whole attention heads and FFN neurons.

Per encoder block (:mod:`prunelab.models.encoder`) a head goes when the mask leaves it

* unused: every output-projection column of the head is pruned, so it contributes nothing; or
* dead: every value-projection row of the head is pruned, so its context is the value bias for
  any attention pattern (attention weights sum to 1): its contribution, the output projection's
  columns times that constant, is measured on the masked model and folded into the projection's bias.

An FFN neuron goes when its column of the second layer is pruned (unused), or its row of the first
(dead: its activation is a constant, folded into the second layer's bias the same way). Removal
takes the head's query/key/value rows and output columns (``prune_linear_layer`` of transformers)
and updates the attention module's head count; every block keeps at least one head and one
neuron. Other pruned weights stay in place as zeros. The result is checked against the masked
model on real-looking token batches, so it computes what the masked model computes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from prunelab.compress.graph import CompactResult, layer_plan
from prunelab.errors import PrunelabError
from prunelab.models.encoder import EncoderBlock, encoder_blocks, example_tokens, set_head_counts
from prunelab.models.vision import import_transformers
from prunelab.pruning.mask import Mask


def compact_encoder(
    model: nn.Module, mask: Mask | None, example_input: torch.Tensor, *, check_batch: int = 4, seed: int = 0
) -> CompactResult:
    """A copy of the transformer ``model`` (masked by ``mask``) without its removable heads and FFN neurons."""
    mask = mask if mask is not None else Mask.from_model_zeros(model)
    mask.check_fits(model)
    reference = copy.deepcopy(model).eval()
    mask.apply(reference)
    net = copy.deepcopy(reference)
    blocks = encoder_blocks(net, "compaction")
    inputs = _inputs_of(net, [b.name(p) for b in blocks for p in ("output", "ffn_out")], example_input)
    prune_linear = import_transformers().pytorch_utils.prune_linear_layer
    kept: dict[str, list[int]] = {}
    removed: dict[str, int] = {}
    with torch.no_grad():
        for block in blocks:
            heads = _keep(net, block, "heads", inputs[block.name("output")])
            neurons = _keep(net, block, "ffn", inputs[block.name("ffn_out")])
            rows = (heads[:, None] * block.head_dim + torch.arange(block.head_dim)).flatten()
            for part in ("query", "key", "value"):
                net.set_submodule(
                    block.name(part), prune_linear(net.get_submodule(block.name(part)), rows, 0)
                )
            net.set_submodule(
                block.name("output"), prune_linear(net.get_submodule(block.name("output")), rows, 1)
            )
            net.set_submodule(
                block.name("ffn_in"), prune_linear(net.get_submodule(block.name("ffn_in")), neurons, 0)
            )
            net.set_submodule(
                block.name("ffn_out"), prune_linear(net.get_submodule(block.name("ffn_out")), neurons, 1)
            )
            kept[block.name("attention")] = heads.tolist()
            removed[block.name("attention")] = block.heads - len(heads)
            kept[block.name("ffn_in")] = neurons.tolist()
            removed[block.name("ffn_in")] = block.ffn_size - len(neurons)
    set_head_counts(net)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
    error = _check(net, reference, example_input, check_batch, seed)
    return CompactResult(net, layer_plan(net), kept, removed, {}, error)


def _keep(net: nn.Module, block: EncoderBlock, kind: str, seen: torch.Tensor) -> torch.Tensor:
    """Indices of the heads (or FFN neurons) kept; a dead one's constant is folded into the bias."""
    if kind == "heads":
        size, width = block.heads, block.head_dim
        producer, consumer = net.get_submodule(block.name("value")), net.get_submodule(block.name("output"))
    else:
        size, width = block.ffn_size, 1
        producer, consumer = net.get_submodule(block.name("ffn_in")), net.get_submodule(block.name("ffn_out"))
    live = producer.weight.ne(0).reshape(size, -1).any(1)
    used = consumer.weight.ne(0).reshape(consumer.out_features, size, width).any(2).any(0)
    keep = live & used
    if not keep.any():  # a block keeps one unit: the first used one, else the first
        keep[int(used.nonzero()[0]) if used.any() else 0] = True
    fold = used & ~keep
    if fold.any():
        columns = (fold.nonzero().flatten()[:, None] * width + torch.arange(width)).flatten()
        constant = seen.reshape(-1, seen.shape[-1])[0, columns]  # the same at every token
        delta = consumer.weight[:, columns] @ constant.to(consumer.weight.dtype)
        if consumer.bias is None:
            consumer.bias = nn.Parameter(torch.zeros_like(delta))
        consumer.bias += delta
    return keep.nonzero().flatten()


def _inputs_of(net: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of each named layer on one example sequence (for a dead unit's constant)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        net.get_submodule(n).register_forward_pre_hook(
            lambda m, args, n=n: seen.__setitem__(n, args[0].detach())
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            net(example[:1])
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def _check(net: nn.Module, reference: nn.Module, example: torch.Tensor, batch: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    tokens = example_tokens(reference, example.shape[1], batch, generator, example.device)
    checks = [example, tokens]
    error, scale = 0.0, 0.0
    for x in checks:
        want, got = reference(x), net(x)
        error = max(error, float((want - got).abs().max()))
        scale = max(scale, float(want.abs().max()))
    if error > 1e-4 * max(1.0, scale):
        raise PrunelabError(
            f"the compacted transformer differs from the masked one by {error:.3g} (logits up to {scale:.3g})"
        )
    return error


def save_pretrained(model: nn.Module, folder: Path, source, data: str | None) -> str:
    """Write the compacted text model as a ``save_pretrained`` folder (weights, config, tokenizer)
    that ``AutoModelForSequenceClassification.from_pretrained`` loads, where its config can say
    what it is: every block with the original head count and one FFN width. A transformers config
    cannot describe removed heads (a head's width is hidden size / heads), nor blocks of different
    widths. Returns what was written, or why nothing was."""
    blocks = encoder_blocks(model, "save_pretrained")
    hf = model.model
    layout = blocks[0].layout
    config = copy.deepcopy(hf.config)
    if {b.heads for b in blocks} != {getattr(config, layout.heads_attribute)}:
        return (
            "no hf/ folder: heads were removed, which a transformers config cannot describe "
            "(a head's width is hidden size / heads); load it with prunelab.load_compact"
        )
    widths = sorted({b.ffn_size for b in blocks})
    if len(widths) != 1:
        return f"no hf/ folder: the blocks keep different FFN widths ({widths[:6]}); load it with prunelab.load_compact"
    setattr(config, layout.ffn_attribute, widths[0])
    t = import_transformers()
    with torch.device("meta"):
        fresh = type(hf)(config)
    fresh.load_state_dict(hf.state_dict(), assign=True)
    fresh.save_pretrained(folder)
    source.tokenizer(data).tokenizer.save_pretrained(folder)
    loaded = t.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    x = example_tokens(model, 16, 2, torch.Generator().manual_seed(0), next(model.parameters()).device)
    with torch.no_grad():
        same = torch.allclose(type(model)(loaded, model.pad_id)(x), model(x), rtol=1e-4, atol=1e-5)
    if not same:
        raise PrunelabError("the save_pretrained folder does not reproduce the compacted model")
    return f"hf/: a save_pretrained folder (FFN width {widths[0]}) for AutoModelForSequenceClassification"
