"""The layout of a decoder language model: where its blocks are, and what runs after the last one.

The one-shot methods (SparseGPT, Wanda, OWL) calibrate a decoder block by block
(:mod:`prunelab.pruning.blockwise`): they need the list of blocks, and for a prunable head its
input, the output of the final norm (and OPT's projection). Module names are relative to the
``transformers`` model (``GPT2LMHeadModel``, ``OPTForCausalLM``, ``LlamaForCausalLM``, ...); Llama,
Qwen2 and Mistral share one layout. A model type not listed here is refused by name, with the
supported ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prunelab.errors import SpecError


@dataclass(frozen=True)
class DecoderLayout:
    """Names, relative to the transformers causal LM, of its blocks and of what follows them."""

    blocks: str  # the ModuleList of decoder blocks
    final: tuple[str, ...]  # modules between the last block and the head, in order (absent ones skipped)
    head: str = "lm_head"


_LLAMA = DecoderLayout("model.layers", ("model.norm",))

#: Model type (``config.model_type``) -> layout.
LAYOUTS: dict[str, DecoderLayout] = {
    "gpt2": DecoderLayout("transformer.h", ("transformer.ln_f",)),
    "opt": DecoderLayout(
        "model.decoder.layers", ("model.decoder.final_layer_norm", "model.decoder.project_out")
    ),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
}


@dataclass(frozen=True)
class Decoder:
    """A decoder LM inside a prunelab model: its layout and the transformers model's module name."""

    layout: DecoderLayout
    prefix: str  # the transformers model's name in the prunelab model ("model"), "" at the top
    model_type: str

    def name(self, relative: str) -> str:
        return f"{self.prefix}.{relative}" if self.prefix else relative

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(module name, block) of every decoder block, in order."""
        base = self.name(self.layout.blocks)
        return [(f"{base}.{i}", block) for i, block in enumerate(model.get_submodule(base))]

    def final(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(module name, module) of what runs between the last block and the head."""
        out = []
        for relative in self.layout.final:
            try:
                module = model.get_submodule(self.name(relative))
            except AttributeError:
                continue
            if module is not None:
                out.append((self.name(relative), module))
        return out

    def head(self) -> str:
        return self.name(self.layout.head)


def supported() -> str:
    return ", ".join(LAYOUTS)


def find_decoder(model: nn.Module) -> Decoder | None:
    """The decoder LM inside ``model`` (a transformers causal LM, or prunelab's wrapper of one)."""
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        kind = getattr(config, "model_type", None)
        if kind in LAYOUTS:
            try:
                module.get_submodule(LAYOUTS[kind].blocks)
            except AttributeError:
                continue
            return Decoder(LAYOUTS[kind], name, kind)
    return None


def decoder_of(model: nn.Module, what: str = "this") -> Decoder:
    """:func:`find_decoder`, or a SpecError naming the model and the supported types."""
    found = find_decoder(model)
    if found is None:
        config = next(
            (m.config for m in model.modules() if hasattr(getattr(m, "config", None), "model_type")), None
        )
        kind = f"a {config.model_type!r} transformer" if config is not None else f"a {type(model).__name__}"
        raise SpecError(
            f"{what} works on decoder language models block by block ({supported()}); the model is {kind}"
        )
    return found
