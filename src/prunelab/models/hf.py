"""Transformers (extra ``prunelab[nlp]``): ``hf:PATH_OR_NAME`` and ``bert-tiny``.

``hf:`` names a sequence classifier (an encoder: BERT, RoBERTa, ...) or a causal language model (a
decoder: GPT-2, OPT, Llama, Qwen2, Mistral; :mod:`prunelab.models.causal`), told apart by the
folder's ``config.json``: the model's task (:attr:`HFSource.task`) is then classification or
language modelling.

A text model takes a batch of token ids, ``(N, max_length)`` right-padded with its tokenizer's pad
id, and returns logits: :class:`TextClassifier` wraps a ``transformers`` model so, cutting each batch
to its longest sequence (what padding to the longest does) and passing the attention mask. Its
tokenizer comes with the source (:meth:`~prunelab.models.source.ModelSource.tokenizer`); the data is tokenised with it once
and cached (:func:`prunelab.data.load_dataset`).

* ``hf:PATH_OR_NAME``: the architecture of a ``save_pretrained`` folder or a hub-cached model
  (``AutoModelForSequenceClassification``, ``num_labels`` from the data), seeded random weights;
  ``--weights hf:DEFAULT`` starts from the folder's own weights (a head of another size replaced).
* ``bert-tiny``: a 2-layer BERT (hidden 128, 2 heads, FFN 512) with a WordPiece vocabulary trained
  with ``tokenizers`` on the dataset's training text, so a real transformer trains offline in minutes.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from prunelab.cache import cache_base
from prunelab.errors import SpecError
from prunelab.io import atomic_path
from prunelab.models.causal import CausalLM, LMTokenizer, check_positions, linearise_conv1d
from prunelab.models.decoder import LAYOUTS as DECODER_LAYOUTS
from prunelab.models.registry import InputShape
from prunelab.models.source import LibrarySource, ModelSource, register_source
from prunelab.models.vision import import_transformers

#: Model types whose encoder layout prunelab knows (attention Q/K/V/output, FFN in/out).
SUPPORTED_TYPES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra")


class TextClassifier(nn.Module):
    """A ``transformers`` sequence classifier taking padded token ids and returning logits."""

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id
        length = max(1, int(mask.sum(1).max())) if ids.numel() else 1
        ids, mask = ids[:, :length].long(), mask[:, :length].long()
        return self.model(input_ids=ids, attention_mask=mask).logits


class HFTokenizer:
    """A ``transformers`` tokenizer in prunelab's :class:`~prunelab.data.text.Tokenizer` form."""

    def __init__(self, tokenizer, origin: str) -> None:
        self.tokenizer = tokenizer
        self.origin = origin
        if tokenizer.pad_token_id is None:
            raise SpecError(f"the tokenizer of {origin} has no padding token; give it one before saving it")
        self.pad_id = int(tokenizer.pad_token_id)
        self.vocab_size = len(tokenizer)

    def encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        out = self.tokenizer(
            list(texts), max_length=max_length, truncation=True, padding="max_length", return_tensors="pt"
        )
        return out["input_ids"].to(torch.int64)

    def fingerprint(self) -> str:
        """A hash of the vocabulary, the special tokens and the class (its normalisation rules)."""
        text = json.dumps(
            [type(self.tokenizer).__name__, self.tokenizer.get_vocab(), self.tokenizer.all_special_tokens],
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class TextModelSource(ModelSource):
    """A model source whose models read token ids; it provides the tokenizer for the data."""

    is_text: ClassVar[bool] = True

    def check_shape(self, input_shape: InputShape) -> None:
        if len(input_shape) != 1:
            raise SpecError(
                f"model {self.text!r} reads token ids; the data has inputs of shape {tuple(input_shape)} "
                "(use a text dataset: synthetic-sentiment, sst2:DIR, csv:PATH, jsonl:PATH, hf-disk:DIR)"
            )


@register_source("hf")
class HFSource(LibrarySource, TextModelSource):
    """A Hugging Face sequence classifier or causal LM: ``hf:PATH`` (a save_pretrained folder) or
    ``hf:NAME`` (hub cache)."""

    prefix = "hf"
    usage = "hf:PATH_OR_NAME"
    description = (
        "a Hugging Face sequence classifier or causal language model (save_pretrained folder or hub "
        "cache; pip install 'prunelab[nlp]')"
    )

    @functools.cached_property
    def _base_config(self):
        return self._config()

    @property
    def is_decoder(self) -> bool:
        """A causal language model (a decoder layout), rather than a sequence classifier."""
        return self._base_config.model_type in DECODER_LAYOUTS

    @property
    def task(self) -> str:  # type: ignore[override]
        return "language-modelling" if self.is_decoder else "classification"

    def vocab_size(self) -> int:
        return int(self._base_config.vocab_size)

    def max_positions(self) -> int | None:
        """How many tokens the model reads at most (None where its config does not say)."""
        value = getattr(self._base_config, "max_position_embeddings", None)
        return None if value is None else int(value)

    def _config(self, num_classes: int | None = None):
        t = import_transformers()
        try:
            config = t.AutoConfig.from_pretrained(
                self.name, **({"num_labels": num_classes} if num_classes else {})
            )
        except (OSError, ValueError) as exc:
            raise SpecError(
                f"model {self.text!r}: no model configuration found ({str(exc).splitlines()[0][:200]}); give a "
                "folder written by save_pretrained (config.json, tokenizer files, weights), or run once online "
                "so the hub cache ($HF_HOME/hub) holds it"
            ) from None
        if config.model_type not in SUPPORTED_TYPES and config.model_type not in DECODER_LAYOUTS:
            raise SpecError(
                f"model {self.text!r} is a {config.model_type!r} model; prunelab supports the encoder layouts of "
                f"{', '.join(SUPPORTED_TYPES)} (sequence classifiers) and the decoder layouts of "
                f"{', '.join(DECODER_LAYOUTS)} (causal language models)"
            )
        return config

    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        max_length = input_shape[0]
        t = import_transformers()
        if self.is_decoder:
            config = self._base_config
            check_positions(self.max_positions(), max_length, repr(self.text))
            model = t.AutoModelForCausalLM.from_config(config)
            return CausalLM(model, linearise_conv1d(model))
        config = self._config(num_classes)
        if getattr(config, "max_position_embeddings", max_length) < max_length:
            raise SpecError(
                f"model {self.text!r} takes at most {config.max_position_embeddings} tokens, the data {max_length}"
            )
        model = t.AutoModelForSequenceClassification.from_config(config)
        return TextClassifier(model, self.tokenizer(data).pad_id)

    def tokenizer(self, data: str | None) -> HFTokenizer | LMTokenizer:
        t = import_transformers()
        try:
            tokenizer = t.AutoTokenizer.from_pretrained(self.name)
            if self.is_decoder:
                return LMTokenizer(tokenizer, self.text)
            return HFTokenizer(tokenizer, self.text)
        except (OSError, ValueError) as exc:
            raise SpecError(
                f"model {self.text!r}: no tokenizer found ({str(exc).splitlines()[0][:200]})"
            ) from None

    def pretrained(self, name: str, num_classes: int, input_shape: InputShape):
        if name != "DEFAULT":
            raise SpecError(f"hf models have one set of weights, hf:DEFAULT (the folder's own), not {name!r}")
        t = import_transformers()
        auto = t.AutoModelForCausalLM if self.is_decoder else t.AutoModelForSequenceClassification
        try:
            model = auto.from_pretrained(self.name)
        except (OSError, ValueError) as exc:
            raise SpecError(
                f"model {self.text!r}: its weights cannot be loaded ({str(exc).splitlines()[0][:200]})"
            ) from None
        if self.is_decoder:
            linearise_conv1d(model)
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        return state, None, f"of {self.text}"


@register_source("bert-tiny")
class BertTinySource(TextModelSource):
    """A 2-layer BERT (hidden 128, 2 heads) with a WordPiece vocabulary trained on the dataset's text."""

    usage = "bert-tiny"
    description = (
        "a 2-layer BERT whose WordPiece vocabulary is trained on the data (pip install 'prunelab[nlp]')"
    )
    LAYERS, HIDDEN, HEADS, FFN = 2, 128, 2, 512
    VOCAB = 4000

    @classmethod
    def claims(cls, text: str) -> bool:
        return text == "bert-tiny"

    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        max_length = input_shape[0]
        t = import_transformers()
        tok = self.tokenizer(data)
        config = t.BertConfig(
            vocab_size=tok.vocab_size, hidden_size=self.HIDDEN, num_hidden_layers=self.LAYERS,
            num_attention_heads=self.HEADS, intermediate_size=self.FFN, max_position_embeddings=max(128, max_length),
            num_labels=num_classes, pad_token_id=tok.pad_id,
        )  # fmt: skip
        return TextClassifier(t.BertForSequenceClassification(config), tok.pad_id)

    def tokenizer(self, data: str | None) -> HFTokenizer:
        from prunelab.data import resolve_dataset, texts_of

        if data is None:
            raise SpecError("bert-tiny trains its vocabulary on a dataset's text; name the dataset")
        t = import_transformers()
        loader = resolve_dataset(data)
        key = hashlib.sha256(f"{data}|{loader.fingerprint()}|{self.VOCAB}".encode()).hexdigest()[:16]
        path = cache_base() / "tokenizers" / f"bert-tiny-{key}.json"
        if not path.is_file():
            _train_wordpiece(texts_of(data).train_text, self.VOCAB, path)
        fast = t.PreTrainedTokenizerFast(
            tokenizer_file=str(path), pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]",
        )  # fmt: skip
        return HFTokenizer(fast, f"bert-tiny on {data}")


def _train_wordpiece(texts: list[str], vocab_size: int, path: Path) -> None:
    """A lower-casing WordPiece tokenizer with BERT's special tokens and [CLS] ... [SEP] framing."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tok.save(str(tmp))
