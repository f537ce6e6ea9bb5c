"""The layout of a transformer encoder: which Linear layers make up each attention head and FFN neuron.

In every block of a BERT-style encoder, head ``h`` (of ``heads``, ``d = head_dim`` wide) is rows
``h*d .. (h+1)*d`` of the query, key and value projections and the same columns of the attention
output projection; FFN neuron ``j`` is row ``j`` of the FFN's first Linear and column ``j`` of its
second. Head pruning (:data:`prunelab.pruning.STRUCTURES` ``heads``), FFN pruning (``ffn``), head
importance and compaction all read the layout from here. Module names are relative to a block;
a block is found by its query projection, and its head count is read from the current shapes, so
a compacted encoder (fewer heads in some blocks) is described too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import SpecError


@dataclass(frozen=True)
class EncoderLayout:
    """Names, relative to one encoder block, of its attention and FFN layers."""

    attention: str  # the self-attention module (it holds ``attention_head_size``)
    query: str
    key: str
    value: str
    output: str  # the attention output projection, reading the heads' concatenated contexts
    ffn_in: str
    ffn_out: str
    heads_attribute: str  # the attention module's (and the config's) head-count attribute
    ffn_attribute: str  # the config's FFN width


_BERT = EncoderLayout(
    "attention.self", "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense", "num_attention_heads",
    "intermediate_size",
)  # fmt: skip
_DISTILBERT = EncoderLayout(
    "attention", "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
    "ffn.lin1", "ffn.lin2", "n_heads", "hidden_dim",
)  # fmt: skip

#: Model type (``config.model_type``) -> layout. RoBERTa's family and ELECTRA share BERT's.
LAYOUTS: dict[str, EncoderLayout] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _BERT,
    "distilbert": _DISTILBERT,
}


@dataclass(frozen=True)
class EncoderBlock:
    """One encoder block: its module name, layout and current head count and width."""

    prefix: str
    layout: EncoderLayout
    heads: int
    head_dim: int
    ffn_size: int

    def name(self, part: str) -> str:
        """The full module name of ``part`` (a field of :class:`EncoderLayout`: "query", "ffn_in", ...)."""
        return f"{self.prefix}.{getattr(self.layout, part)}"

    def head_parts(self) -> list[tuple[str, int, int]]:
        """(weight name, axis, units of that axis per head) for each layer a head spans."""
        rows = [(f"{self.name(p)}.weight", 0, self.head_dim) for p in ("query", "key", "value")]
        return [*rows, (f"{self.name('output')}.weight", 1, self.head_dim)]

    def ffn_parts(self) -> list[tuple[str, int, int]]:
        """(weight name, axis, 1) for the two layers an FFN neuron spans."""
        return [(f"{self.name('ffn_in')}.weight", 0, 1), (f"{self.name('ffn_out')}.weight", 1, 1)]

    def parts(self, kind: str) -> list[tuple[str, int, int]]:
        """The parts of one unit of ``kind`` (a key of :data:`UNIT_KINDS`); the last is its anchor,
        the layer its output goes through."""
        return UNIT_KINDS[kind](self)


#: The kinds of unit an encoder block has: attention heads and FFN neurons.
UNIT_KINDS = {"heads": EncoderBlock.head_parts, "ffn": EncoderBlock.ffn_parts}


def encoder_config(model: nn.Module):
    """The ``transformers`` config inside ``model`` (a prunelab text model or a bare one), or None."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "model_type", None) is not None and hasattr(config, "to_dict"):
            return config
    return None


def encoder_layout(model: nn.Module, what: str = "this") -> EncoderLayout:
    """The layout of ``model``'s encoder; a SpecError naming the supported types when it has none."""
    config = encoder_config(model)
    kind = getattr(config, "model_type", None)
    if kind not in LAYOUTS:
        found = f"a {kind!r} transformer" if kind else f"a {type(model).__name__} (not a transformer encoder)"
        raise SpecError(
            f"{what} needs a transformer encoder of type {', '.join(LAYOUTS)}; the model is {found}"
        )
    return LAYOUTS[kind]


def is_encoder(model: nn.Module) -> bool:
    return getattr(encoder_config(model), "model_type", None) in LAYOUTS


def encoder_blocks(model: nn.Module, what: str = "this") -> list[EncoderBlock]:
    """The encoder blocks of ``model`` in module order."""
    layout = encoder_layout(model, what)
    modules = dict(model.named_modules())
    blocks = []
    for name in modules:
        if not name.endswith("." + layout.query):
            continue
        prefix = name[: -len(layout.query) - 1]
        attention = modules[f"{prefix}.{layout.attention}"]
        head_dim = int(attention.attention_head_size)
        query = modules[name]
        blocks.append(
            EncoderBlock(
                prefix,
                layout,
                query.out_features // head_dim,
                head_dim,
                modules[f"{prefix}.{layout.ffn_in}"].out_features,
            )
        )
    return blocks


def set_head_counts(model: nn.Module) -> None:
    """Make each attention module's head-count attributes match its (possibly shrunk) projections."""
    for block in encoder_blocks(model):
        attention = model.get_submodule(block.name("attention"))
        setattr(attention, block.layout.heads_attribute, block.heads)
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = block.heads * block.head_dim


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Attention as explicit matrix products for the duration (fused kernels hide them from
    ``torch.utils.flop_counter``); the same outputs. Hugging Face models take their eager
    attention; ``nn.MultiheadAttention`` (torchvision's ViT) and ``nn.TransformerEncoderLayer`` leave
    their inference fast path, ``torch._native_multi_head_attention``, whose projections no formula
    counts, for the functional path's linear layers and ``scaled_dot_product_attention``."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    configs = {k: c for k, c in configs.items() if hasattr(c, "_attn_implementation")}
    before = {k: c._attn_implementation for k, c in configs.items()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for k, c in configs.items():
            c._attn_implementation = before[k]


def example_tokens(
    model: nn.Module,
    length: int,
    batch: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``batch`` random sequences of ``length`` token ids for a prunelab text model, none of them
    padding (the model cuts padding off, so an all-zero batch would be one token long)."""
    vocab = int(encoder_config(model).vocab_size)
    pad = int(getattr(model, "pad_id", -1))
    ids = torch.randint(0, vocab - 1, (batch, length), generator=generator)
    if pad >= 0:
        ids += (ids >= pad).long()
    return ids.to(device) if device is not None else ids
