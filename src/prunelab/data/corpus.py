"""Running text for language models: ``text:PATH``, and the text column of ``jsonl:``, ``csv:`` and
``hf-disk:`` data, read as windows of a causal LM's tokens.

A :class:`Corpus` is the documents of each split. :func:`corpus_streams` tokenises each split as one
stream (documents joined by a blank line, as the papers join WikiText's lines), with the model's
tokenizer, cached on disk per data and tokenizer fingerprint. A corpus without a test split of its own
gives the last :data:`TEST_SHARE` of its tokens to test and the :data:`VAL_SHARE` before them to
validation; one without a validation split the last :data:`VAL_SHARE` of its training tokens.

:func:`load_lm_dataset` cuts each stream into non-overlapping windows of ``sequence_length`` tokens (the
remainder dropped), the examples of a :class:`~prunelab.data.Dataset` whose targets are the windows
shifted by one token: a causal LM predicts tokens 2..L of each window from those before, and the
perplexity is ``exp`` of the mean loss over those predictions, as SparseGPT and Wanda compute it
on WikiText-2 (non-overlapping windows of the test stream, each window's loss averaged over its
L - 1 predictions, then averaged over windows: with equal windows, the mean over every prediction).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from prunelab.data.base import Dataset, DatasetInfo, Split, register_source
from prunelab.data.text import FINGERPRINT_CHARS, TextSource, _decode, _read_bytes, _safe_key
from prunelab.errors import CheckpointError, DataError, OutputError
from prunelab.io import load_tensors, save_tensors

__all__ = [
    "TEST_SHARE",
    "VAL_SHARE",
    "Corpus",
    "TextCorpus",
    "corpus_streams",
    "how_to_get",
    "load_lm_dataset",
    "windows",
]

#: Shares of a single stream's tokens held out for testing (its end) and validation (before it).
TEST_SHARE, VAL_SHARE = 0.1, 0.05
#: Between documents of one split.
SEPARATOR = "\n\n"
SPLITS = ("train", "val", "test")
#: Bump when tokenising or splitting changes: it names the token cache.
STREAM_FORMAT = "lm-stream-v1"


@dataclass(frozen=True)
class Corpus:
    """The documents of each split; ``test``/``val`` None where the data has no such split."""

    train: list[str]
    test: list[str] | None
    val: list[str] | None
    source: str


def how_to_get(loader) -> str:
    """What a text loader needs, without reading its texts (a source's ``info`` parses its labels)."""
    return loader.how_to_get() if isinstance(loader, TextSource) else loader.info.how_to_get


def windows(stream: torch.Tensor, length: int) -> torch.Tensor:
    """Non-overlapping windows ``(stream_length // length, length)`` of a 1-D stream (rest dropped)."""
    count = len(stream) // length
    return stream[: count * length].reshape(count, length)


def _tokens(tokenizer, docs: list[str]) -> torch.Tensor:
    return tokenizer.stream(SEPARATOR.join(docs)) if docs else torch.zeros(0, dtype=torch.int64)


def _split_end(stream: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    cut = len(stream) - int(len(stream) * share)
    return stream[:cut], stream[cut:]


def _stream_cache(loader, tokenizer) -> Path:
    from prunelab.data.locate import cache_root

    data = loader.fingerprint() or f"name:{getattr(loader, 'name', type(loader).__name__)}"
    key = f"{STREAM_FORMAT}-{_safe_key(str(data))}-{_safe_key(str(tokenizer.fingerprint()))}"
    return cache_root() / "tokens" / f"{key}.safetensors"


def corpus_streams(loader, tokenizer, data_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """The train, val and test token streams of ``loader``'s corpus (1-D int64), from the cache when there."""
    path = _stream_cache(loader, tokenizer)
    if path.is_file():
        try:
            cached = load_tensors(path)
            if all(k in cached and cached[k].dtype == torch.int64 and cached[k].dim() == 1 for k in SPLITS):
                return {k: cached[k] for k in SPLITS}
        except CheckpointError:
            pass  # a damaged cache is tokenised again and replaced
    corpus = loader.load_corpus(data_dir)
    train = _tokens(tokenizer, corpus.train)
    if corpus.test is None:
        train, test = _split_end(train, TEST_SHARE)
        train, val = _split_end(train, VAL_SHARE / (1 - TEST_SHARE))
    else:
        test = _tokens(tokenizer, corpus.test)
        val = _tokens(tokenizer, corpus.val) if corpus.val is not None else None
        if val is None:
            train, val = _split_end(train, VAL_SHARE)
    streams = {"train": train, "val": val, "test": test}
    try:
        save_tensors(
            path, streams, metadata={"source": corpus.source, "tokenizer": str(tokenizer.fingerprint())}
        )
    except OutputError as exc:
        warnings.warn(f"token ids of {corpus.source} not cached: {exc}", stacklevel=2)
    return streams


def load_lm_dataset(
    name: str, tokenizer, sequence_length: int, vocab_size: int, data_dir: Path | None = None
) -> Dataset:
    """Dataset ``name`` (a ``text:``, ``jsonl:``, ``csv:`` or ``hf-disk:`` source) as windows of
    ``sequence_length`` tokens of a causal LM: ``x`` the windows ``(N, L)``, ``y`` the next tokens
    ``(N, L - 1)``. Every split must hold at least one window; token ids must fit ``vocab_size``."""
    from prunelab.data.base import resolve_dataset

    loader = resolve_dataset(name)
    if not hasattr(loader, "load_corpus"):
        raise DataError(f"{name} holds images, not text; a language model needs text data")
    streams = corpus_streams(loader, tokenizer, data_dir)
    top = max((int(s.max()) for s in streams.values() if len(s)), default=0)
    if top >= vocab_size:
        raise DataError(
            f"the tokenizer of {tokenizer.origin} gives token ids up to {top} on {name}, but the model's "
            f"vocabulary has {vocab_size} entries: the tokenizer and the model do not belong together"
        )
    splits = {}
    for part in SPLITS:
        x = windows(streams[part], sequence_length)
        if len(x) == 0 and part != "val":
            raise DataError(
                f"the {part} split of {name} holds {len(streams[part]):,} tokens, fewer than one window of "
                f"{sequence_length} (--sequence-length); give more text or a shorter sequence length"
            )
        splits[part] = Split(x, x[:, 1:].clone())
    info = DatasetInfo(
        name=name,
        input_shape=(sequence_length,),
        num_classes=vocab_size,
        mean=(),
        std=(),
        augment=False,
        default_val_size=len(splits["val"]),
        description=(
            f"language-model text {name}: windows of {sequence_length} tokens, "
            + ", ".join(f"{len(streams[p]):,} {p} tokens" for p in SPLITS)
        ),
        how_to_get=how_to_get(loader),
    )
    return Dataset(
        info, splits["train"], splits["val"], splits["test"], source=str(getattr(loader, "path", name))
    )


# --- text:PATH ------------------------------------------------------------------------------------

SPLIT_FILES = {
    "train": ("train.txt",),
    "test": ("test.txt",),
    "val": ("val.txt", "valid.txt", "validation.txt"),
}


@register_source("text")
class TextCorpus(TextSource):
    """Running UTF-8 text for language models: one file, or a folder of .txt files.

    - A folder holding ``train.txt`` and ``test.txt`` (optionally ``val.txt``, ``valid.txt`` or
      ``validation.txt``) gives those splits; any other folder's ``.txt`` files (sorted by path, in
      subfolders too) are one text, as is a single file: its last 10% of tokens are the test
      split and the 5% before them the validation split.
    - No labels: it is data for causal language models (``hf:`` GPT-2, OPT, Llama, ...), tokenised
      with the model's tokenizer and cached. The fingerprint hashes the files.
    """

    prefix = "text"
    usage = "text:PATH"
    labelled: ClassVar[bool] = False

    def how_to_get(self) -> str:
        return (
            f"{self.path}: a UTF-8 text file, or a folder of .txt files (train.txt and test.txt, optionally "
            "val.txt, for those splits)"
        )

    def _files(self) -> dict[str, list[Path]]:
        """The files of each split, or {"all": files} for one text."""
        if self.path.is_file():
            return {"all": [self.path]}
        if not self.path.is_dir():
            raise DataError(f"no such file or folder: {self.path}; {self.usage} needs {self.how_to_get()}")
        named = {
            key: next((self.path / n for n in names if (self.path / n).is_file()), None)
            for key, names in SPLIT_FILES.items()
        }
        if named["train"] is not None and named["test"] is not None:
            return {key: [file] for key, file in named.items() if file is not None}
        files = sorted(p for p in self.path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{self.path} holds no .txt file; {self.usage} needs {self.how_to_get()}")
        return {"all": files}

    def problem(self) -> str | None:
        try:
            self._files()
        except DataError as exc:
            return str(exc)
        return None

    def _contents(self) -> dict[str, list[tuple[Path, bytes]]]:
        return {key: [(f, _read_bytes(f, "file")) for f in files] for key, files in self._files().items()}

    def _digest(self, contents: dict[str, list[tuple[Path, bytes]]]) -> str:
        h = self.hasher()
        for key, files in contents.items():
            for path, data in files:
                rel = path.name if path == self.path else path.relative_to(self.path).as_posix()
                h.update(f"{key}\0{rel}\0{len(data)}\0".encode())
                h.update(data)
        return h.hexdigest()[:FINGERPRINT_CHARS]

    def digest(self) -> str:
        return self._digest(self._contents())

    def load_corpus(self, data_dir: Path | None = None) -> Corpus:
        contents = self._contents()
        self.remember(self._digest(contents))
        docs: dict[str, list[str]] = {}
        for key, files in contents.items():
            docs[key] = []
            for path, data in files:
                text = _decode(path, data)
                if not text.strip():
                    raise DataError(f"{path} is empty; language modelling needs text in it")
                docs[key].append(text)
        if "all" in docs:
            return Corpus(docs["all"], None, None, str(self.path))
        return Corpus(docs["train"], docs["test"], docs.get("val"), str(self.path))

    def load_texts(self, data_dir: Path | None):
        raise DataError(
            f"{self.name} is running text without labels, for causal language models (hf:PATH of a "
            "gpt2, opt, llama, qwen2 or mistral folder); a classifier needs labelled text (csv:, jsonl:, "
            "hf-disk:, sst2:)"
        )

    @property
    def info(self) -> DatasetInfo:  # type: ignore[override]
        return DatasetInfo(
            name=self.name,
            input_shape=(int(self.max_length),),
            num_classes=1,
            mean=(),
            std=(),
            augment=False,
            default_val_size=0,
            description=f"running text from {self.path} for language models (no labels)",
            how_to_get=self.how_to_get(),
        )
