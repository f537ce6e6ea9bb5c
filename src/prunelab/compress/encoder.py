"""A compacted transformer encoder as a Hugging Face ``save_pretrained`` folder.

Compaction removes heads, FFN neurons and hidden channels like any coupled group
(:mod:`prunelab.compress.compact`); a transformers config can describe the result only where every
block keeps its head count and all blocks one FFN width (:func:`save_pretrained`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.models.encoder import encoder_blocks, example_tokens
from prunelab.models.vision import import_transformers


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
    width = getattr(config, "hidden_size", getattr(config, "dim", None))
    embedded = hf.get_input_embeddings().weight.shape[1]
    if width is not None and embedded != width:
        return (
            f"no hf/ folder: the hidden width was pruned ({width} -> {embedded}), which a transformers "
            "config cannot describe beside the heads' width; load it with prunelab.load_compact"
        )
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
    shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    odd = [k for k, v in hf.state_dict().items() if shapes.get(k) != tuple(v.shape)]
    if odd:
        return (
            f"no hf/ folder: {odd[0]} has a shape a transformers config cannot describe "
            f"({len(odd)} such tensors); load it with prunelab.load_compact"
        )
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
