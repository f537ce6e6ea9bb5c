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
  (``AutoModelForSequenceClassification``, ``num_labels`` from the data; ``AutoModelForCausalLM``
  for a decoder), seeded random weights; ``--weights hf:DEFAULT`` starts from the folder's own
  weights (a classifier's head of another size replaced). The folder is checked before anything is
  built, encoder or decoder: a config whose sizes do not fit (a hidden size that is no multiple of
  the head count, a model larger than memory, a classifier's vocabulary smaller than its
  tokenizer's; a decoder's is checked against the token ids of its data), weights that cannot be
  read, a folder without a tokenizer are each one message naming the file or field.
* ``bert-tiny``: a 2-layer BERT (hidden 128, 2 heads, FFN 512) with a WordPiece vocabulary trained
  with ``tokenizers`` on the dataset's training text, so a real transformer trains offline in minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from prunelab.cache import cache_base
from prunelab.errors import CheckpointError, SpecError
from prunelab.io import atomic_path, check_tensors_file
from prunelab.models.causal import CausalLM, LMTokenizer, check_positions, linearise_conv1d
from prunelab.models.decoder import LAYOUTS as DECODER_LAYOUTS
from prunelab.models.registry import InputShape
from prunelab.models.source import LibrarySource, ModelSource, announce, register_source
from prunelab.models.vision import import_transformers

#: The files a tokenizer is saved as (``tokenizer.save_pretrained``): one of them must be in an
#: ``hf:`` folder, else transformers builds a tokenizer of special tokens only and every word is unknown.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


#: Decoder model types whose FFN is gated (gate, up and down projections: three matrices, not two).
GATED_FFN = ("llama", "qwen2", "mistral")

#: The config fields that give the FFN's width, by model type (GPT-2's ``n_inner`` may be None: 4 x hidden).
FFN_WIDTH = ("intermediate_size", "ffn_dim", "n_inner")


def _parameters(config) -> int:
    """About how many parameters a model of ``config`` holds, encoder or decoder: its embeddings
    (tokens, positions, token types), per layer the attention's four projections and the FFN's two
    (three where gated), and a language model's head where it is not tied to the token embeddings."""

    def size(name: str, default: int = 0) -> int:
        value = getattr(config, name, default)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    hidden = size("hidden_size")
    ffn = next((size(name) for name in FFN_WIDTH if size(name)), 4 * hidden)
    matrices = 3 if config.model_type in GATED_FFN else 2
    rows = size("vocab_size") + size("max_position_embeddings") + size("type_vocab_size")
    if config.model_type in DECODER_LAYOUTS and not getattr(config, "tie_word_embeddings", True):
        rows += size("vocab_size")
    return rows * hidden + size("num_hidden_layers") * (4 * hidden * hidden + matrices * hidden * ffn)


def _memory() -> int:
    """This machine's memory in bytes (0 when it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _reason(exc: BaseException) -> str:
    """The first line of an exception from a library, with its type."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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

    @property
    def _base_config(self):
        """The folder's configuration (checked), read again when its ``config.json`` changes: sources
        are cached per model string for the process, and a folder may be edited between runs."""
        config_file = self.folder / "config.json" if self.folder is not None else None
        stat = config_file.stat() if config_file is not None and config_file.is_file() else None
        stamp = None if stat is None else (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = getattr(self, "_config_cache", None)
        if cached is None or cached[0] != stamp:
            cached = self._config_cache = (stamp, self._config())
        return cached[1]

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

    @property
    def folder(self) -> Path | None:
        """The ``save_pretrained`` folder, or None for a hub name."""
        path = Path(self.name).expanduser()
        return path if path.is_dir() else None

    def _file(self, name: str) -> str:
        """How messages name one of the model's files."""
        return str(self.folder / name) if self.folder is not None else f"{name} of {self.name}"

    def _config(self, num_classes: int | None = None):
        t = import_transformers()
        try:
            config = t.AutoConfig.from_pretrained(
                self.name, **({"num_labels": num_classes} if num_classes else {})
            )
        except Exception as exc:  # OSError, ValueError, JSON errors, ... for a missing or foreign file
            if self.folder is not None and (self.folder / "config.json").is_file():
                while exc.__cause__ is not None:  # the library's validators wrap the reason (Llama's sizes)
                    exc = exc.__cause__
                raise SpecError(
                    f"{self._file('config.json')} is refused by transformers: {_reason(exc)}"
                ) from None
            raise SpecError(
                f"model {self.text!r}: no model configuration found ({_reason(exc)}); give a "
                "folder written by save_pretrained (config.json, tokenizer files, weights), or run once online "
                "so the hub cache ($HF_HOME/hub) holds it"
            ) from None
        if config.model_type not in SUPPORTED_TYPES and config.model_type not in DECODER_LAYOUTS:
            raise SpecError(
                f"model {self.text!r} is a {config.model_type!r} model; prunelab supports the encoder layouts of "
                f"{', '.join(SUPPORTED_TYPES)} (sequence classifiers) and the decoder layouts of "
                f"{', '.join(DECODER_LAYOUTS)} (causal language models)"
            )
        self._check_sizes(config)
        return config

    def _check_sizes(self, config) -> None:
        """The config's sizes that the architecture needs, encoder or decoder: positive whole numbers,
        the hidden size a multiple of the head count (each head gets hidden_size / num_attention_heads
        dimensions) unless the config names its head width, and a model that fits this machine's memory."""
        where = self._file("config.json")
        key = getattr(config, "attribute_map", {}).get  # the field as config.json spells it (GPT-2: n_embd)
        sizes = {}
        for field in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
            value = getattr(config, field, None)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{where}: {key(field, field)} is {value!r}; it must be a whole number >= 1")
            sizes[field] = value
        # a config naming its head width (Llama's head_dim) sizes the projections heads x head_dim itself
        hidden, heads = sizes["hidden_size"], sizes["num_attention_heads"]
        if getattr(config, "head_dim", None) is None and hidden % heads:
            h, n = key("hidden_size", "hidden_size"), key("num_attention_heads", "num_attention_heads")
            raise SpecError(
                f"{where}: {h} {hidden} is not a multiple of {n} {heads} (each head gets {h} / {n} dimensions)"
            )
        params, memory = _parameters(config), _memory()
        if memory and 4 * params > memory:
            fields = ("vocab_size", "hidden_size", *FFN_WIDTH, "num_hidden_layers", "max_position_embeddings")
            shown = ", ".join(f"{k} {v!r}" for k in fields if (v := getattr(config, k, None)) is not None)
            raise SpecError(
                f"{where}: its sizes ({shown}) make a model of about {params:,} parameters, "
                f"{4 * params / 2**30:,.0f} GiB as float32: more than this machine's {memory / 2**30:.0f} GiB"
            )

    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        max_length = input_shape[0]
        t = import_transformers()
        if self.is_decoder:
            check_positions(self.max_positions(), max_length, repr(self.text))
            model = self._from_config(t.AutoModelForCausalLM, self._base_config)
            return CausalLM(model, linearise_conv1d(model))
        config = self._config(num_classes)
        if getattr(config, "max_position_embeddings", max_length) < max_length:
            raise SpecError(
                f"model {self.text!r} takes at most {config.max_position_embeddings} tokens, the data {max_length}"
            )
        tok = self.tokenizer(data)
        if tok.vocab_size > config.vocab_size:
            raise SpecError(
                f"{self._file('config.json')}: vocab_size {config.vocab_size} is smaller than its tokenizer's "
                f"{tok.vocab_size} tokens ({tok.origin}); the config and tokenizer must come from one model"
            )
        model = self._from_config(t.AutoModelForSequenceClassification, config)
        return TextClassifier(model, tok.pad_id)

    def _from_config(self, auto, config) -> nn.Module:
        """``auto.from_config(config)``, the library's own checks of the configuration one message."""
        try:
            return auto.from_config(config)
        except Exception as exc:
            raise SpecError(f"{self._file('config.json')} does not build a model: {_reason(exc)}") from None

    def tokenizer(self, data: str | None) -> HFTokenizer | LMTokenizer:
        t = import_transformers()
        folder = self.folder
        if folder is not None and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise SpecError(
                f"model {self.text!r}: {folder} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                f"model's tokenizer beside its config with tokenizer.save_pretrained({str(folder)!r})"
            )
        kind = LMTokenizer if self.is_decoder else HFTokenizer  # a stream of ids, or padded sequences
        try:
            tok = kind(t.AutoTokenizer.from_pretrained(self.name), self.text)
        except SpecError:
            raise
        except Exception as exc:  # OSError, ValueError, the tokenizers library's own errors
            raise SpecError(f"model {self.text!r}: no tokenizer found ({_reason(exc)})") from None
        found = next(
            (name for name in TOKENIZER_FILES if folder is not None and (folder / name).is_file()), None
        )
        where = f"{folder / found}" if found else f"the hub cache of {self.name}"
        announce(
            f"{self.text}: tokenizer {type(tok.tokenizer).__name__} from {where}, {tok.vocab_size:,} tokens"
        )
        return tok

    def pretrained(self, name: str, num_classes: int, input_shape: InputShape):
        if name != "DEFAULT":
            raise SpecError(f"hf models have one set of weights, hf:DEFAULT (the folder's own), not {name!r}")
        t = import_transformers()
        if self.folder is not None:
            for file in sorted(self.folder.glob("*.safetensors")):
                try:
                    check_tensors_file(file)
                except CheckpointError as exc:
                    raise SpecError(f"model {self.text!r}: its weights cannot be loaded: {exc}") from None
        auto = t.AutoModelForCausalLM if self.is_decoder else t.AutoModelForSequenceClassification
        try:
            model = auto.from_pretrained(self.name)
        except Exception as exc:  # OSError, ValueError, SafetensorError, torch's unpickling errors, ...
            raise SpecError(
                f"model {self.text!r}: its weights cannot be loaded from {self.folder or self.name} ({_reason(exc)})"
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
