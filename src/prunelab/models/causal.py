"""Causal language models (``hf:PATH`` of a GPT-2, OPT, Llama, Qwen2 or Mistral folder).

:class:`CausalLM` wraps a ``transformers`` causal LM so that prunelab's engine trains and evaluates
it as it does a classifier: it reads windows of token ids ``(N, L)`` and returns the logits of the
next token at every position but the last, ``(N, vocabulary, L - 1)``, so that
``cross_entropy(logits, ids[:, 1:])`` is the mean next-token loss over the window and its
exponential the perplexity (see :mod:`prunelab.data.corpus`).

GPT-2's ``Conv1D`` layers (a Linear whose weight is stored transposed, ``(in, out)``) are turned into
``nn.Linear`` when the model is built, with the same parameter names, so every method, structure
and kernel sees plain ``(out, in)`` Linear weights; :func:`hf_state_dict` transposes them back for a
``save_pretrained`` folder that transformers loads.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from prunelab.errors import SpecError


class CausalLM(nn.Module):
    """A transformers causal LM reading token windows and returning next-token logits ``(N, V, L-1)``.

    ``linearised`` names (relative to the transformers model) the GPT-2 ``Conv1D`` layers made
    ``nn.Linear``; ``pad_id`` is -1: windows are never padded.
    """

    pad_id = -1

    def __init__(self, model: nn.Module, linearised: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.linearised = tuple(linearised)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=ids.long(), use_cache=False).logits
        return logits[:, :-1].transpose(1, 2)


def linearise_conv1d(model: nn.Module) -> tuple[str, ...]:
    """Replace every transformers ``Conv1D`` in ``model`` by the ``nn.Linear`` computing the same
    function (weight transposed, same names); the names replaced, relative to ``model``."""
    from transformers.pytorch_utils import Conv1D

    names = [name for name, module in model.named_modules() if isinstance(module, Conv1D)]
    for name in names:
        conv = model.get_submodule(name)
        nx, nf = conv.weight.shape
        linear = nn.Linear(
            nx, nf, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
    return tuple(names)


def hf_state_dict(lm: CausalLM) -> dict[str, torch.Tensor]:
    """The transformers model's state_dict as its own class stores it: GPT-2's Conv1D weights
    transposed back to ``(in, out)``."""
    linearised = {f"{name}.weight" for name in lm.linearised}
    return {
        key: (value.detach().T if key in linearised else value.detach()).contiguous().clone()
        for key, value in lm.model.state_dict().items()
    }


class LMTokenizer:
    """A transformers tokenizer turning whole texts into one stream of token ids (no truncation, no
    padding: a language model's data is cut into windows after tokenising)."""

    def __init__(self, tokenizer, origin: str) -> None:
        self.tokenizer = tokenizer
        self.origin = origin
        self.vocab_size = len(tokenizer)

    def stream(self, text: str) -> torch.Tensor:
        """The token ids of ``text`` as the tokenizer encodes one document (Llama's adds its BOS)."""
        ids = self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.int64)

    def fingerprint(self) -> str:
        """A hash of the vocabulary, the special tokens and the class (its normalisation rules)."""
        text = json.dumps(
            [type(self.tokenizer).__name__, self.tokenizer.get_vocab(), self.tokenizer.all_special_tokens],
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_positions(limit: int | None, sequence_length: int, what: str) -> None:
    """Refuse windows longer than the model has positions for (``limit``; None: no limit known)."""
    if limit is not None and sequence_length > int(limit):
        raise SpecError(
            f"sequence length {sequence_length} is beyond the {limit} positions of model {what}; "
            f"give --sequence-length {limit} or less"
        )
