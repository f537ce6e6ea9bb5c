"""Text-classification datasets: texts and labels, tokenised by the model's tokenizer when loaded.

A text dataset is a :class:`TextLoader` (``is_text``): :meth:`TextLoader.load_texts` gives its
:class:`Texts`, and ``load_dataset(name, tokenizer=...)`` turns them into int64 token ids
(N, max_length) with the model's :class:`Tokenizer` (:func:`tokenise`), cached on disk per data
and tokenizer fingerprint. :func:`texts_of` gives the texts themselves (to train a tokenizer).

Data sources (``--data PREFIX:PATH``): ``sst2:DIR`` (GLUE SST-2), ``csv:PATH``, ``jsonl:PATH``
and ``hf-disk:DIR`` (a saved Hugging Face ``DatasetDict``); the built-in ``synthetic-sentiment``
is generated in memory.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import random
import re
import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from prunelab.data.base import (
    DATA_SOURCES,
    DATASETS,
    DatasetInfo,
    DatasetLoader,
    RawData,
    _as_path,
    register_loader,
    register_source,
    resolve_dataset,
    split_options,
)
from prunelab.data.labels import CLASSES_OPTION, LabelPart, check_labels, classes_option, label_number
from prunelab.errors import CheckpointError, DataError, OutputError, SpecError
from prunelab.io import load_tensors, save_tensors, user_path

__all__ = [
    "CsvSource",
    "HfDiskSource",
    "JsonlSource",
    "Sst2Source",
    "SyntheticSentiment",
    "TextLoader",
    "TextSource",
    "Texts",
    "Tokenizer",
    "texts_of",
    "token_cache_file",
    "tokenise",
]

NLP_EXTRA = "pip install 'prunelab[nlp]'"
#: Characters of a content fingerprint (a sha256 hex prefix), as for the other data sources.
FINGERPRINT_CHARS = 16
#: Part of every file source's fingerprint: bump it when parsing changes.
TEXT_FORMAT = "text-v1"
#: Columns tried, in order, for the text and the label when the dataset text does not name them.
TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels", "target")
#: The split column of a single-file csv/jsonl source, and the values it may hold.
SPLIT_COLUMN = "split"
SPLIT_VALUES = {"train": "train", "test": "test", "val": "val", "validation": "val"}


@runtime_checkable
class Tokenizer(Protocol):
    """What a model source provides to tokenise text data for it."""

    pad_id: int

    def encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        """Token ids (N, max_length), int64: truncated to ``max_length``, right-padded with ``pad_id``."""
        ...

    def fingerprint(self) -> str:
        """Identifies the vocabulary and rules: the same for any tokenizer that encodes alike."""
        ...


@dataclass(frozen=True, eq=False)
class Texts:
    """A text dataset as read: texts with int64 labels (N,) per split; ``val_*`` None when the data
    has no validation split of its own (then it is held out of train). Shared: do not modify."""

    train_text: list[str]
    train_labels: torch.Tensor
    test_text: list[str]
    test_labels: torch.Tensor
    val_text: list[str] | None
    val_labels: torch.Tensor | None
    label_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if (self.val_text is None) != (self.val_labels is None):
            raise ValueError("Texts: val_text and val_labels must both be given or both be None")
        for part, text, labels in self.parts():
            if labels.dtype != torch.int64 or labels.dim() != 1 or len(labels) != len(text):
                raise ValueError(
                    f"Texts: {part} has {len(text)} texts but labels {tuple(labels.shape)} {labels.dtype}; "
                    f"expected int64 ({len(text)},)"
                )

    def parts(self) -> list[tuple[str, list[str], torch.Tensor]]:
        """(split, texts, labels) of train, test and val (when present)."""
        parts = [("train", self.train_text, self.train_labels), ("test", self.test_text, self.test_labels)]
        if self.val_text is not None and self.val_labels is not None:
            parts.append(("val", self.val_text, self.val_labels))
        return parts


class TextLoader(DatasetLoader):
    """Base of every text dataset: subclasses implement :meth:`load_texts` (cached per instance).

    Its ``info`` has ``input_shape=(max_length,)``, ``mean=std=()`` and ``augment=False``;
    :meth:`load_raw` refuses (the ids depend on the model's tokenizer: ``load_dataset(name,
    tokenizer=...)``). :meth:`fingerprint` must identify the texts (it names the token cache).
    """

    is_text: ClassVar[bool] = True
    #: Tokens per example as stored (longer texts are truncated by the tokenizer).
    max_length: int = 128

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("load_texts")
        if own is not None and not getattr(own, "__isabstractmethod__", False):
            cls.load_texts = _cached_texts(own)  # type: ignore[method-assign]

    @abstractmethod
    def load_texts(self, data_dir: Path | None) -> Texts:
        """The texts and labels; raises :class:`DataError` when they are missing or malformed."""

    def load_corpus(self, data_dir: Path | None = None):
        """The texts as running text for a language model (:class:`prunelab.data.corpus.Corpus`),
        labels not read; sources whose labels may be absent override it."""
        from prunelab.data.corpus import Corpus

        texts = self.load_texts(data_dir)
        return Corpus(texts.train_text, texts.test_text, texts.val_text, texts.source)

    def load_raw(self, data_dir: Path | None) -> RawData:
        name = _loader_name(self)
        raise DataError(
            f"{name} is text data, which needs a model's tokenizer: load it with "
            f"load_dataset({name!r}, tokenizer=...)"
        )


def _cached_texts(load: Callable[[Any, Path | None], Texts]) -> Callable[[Any, Path | None], Texts]:
    @functools.wraps(load)
    def load_texts(self: TextLoader, data_dir: Path | None = None) -> Texts:
        cache = self.__dict__.setdefault("_texts_cache", {})
        key = None if data_dir is None else str(data_dir)
        if key not in cache:
            texts = load(self, data_dir)
            if not isinstance(texts, Texts):
                raise TypeError(
                    f"{type(self).__name__}.load_texts returned {type(texts).__name__}, not Texts"
                )
            cache[key] = texts
        return cache[key]

    return load_texts


def _loader_name(loader: DatasetLoader) -> str:
    """The dataset's name without computing ``info`` (which reads a source's files)."""
    name = getattr(loader, "name", None)
    return name if isinstance(name, str) else loader.info.name


def texts_of(name: str, data_dir: str | Path | None = None) -> Texts:
    """The texts and labels of text dataset ``name`` (e.g. to train a tokenizer on its training texts)."""
    loader = resolve_dataset(name)
    if not loader.is_text:
        text_names = [n for n, d in DATASETS.items() if d.is_text]
        forms = [cls.usage for _, cls in DATA_SOURCES.items() if getattr(cls, "is_text", False)]
        raise SpecError(
            f"{name} is not a text dataset; text datasets are {', '.join(text_names + forms) or 'none'}"
        )
    return loader.load_texts(_as_path(data_dir))


# --- tokenising, with an on-disk cache ------------------------------------------------------------

_SAFE_KEY = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _safe_key(text: str) -> str:
    """``text`` when it is usable in a file name as it is, else a hash of it."""
    return (
        text if _SAFE_KEY.fullmatch(text) else hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]
    )


def token_cache_file(loader: TextLoader, tokenizer: Tokenizer) -> Path:
    """``<cache>/datasets/tokens/{data fingerprint}-{tokenizer fingerprint}-{max_length}.safetensors``.

    A fingerprint that is not a plain name (letters, digits, ``.``, ``_``, ``-``; 64 at most) is hashed.
    """
    from prunelab.data.locate import cache_root

    data_fp = loader.fingerprint()
    data_key = _safe_key(data_fp if isinstance(data_fp, str) and data_fp else f"name:{_loader_name(loader)}")
    tok_key = _safe_key(str(tokenizer.fingerprint()))
    return cache_root() / "tokens" / f"{data_key}-{tok_key}-{int(loader.max_length)}.safetensors"


def tokenise(loader: TextLoader, tokenizer: Tokenizer, data_dir: Path | None = None) -> RawData:
    """The texts of ``loader`` as token ids (RawData with int64 ``x``), from the cache when there.

    The ids of train, test and (when the data has one) val are cached together; a cache file that
    is damaged or does not fit the texts is tokenised again and replaced. With a validation split,
    its examples follow the training ones in ``x_train`` and ``val_index`` points at them.
    """
    name = _loader_name(loader)
    if not isinstance(tokenizer, Tokenizer):
        raise SpecError(
            f"tokenizer for {name} must have pad_id, encode(texts, max_length) and fingerprint(), "
            f"not {type(tokenizer).__name__}"
        )
    texts = loader.load_texts(data_dir)
    max_length = int(loader.max_length)
    parts = {part: text for part, text, _ in texts.parts()}
    path = token_cache_file(loader, tokenizer)
    ids = _load_token_cache(path, {part: len(text) for part, text in parts.items()}, max_length)
    if ids is None:
        ids = {part: _encode(tokenizer, text, max_length, name, part) for part, text in parts.items()}
        try:
            save_tensors(path, ids, metadata={"dataset": name, "tokenizer": str(tokenizer.fingerprint())})
        except OutputError as exc:
            warnings.warn(f"token ids of {name} not cached: {exc}", stacklevel=2)
    x_train, y_train, val_index = ids["train"], texts.train_labels, None
    if texts.val_labels is not None:
        n = len(y_train)
        val_index = torch.arange(n, n + len(texts.val_labels))
        x_train = torch.cat([x_train, ids["val"]])
        y_train = torch.cat([y_train, texts.val_labels])
    return RawData(x_train, y_train, ids["test"], texts.test_labels, texts.source, val_index)


def _load_token_cache(path: Path, counts: dict[str, int], max_length: int) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        tensors = load_tensors(path)
    except CheckpointError:
        return None  # a damaged cache is tokenised again and replaced
    for part, n in counts.items():
        x = tensors.get(part)
        if x is None or x.dtype != torch.int64 or tuple(x.shape) != (n, max_length):
            return None
    return {part: tensors[part] for part in counts}


def _encode(tokenizer: Tokenizer, text: list[str], max_length: int, name: str, part: str) -> torch.Tensor:
    n = len(text)
    if n == 0:
        return torch.zeros((0, max_length), dtype=torch.int64)
    out = tokenizer.encode(list(text), max_length)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    integral = not (out.dtype.is_floating_point or out.dtype.is_complex or out.dtype == torch.bool)
    if not integral or tuple(out.shape) != (n, max_length):
        raise DataError(
            f"the tokenizer ({type(tokenizer).__name__}) encoded the {n} {part} texts of {name} as "
            f"{tuple(out.shape)} {out.dtype}; expected int64 ids ({n}, {max_length})"
        )
    out = out.to(device="cpu", dtype=torch.int64).contiguous()
    if int(out.min()) < 0:
        raise DataError(
            f"the tokenizer ({type(tokenizer).__name__}) gave negative token ids ({int(out.min())}) "
            f"for the {part} texts of {name}"
        )
    return out


# --- labels and columns, shared by the file sources -----------------------------------------------


@dataclass
class _Part:
    """One split as read: its texts and raw label values, with where each came from (for errors)."""

    where: str  # the file (and split) it was read from
    unit: str  # "line" or "example": what ``rows`` count
    texts: list[str]
    labels: list[Any]
    rows: list[int]


_INTEGER = re.compile(r"[+-]?\d+")
#: A number that is not written as an integer (1.5, 1e9, nan, inf): a label read as a number, so
#: that NaN or 2.5 is refused rather than taken for a class name.
_NUMBER = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf(inity)?)", re.IGNORECASE)


def _label_value(value: Any, part: _Part, i: int) -> int | str:
    """A raw label as an int (numbers, checked by :func:`~prunelab.data.labels.label_number`) or a
    class name; DataError when missing, or a number that is no label."""
    row = f"{part.where}, {part.unit} {part.rows[i]}"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{row} has no label; every example needs one")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return label_number(value, row)
    if isinstance(value, str):
        value = value.strip()
        if _INTEGER.fullmatch(value):
            return label_number(int(value), row)
        return label_number(float(value), row) if _NUMBER.fullmatch(value) else value
    raise DataError(f"{row} has the label {value!r}; expected an integer or a class name")


def _resolve_labels(
    parts: dict[str, _Part], names: Sequence[str] | None = None, classes: int | None = None, data: str = ""
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """int64 labels per split, and the class names.

    With ``names`` (fixed classes) every label must be an integer 0..len(names)-1. Otherwise, when all
    labels are integers they are used as they are (checked by :func:`~prunelab.data.labels.check_labels`:
    they must cover 0..K-1 unless ``classes`` says K), else each is a class name and the sorted
    unique names give the labels 0..K-1.
    """
    values = {
        key: [_label_value(v, part, i) for i, v in enumerate(part.labels)] for key, part in parts.items()
    }
    every = [v for vs in values.values() for v in vs]
    if names is None and not all(isinstance(v, int) for v in every):
        if classes is not None:
            raise DataError(
                f"{CLASSES_OPTION}={classes} counts integer labels, but those of "
                f"{'; '.join(dict.fromkeys(p.where for p in parts.values()))} are class names; drop the option"
            )
        label_names = tuple(sorted({str(v) for v in every}))
        index = {name: i for i, name in enumerate(label_names)}
        labels = {
            key: torch.tensor([index[str(v)] for v in vs], dtype=torch.int64) for key, vs in values.items()
        }
        return labels, label_names
    keys = list(values)
    checked, k = check_labels(
        [
            LabelPart(parts[key].where, values[key], lambda i, p=parts[key]: f"{p.unit} {p.rows[i]}")
            for key in keys
        ],
        len(names) if names is not None else classes,
        data=data,
        names=names or (),
    )
    labels = {key: torch.from_numpy(a) for key, a in zip(keys, checked, strict=True)}
    return labels, tuple(names) if names is not None else tuple(str(i) for i in range(k))


def _pick_column(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str], role: str, where: str, usage: str
) -> str:
    """The column holding the ``role`` (text or label): ``wanted``, or the first candidate present."""
    found = ", ".join(map(repr, columns)) or "none"
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise DataError(f"{where} has no {role} column {wanted!r}; its columns are {found}")
    for name in candidates:
        if name in columns:
            return name
    lower = {c.lower(): c for c in reversed(list(columns))}
    for name in candidates:
        if name in lower:
            return lower[name]
    raise DataError(
        f"{where} has no {role} column (looked for {', '.join(candidates)}); its columns are {found}; "
        f"name the columns as in {usage}#text=COLUMN,label=COLUMN"
    )


def _texts_from_parts(
    parts: dict[str, _Part],
    source: str,
    names: Sequence[str] | None = None,
    classes: int | None = None,
    data: str = "",
) -> Texts:
    labels, label_names = _resolve_labels(parts, names, classes, data)
    val = parts.get("val")
    return Texts(
        train_text=parts["train"].texts,
        train_labels=labels["train"],
        test_text=parts["test"].texts,
        test_labels=labels["test"],
        val_text=None if val is None else val.texts,
        val_labels=None if val is None else labels["val"],
        label_names=label_names,
        source=source,
    )


def _check_parts(parts: dict[str, _Part]) -> None:
    for key, part in parts.items():
        if not part.texts:
            what = {"train": "training", "test": "test", "val": "validation"}[key]
            raise DataError(f"{part.where} holds no {what} examples")


def _text_value(value: Any, part_where: str, unit: str, row: int) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise DataError(f"{part_where}, {unit} {row} has no text")
    raise DataError(f"{part_where}, {unit} {row}: the text is {type(value).__name__} {value!r}, not a string")


# --- file sources ---------------------------------------------------------------------------------


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None


def _read_delimited(
    path: Path, data: bytes, delimiter: str, quoting: int
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(columns, [(line, row)]) of a CSV or TSV file with a header row; blank lines are skipped."""
    reader = csv.reader(io.StringIO(_decode(path, data), newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(
                f"{path} is empty; expected a header row naming its columns, then one row per example"
            )
        columns = [c.strip() for c in header]
        rows = []
        for fields in reader:
            if not fields or fields == [""]:
                continue
            if len(fields) != len(columns):
                raise DataError(
                    f"{path}, line {reader.line_num} has {len(fields)} fields but the header has "
                    f"{len(columns)} "
                    f"({', '.join(map(repr, columns))})"
                )
            rows.append((reader.line_num, dict(zip(columns, fields, strict=True))))
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num} cannot be parsed: {exc}") from None
    return columns, rows


def _read_jsonl(path: Path, data: bytes) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(keys seen, [(line, object)]) of a JSON Lines file: one JSON object per non-blank line."""
    columns: dict[str, None] = {}
    rows = []
    for line_no, line in enumerate(_decode(path, data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:  # a JSONDecodeError, or an integer of more digits than Python reads
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
            raise DataError(
                f"{path}, line {line_no} is not valid JSON ({reason}); expected one object per line"
            ) from None
        except RecursionError:
            raise DataError(
                f"{path}, line {line_no} nests JSON too deeply to be read; expected one flat object per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {line_no} holds {type(obj).__name__}, not a JSON object")
        columns.update(dict.fromkeys(obj))
        rows.append((line_no, obj))
    if not rows:
        raise DataError(f"{path} holds no JSON objects; expected one object per line")
    return list(columns), rows


class TextSource(TextLoader):
    """Base of text data sources ``PREFIX:PATH`` (``data_dir`` is ignored; PATH is relative to the
    working folder). Facts and fingerprint are computed on first use and then kept, as for
    :class:`prunelab.data.files.SourceLoader`: reading files that changed since raises DataError.
    """

    needs_files = True
    prefix: str = ""
    usage: str = ""
    #: Keys accepted after a final ``#`` (``PATH#text=COLUMN,label=COLUMN``); none: all is path.
    options_allowed: ClassVar[tuple[str, ...]] = ()

    def __init__(self, argument: str) -> None:
        argument = str(argument)
        path, self.options = split_options(argument, self.options_allowed, self.usage)
        self.classes = classes_option(self.options, self.usage)
        if not path.strip():
            raise SpecError(f"{self.prefix}: needs a path after the colon, as in {self.usage}")
        self.argument = argument
        self.path = user_path(path).absolute()
        self.name = f"{self.prefix}:{argument}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.argument!r})"

    @functools.cached_property
    def info(self) -> DatasetInfo:  # type: ignore[override]
        return self.make_info(self.load_texts(None))

    @abstractmethod
    def problem(self) -> str | None:
        """A cheap check that the data is there: what is wrong, or None (for :meth:`status`)."""

    @abstractmethod
    def digest(self) -> str:
        """A fresh hash of the content (files and options), :data:`FINGERPRINT_CHARS` hex digits."""

    @abstractmethod
    def how_to_get(self) -> str:
        """What PATH must hold, for ``info.how_to_get``."""

    def default_val_size(self, texts: Texts) -> int:
        """10% of the training set (at least 1 with 2 examples or more); the size of its own val split."""
        if texts.val_text is not None:
            return len(texts.val_text)
        n = len(texts.train_text)
        return max(1, n // 10) if n >= 2 else 0

    def make_info(self, texts: Texts) -> DatasetInfo:
        names = ", ".join(texts.label_names[:5]) + (", ..." if len(texts.label_names) > 5 else "")
        counts = f"{len(texts.train_text)} training"
        if texts.val_text is not None:
            counts += f", {len(texts.val_text)} validation"
        return DatasetInfo(
            name=self.name,
            input_shape=(int(self.max_length),),
            num_classes=len(texts.label_names),
            mean=(),
            std=(),
            augment=False,
            default_val_size=self.default_val_size(texts),
            description=(
                f"texts from {self.path}: {len(texts.label_names)} classes ({names}); {counts} and "
                f"{len(texts.test_text)} test; up to {self.max_length} tokens each"
            ),
            how_to_get=self.how_to_get(),
        )

    def locate(self, data_dir: Path | None) -> Path | None:
        return self.path if self.path.exists() else None

    def status(self, data_dir: Path | None) -> tuple[bool, str]:
        problem = self.problem()
        return (True, str(self.path)) if problem is None else (False, problem)

    def fingerprint(self) -> str:
        if "_fingerprint" not in self.__dict__:
            self.__dict__["_fingerprint"] = self.digest()
        return self.__dict__["_fingerprint"]

    def remember(self, digest: str) -> None:
        """Keep ``digest`` as the fingerprint, or raise when the content changed since it was taken."""
        if self.__dict__.setdefault("_fingerprint", digest) != digest:
            raise DataError(
                f"{self.path} changed while this process was running (its content no longer matches the "
                f"fingerprint {self.fingerprint()} read first); run again to use the new content"
            )

    def hasher(self) -> Any:
        h = hashlib.sha256()
        h.update(f"{TEXT_FORMAT}\0{self.prefix}\0{json.dumps(self.options, sort_keys=True)}\0".encode())
        return h


def _hash_files(h: Any, files: Sequence[tuple[str, bytes]]) -> str:
    for name, data in files:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:FINGERPRINT_CHARS]


# --- sst2:DIR -------------------------------------------------------------------------------------

SST2_FILES = ("train.tsv", "dev.tsv")
SST2_NAMES = ("negative", "positive")


@register_source("sst2")
class Sst2Source(TextSource):
    """GLUE SST-2 sentiment (negative/positive) from DIR/train.tsv and DIR/dev.tsv.

    - The files are GLUE's tab-separated ones, unquoted, with a header naming the ``sentence`` and
      ``label`` (0 negative, 1 positive) columns.
    - ``dev.tsv`` is the test set (GLUE's ``test.tsv`` has no labels and is ignored); the validation
      set is held out of ``train.tsv``: 1% of it by default (673 of GLUE's 67,349), at least 1.
    - The fingerprint hashes both files.
    """

    prefix = "sst2"
    usage = "sst2:DIR"

    def how_to_get(self) -> str:
        return (
            f"a folder {self.path} holding GLUE SST-2's train.tsv and dev.tsv (from the GLUE benchmark's "
            f"SST-2.zip)"
        )

    def problem(self) -> str | None:
        if not self.path.is_dir():
            return (
                f"no such folder: {self.path}; {self.usage} needs a folder holding {' and '.join(SST2_FILES)}"
            )
        missing = [f for f in SST2_FILES if not (self.path / f).is_file()]
        if missing:
            return f"{self.path} has no {' or '.join(missing)}; {self.usage} needs {' and '.join(SST2_FILES)}"
        return None

    def _contents(self) -> list[tuple[str, bytes]]:
        problem = self.problem()
        if problem is not None:
            raise DataError(problem)
        return [(name, _read_bytes(self.path / name, "file")) for name in SST2_FILES]

    def digest(self) -> str:
        return _hash_files(self.hasher(), self._contents())

    def default_val_size(self, texts: Texts) -> int:
        return max(1, len(texts.train_text) // 100)

    def load_texts(self, data_dir: Path | None) -> Texts:
        contents = self._contents()
        self.remember(_hash_files(self.hasher(), contents))
        parts = {}
        for key, (name, data) in zip(("train", "test"), contents, strict=True):
            path = self.path / name
            columns, rows = _read_delimited(path, data, "\t", csv.QUOTE_NONE)
            text_col = _pick_column(columns, None, ("sentence",), "text", str(path), self.usage)
            label_col = _pick_column(columns, None, ("label",), "label", str(path), self.usage)
            parts[key] = _Part(
                where=str(path),
                unit="line",
                texts=[_text_value(r[text_col], str(path), "line", n) for n, r in rows],
                labels=[r[label_col] for _, r in rows],
                rows=[n for n, _ in rows],
            )
        _check_parts(parts)
        return _texts_from_parts(parts, str(self.path), SST2_NAMES)


# --- csv:PATH and jsonl:PATH ----------------------------------------------------------------------


class _TableSource(TextSource):
    """A folder holding train/test (optional val) files, or one file with a split column."""

    options_allowed = ("text", "label", CLASSES_OPTION)
    suffix: ClassVar[str] = ""

    def read_table(self, path: Path, data: bytes) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
        raise NotImplementedError

    def layout_text(self) -> str:
        s = self.suffix
        return (
            f"a folder holding train{s} and test{s} (optionally val{s}), or one {s} file with a "
            f"{SPLIT_COLUMN!r} column of train/test/val; text in a column {'/'.join(TEXT_COLUMNS)}, label "
            f"in {'/'.join(LABEL_COLUMNS)} (or name them: {self.usage}#text=COLUMN,label=COLUMN)"
        )

    def how_to_get(self) -> str:
        return f"{self.path}: {self.layout_text()}"

    def _files(self) -> dict[str, Path]:
        """The files to read by split (train, test, val), or {"all": file} for the single-file form."""
        if self.path.is_dir():
            files = {key: self.path / f"{key}{self.suffix}" for key in ("train", "test", "val")}
            missing = [f.name for key, f in files.items() if key != "val" and not f.is_file()]
            if missing:
                raise DataError(
                    f"{self.path} has no {' or '.join(missing)}; {self.usage} needs {self.layout_text()}"
                )
            return {key: f for key, f in files.items() if f.is_file()}
        if self.path.is_file():
            return {"all": self.path}
        raise DataError(f"no such file or folder: {self.path}; {self.usage} needs {self.layout_text()}")

    def problem(self) -> str | None:
        try:
            self._files()
        except DataError as exc:
            return str(exc)
        return None

    def _contents(self) -> dict[str, tuple[Path, bytes]]:
        return {key: (path, _read_bytes(path, "file")) for key, path in self._files().items()}

    def digest(self) -> str:
        return _hash_files(self.hasher(), [(key, data) for key, (_, data) in self._contents().items()])

    def load_texts(self, data_dir: Path | None) -> Texts:
        contents = self._contents()
        self.remember(_hash_files(self.hasher(), [(key, data) for key, (_, data) in contents.items()]))
        if "all" in contents:
            parts = self._split_file(*contents["all"])
        else:
            parts = {
                key: self._part(path, *self.read_table(path, data)) for key, (path, data) in contents.items()
            }
        _check_parts(parts)
        return _texts_from_parts(parts, str(self.path), classes=self.classes, data=self.name)

    def load_corpus(self, data_dir: Path | None = None):
        """The text column only, for a language model (a label column is not needed); one file with
        a split column is split by it, one without is one text."""
        from prunelab.data.corpus import Corpus

        contents = self._contents()
        self.remember(_hash_files(self.hasher(), [(key, data) for key, (_, data) in contents.items()]))
        docs: dict[str, list[str]] = {}
        for key, (path, data) in contents.items():
            columns, rows = self.read_table(path, data)
            col = _pick_column(columns, self.options.get("text"), TEXT_COLUMNS, "text", str(path), self.usage)
            if key == "all" and SPLIT_COLUMN in columns:
                for n, r in rows:
                    value = r.get(SPLIT_COLUMN)
                    split = SPLIT_VALUES.get(value.strip().lower()) if isinstance(value, str) else None
                    if split is None:
                        raise DataError(
                            f"{path}, line {n}: split {value!r} is not one of {', '.join(SPLIT_VALUES)}"
                        )
                    docs.setdefault(split, []).append(_text_value(r.get(col), str(path), "line", n))
            else:
                docs[key] = [_text_value(r.get(col), str(path), "line", n) for n, r in rows]
        if "all" in docs:
            return Corpus(docs["all"], None, None, str(self.path))
        if "train" not in docs:
            raise DataError(f"{self.path} has no training rows; a language model needs some")
        return Corpus(docs["train"], docs.get("test"), docs.get("val"), str(self.path))

    def _columns(self, where: str, columns: Sequence[str]) -> tuple[str, str]:
        text_col = _pick_column(columns, self.options.get("text"), TEXT_COLUMNS, "text", where, self.usage)
        label_col = _pick_column(
            columns, self.options.get("label"), LABEL_COLUMNS, "label", where, self.usage
        )
        return text_col, label_col

    def _part(self, path: Path, columns: list[str], rows: list[tuple[int, dict[str, Any]]]) -> _Part:
        text_col, label_col = self._columns(str(path), columns)
        return _Part(
            where=str(path),
            unit="line",
            texts=[_text_value(r.get(text_col), str(path), "line", n) for n, r in rows],
            labels=[r.get(label_col) for _, r in rows],
            rows=[n for n, _ in rows],
        )

    def _split_file(self, path: Path, data: bytes) -> dict[str, _Part]:
        columns, rows = self.read_table(path, data)
        text_col, label_col = self._columns(str(path), columns)
        split_col = _pick_column(columns, None, (SPLIT_COLUMN,), "split", str(path), self.usage)
        parts = {key: _Part(str(path), "line", [], [], []) for key in ("train", "test", "val")}
        for n, r in rows:
            value = r.get(split_col)
            key = SPLIT_VALUES.get(value.strip().lower()) if isinstance(value, str) else None
            if key is None:
                raise DataError(f"{path}, line {n}: split {value!r} is not one of {', '.join(SPLIT_VALUES)}")
            part = parts[key]
            part.texts.append(_text_value(r.get(text_col), str(path), "line", n))
            part.labels.append(r.get(label_col))
            part.rows.append(n)
        for key in ("train", "test"):
            if not parts[key].texts:
                raise DataError(
                    f"{path} has no rows whose {split_col!r} is {key}; it needs train and test rows"
                )
        if not parts["val"].texts:
            del parts["val"]
        return parts


@register_source("csv")
class CsvSource(_TableSource):
    """Texts and labels in CSV: PATH/{train,test}.csv (+ val.csv), or one file with a split column.

    - A header row names the columns: the text is the first of ``text, sentence, review, content``,
      the label the first of ``label, labels, target``; ``csv:PATH#text=COLUMN,label=COLUMN`` names
      them (split on the last ``#``). Standard CSV quoting (Python's ``csv`` module), UTF-8.
    - Labels: when all are integers they are the classes as they are (they must cover 0..K-1, unless
      ``#classes=K`` says K classes are meant); otherwise each value is a class name, and the sorted
      names are the classes 0..K-1. A number that is no label (2.5, NaN, -1, 1e9 for a few examples)
      is an error naming its line (see :mod:`prunelab.data.labels`).
    - Splits: the test set is test.csv (or the rows whose ``split`` is ``test``); the validation
      set is val.csv (rows ``val``/``validation``) when there is one, else 10% held out of train.
    - Empty texts are allowed; a missing label is an error. The fingerprint hashes the files.
    """

    prefix = "csv"
    usage = "csv:PATH"
    suffix = ".csv"

    def read_table(self, path: Path, data: bytes) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
        columns, rows = _read_delimited(path, data, ",", csv.QUOTE_MINIMAL)
        return columns, rows  # type: ignore[return-value]


@register_source("jsonl")
class JsonlSource(_TableSource):
    """Texts and labels in JSON Lines: PATH/{train,test}.jsonl (+ val.jsonl), or one file with a split key.

    One JSON object per line; keys, labels and splits as for ``csv:PATH`` (JSON integer labels are
    integers, strings are class names unless written as integers). The fingerprint hashes the files.
    """

    prefix = "jsonl"
    usage = "jsonl:PATH"
    suffix = ".jsonl"

    def read_table(self, path: Path, data: bytes) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
        return _read_jsonl(path, data)


# --- hf-disk:DIR ----------------------------------------------------------------------------------


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise SpecError(f"hf-disk:DIR needs the nlp extra: {NLP_EXTRA}") from None
    return datasets


@register_source("hf-disk")
class HfDiskSource(TextSource):
    """A Hugging Face DatasetDict saved with save_to_disk in DIR: train, and test and/or validation.

    - The test set is ``test``, unless it is missing or all its labels are -1 (GLUE hides them):
      then ``validation`` is. With a labelled ``test`` and a ``validation``, the latter is the
      validation set; else the validation set is 10% held out of train.
    - Columns as for ``csv:PATH`` (``hf-disk:DIR#text=COLUMN,label=COLUMN``, ``#classes=K``); a
      ``ClassLabel`` label column gives the class names. Needs the nlp extra (``datasets``). The fingerprint
      hashes every file in DIR.
    """

    prefix = "hf-disk"
    usage = "hf-disk:DIR"
    options_allowed = ("text", "label", CLASSES_OPTION)

    def how_to_get(self) -> str:
        return (
            f"a folder {self.path} written by datasets.DatasetDict.save_to_disk, with a train split and a "
            f"test or validation split"
        )

    def problem(self) -> str | None:
        if not self.path.is_dir():
            return f"no such folder: {self.path}; {self.usage} needs {self.how_to_get()}"
        if not (self.path / "dataset_dict.json").is_file():
            return (
                f"{self.path} is not a DatasetDict saved with save_to_disk (it has no dataset_dict.json); "
                f"{self.usage} needs {self.how_to_get()}"
            )
        return None

    def digest(self) -> str:
        if not self.path.is_dir():
            raise DataError(self.problem() or f"no such folder: {self.path}")
        h = self.hasher()
        for file in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = file.relative_to(self.path).as_posix()
            h.update(f"{rel}\0{file.stat().st_size}\0".encode())
            try:
                with file.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as exc:
                raise DataError(f"cannot read file {file}: {exc.strerror or exc}") from None
        return h.hexdigest()[:FINGERPRINT_CHARS]

    def load_corpus(self, data_dir: Path | None = None):
        """The text column of train, and of test (else validation) and validation when the data has
        them, for a language model; labels are not read."""
        from prunelab.data.corpus import Corpus

        dd = self._load()
        where = f"{self.path} (split train)"
        col = _pick_column(
            dd["train"].column_names, self.options.get("text"), TEXT_COLUMNS, "text", where, self.usage
        )

        def texts(split: str) -> list[str]:
            if col not in dd[split].column_names:
                raise DataError(f"{self.path} (split {split}) has no column {col!r}")
            return [
                _text_value(v, f"{self.path} (split {split})", "example", i)
                for i, v in enumerate(dd[split][col])
            ]

        test = "test" if "test" in dd else "validation" if "validation" in dd else None
        val = "validation" if test == "test" and "validation" in dd else None
        return Corpus(
            texts("train"), texts(test) if test else None, texts(val) if val else None, str(self.path)
        )

    def _load(self) -> Any:
        """The saved DatasetDict, checked for being one, with a train split."""
        problem = self.problem()
        if problem is not None:
            raise DataError(problem)
        self.remember(self.digest())
        datasets = _import_datasets()
        try:
            dd = datasets.load_from_disk(str(self.path))
        except Exception as exc:  # datasets raises FileNotFoundError, ValueError, pyarrow errors, ...
            raise DataError(
                f"{self.path} cannot be read as a saved dataset ({exc}); {self.usage} needs "
                f"{self.how_to_get()}"
            ) from None
        if not isinstance(dd, datasets.DatasetDict):
            raise DataError(
                f"{self.path} holds a single Dataset, not a DatasetDict; save a DatasetDict with a train "
                f"split and a test or validation split"
            )
        if "train" not in dd:
            raise DataError(f"{self.path} has no train split (its splits are {', '.join(dd.keys())})")
        return dd

    def load_texts(self, data_dir: Path | None) -> Texts:
        dd = self._load()
        datasets = _import_datasets()
        splits = list(dd.keys())
        text_col, label_col = (
            _pick_column(
                dd["train"].column_names,
                self.options.get(role),
                cands,
                role,
                f"{self.path} (split train)",
                self.usage,
            )
            for role, cands in (("text", TEXT_COLUMNS), ("label", LABEL_COLUMNS))
        )
        feature = dd["train"].features.get(label_col)
        names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None

        def column(split: str, col: str) -> list[Any]:
            if col not in dd[split].column_names:
                found = ", ".join(map(repr, dd[split].column_names))
                raise DataError(f"{self.path} (split {split}) has no column {col!r}; its columns are {found}")
            return list(dd[split][col])

        test_labelled = "test" in dd and not all(v == -1 for v in column("test", label_col))
        if test_labelled:
            roles = {"train": "train", "test": "test"}
            if "validation" in dd:
                roles["val"] = "validation"
        elif "validation" in dd:
            roles = {"train": "train", "test": "validation"}
        else:
            why = "its test split is unlabelled (all -1)" if "test" in dd else "it has no test split"
            raise DataError(
                f"{self.path}: {why} and it has no validation split to test on (its splits are "
                f"{', '.join(splits)})"
            )
        parts = {}
        for key, split in roles.items():
            where = f"{self.path} (split {split})"
            texts = [_text_value(v, where, "example", i) for i, v in enumerate(column(split, text_col))]
            labels = column(split, label_col)
            parts[key] = _Part(where, "example", texts, labels, list(range(len(texts))))
        _check_parts(parts)
        if names is not None and self.classes not in (None, len(names)):
            raise DataError(
                f"{self.path}: its label column names {len(names)} classes ({', '.join(names[:5])}"
                f"{', ...' if len(names) > 5 else ''}), not {CLASSES_OPTION}={self.classes}; drop the option"
            )
        return _texts_from_parts(parts, str(self.path), names, self.classes, self.name)


# --- synthetic-sentiment --------------------------------------------------------------------------

SENTIMENT_SEED = 20240613
SENTIMENT_TRAIN, SENTIMENT_TEST = 2000, 500
SENTIMENT_WORDS = (4, 12)
POSITIVE = ("good", "great", "excellent", "wonderful", "superb", "lovely", "enjoyable", "brilliant")
NEGATIVE = ("bad", "awful", "terrible", "poor", "boring", "dull", "horrible", "weak")
NEGATIONS = ("not", "never")
FILLER = (
    "the", "a", "this", "it", "movie", "film", "plot", "acting", "story", "cast", "ending", "music",
    "was", "is", "seemed", "really", "quite", "very", "and", "but", "so", "overall",
)  # fmt: skip
#: Chance that a sentiment word right after a filler word is negated (the filler becomes a negation).
NEGATION_RATE = 0.3
#: At most this many sentiment words per sentence.
MAX_PHRASES = 2


def sentiment_score(words: Sequence[str]) -> int:
    """Positive minus negative words, each negation flipping the next sentiment word."""
    score, flip = 0, False
    for word in words:
        if word in NEGATIONS:
            flip = not flip
        elif word in POSITIVE or word in NEGATIVE:
            value = 1 if word in POSITIVE else -1
            score += -value if flip else value
            flip = False
    return score


def _sentence(rng: random.Random, positive: bool) -> str:
    """A sentence of 4-12 words: filler with 1-2 sentiment words, some negated ('not good'); drawn
    again until its score is non-zero (no ties) with the sign asked for."""
    while True:
        n = rng.randint(*SENTIMENT_WORDS)
        words = [rng.choice(FILLER) for _ in range(n)]
        for p in sorted(rng.sample(range(n), rng.randint(1, min(MAX_PHRASES, n // 2)))):
            words[p] = rng.choice(POSITIVE + NEGATIVE)
            if p > 0 and words[p - 1] in FILLER and rng.random() < NEGATION_RATE:
                words[p - 1] = rng.choice(NEGATIONS)
        score = sentiment_score(words)
        if score != 0 and (score > 0) == positive:
            return " ".join(words)


def _sentiment_split(rng: random.Random, n: int) -> tuple[list[str], torch.Tensor]:
    labels = [i % 2 for i in range(n)]
    rng.shuffle(labels)
    return [_sentence(rng, bool(y)) for y in labels], torch.tensor(labels, dtype=torch.int64)


@functools.cache
def _sentiment_texts() -> Texts:
    rng = random.Random(SENTIMENT_SEED)
    train_text, train_labels = _sentiment_split(rng, SENTIMENT_TRAIN)
    test_text, test_labels = _sentiment_split(rng, SENTIMENT_TEST)
    return Texts(
        train_text=train_text,
        train_labels=train_labels,
        test_text=test_text,
        test_labels=test_labels,
        val_text=None,
        val_labels=None,
        label_names=("negative", "positive"),
        source=SyntheticSentiment.origin,
    )


@register_loader
class SyntheticSentiment(TextLoader):
    """SYNTHETIC sentiment sentences generated from a fixed word list; deterministic, for tests and demos.

    Each sentence is 4-12 words: filler words (:data:`FILLER`) with one or two sentiment words
    (:data:`POSITIVE`, :data:`NEGATIVE`), some right after a negation (:data:`NEGATIONS`), which
    flips it. The label is 1 (positive) when :func:`sentiment_score` > 0, else 0; ties are drawn
    again. Classes are balanced: 1,000 + 1,000 training and 250 + 250 test sentences, from a fixed
    seed; the validation set (200) is held out of train. Not real text: a small transformer learns it
    in a few hundred iterations (words alone give 75%; the negations must be read for the rest).
    """

    max_length = 32
    info = DatasetInfo(
        name="synthetic-sentiment",
        input_shape=(32,),
        num_classes=2,
        mean=(),
        std=(),
        augment=False,
        default_val_size=200,
        description=(
            "SYNTHETIC sentiment: generated 4-12 word sentences from a fixed word list, positive (1) when "
            "positive words outnumber negative ones ('not'/'never' flip the next one); 2,000 train, 500 "
            "test; not real text, for tests"
        ),
        how_to_get="generated in memory; nothing to download",
    )
    needs_files = False
    origin = "generated in memory"
    #: Bump when the generator changes: it names the token cache.
    version = "synthetic-sentiment-v1"

    def fingerprint(self) -> str:
        return self.version

    def locate(self, data_dir: Path | None) -> Path | None:
        return None

    def status(self, data_dir: Path | None) -> tuple[bool, str]:
        return True, self.origin

    def load_texts(self, data_dir: Path | None) -> Texts:
        return _sentiment_texts()
