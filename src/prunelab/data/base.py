"""Dataset types, the dataset registry and :func:`load_dataset`.

Every dataset is held as whole tensors (they all fit in memory), normalised once, so training
iterates by index instead of through a per-sample ``DataLoader``.

Text datasets (``loader.is_text``, see :mod:`prunelab.data.text`) are held as int64 token ids
(N, max_length), tokenised by the model's tokenizer: ``load_dataset(name, tokenizer=...)``.

A dataset is named either by a registered name (:data:`DATASETS`, e.g. ``mnist``) or by a data
*source* with an argument, ``PREFIX:ARGUMENT`` (:data:`DATA_SOURCES`, e.g. ``imagefolder:PATH``);
:func:`resolve_dataset` turns either into its :class:`DatasetLoader`.
"""

from __future__ import annotations

import difflib
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple, TypeVar

import torch

from prunelab.data.augment import cifar_augment
from prunelab.data.loader import TensorLoader
from prunelab.errors import DataError, SpecError, UnknownNameError
from prunelab.io import user_path
from prunelab.registry import Registry

if TYPE_CHECKING:
    from prunelab.data.text import Tokenizer

__all__ = [
    "DATASETS",
    "DATA_SOURCES",
    "Dataset",
    "DatasetInfo",
    "DatasetLoader",
    "RawData",
    "Split",
    "TensorLoader",
    "cifar_augment",
    "dataset_status",
    "load_dataset",
    "register_loader",
    "register_source",
    "resolve_dataset",
    "split_indices",
    "split_options",
]

#: Seed of the train/validation permutation: fixed, so every experiment sees the same split
#: whatever its own seed is.
SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: shapes and constants that models and training need before loading it."""

    name: str
    #: (C, H, W) for images; (max_length,) for text (token ids), whose ``mean`` and ``std`` are ().
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    default_val_size: int
    description: str
    how_to_get: str


@dataclass
class Split:
    """One part of a dataset: inputs ``x`` and int64 labels ``y`` (N).

    ``x`` is normalised float32 (N, C, H, W) for images, int64 token ids (N, max_length) for text.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"split has {self.x.shape[0]} inputs but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: str | torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    """A loaded dataset: train / validation (held out of train) / test splits and where it came from."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    source: str

    def to(self, device: str | torch.device) -> Dataset:
        return Dataset(
            self.info, self.train.to(device), self.val.to(device), self.test.to(device), self.source
        )


class RawData(NamedTuple):
    """Decoded arrays as stored: ``x`` uint8 (0..255) or float in [0, 1], shaped (N, C, H, W); for
    text, int64 token ids (N, max_length).

    ``val_index``, when given, are the indices into ``x_train`` of a validation set that the data
    itself defines (an image folder's ``val/``, a text dataset's validation split): :func:`load_dataset`
    holds out exactly those instead of a random :func:`split_indices` split.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    val_index: torch.Tensor | None = None


class DatasetLoader(ABC):
    """Knows where one dataset lives and how to decode it; one subclass per dataset."""

    info: DatasetInfo
    #: True for text datasets (:class:`prunelab.data.text.TextLoader`): loaded with a tokenizer.
    is_text: ClassVar[bool] = False
    #: False for datasets generated or bundled in code (nothing to find, nothing to download).
    needs_files: bool = False
    #: Base URL and ``(file name, hash algorithm, hex digest)`` of each file to download.
    url_base: str = ""
    downloads: tuple[tuple[str, str, str], ...] = ()

    @property
    def description(self) -> str:
        return self.info.description

    @abstractmethod
    def locate(self, data_dir: Path | None) -> Path | None:
        """Where the dataset's files are, or None when they are not found."""

    @abstractmethod
    def load_raw(self, data_dir: Path | None) -> RawData:
        """Decode the dataset; raises :class:`DataError` when it is missing or corrupt."""

    @abstractmethod
    def status(self, data_dir: Path | None) -> tuple[bool, str]:
        """(found, where it was found or how to get it), for ``prunelab data list``."""

    def fingerprint(self) -> str | None:
        """A short hash of the data's content, or None when the name alone fixes the data.

        Data sources read from user files (``imagefolder:PATH``, ``npz:PATH``) return one, so that
        editing the files changes the experiment id instead of silently mixing results.
        """
        return None


DATASETS: Registry[DatasetLoader] = Registry("dataset")

#: Data sources taking an argument, by prefix: ``--data PREFIX:ARGUMENT`` works wherever a dataset
#: name does. Each is a :class:`DatasetLoader` class built as ``cls(argument)``, with a ``usage``
#: such as ``"imagefolder:PATH"`` and a docstring whose first line listings show.
DATA_SOURCES: Registry[type] = Registry("data source")

L = TypeVar("L", bound=type[DatasetLoader])


def register_loader(cls: L) -> L:
    """Class decorator: register one instance of a loader under its ``info.name``."""
    DATASETS.add(cls.info.name, cls())
    return cls


S = TypeVar("S", bound=type)


def register_source(prefix: str):
    """Class decorator: register a data source class under ``prefix`` (``--data PREFIX:ARGUMENT``)."""
    if not prefix or ":" in prefix:
        raise ValueError(f"a data source prefix must be non-empty and hold no ':', not {prefix!r}")

    def decorator(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, DatasetLoader)):
            raise TypeError(f"data source {prefix!r} must be a DatasetLoader class, not {cls!r}")
        if not isinstance(getattr(cls, "usage", None), str):
            raise TypeError(
                f"data source {prefix!r} needs a class attribute usage, e.g. {prefix + ':PATH'!r}"
            )
        DATA_SOURCES.add(prefix, cls)
        return cls

    return decorator


#: What the value of a data-source option stands for, in messages (``csv:PATH#text=COLUMN``).
OPTION_VALUES = {"text": "COLUMN", "label": "COLUMN", "classes": "K"}


def split_options(argument: str, allowed: Sequence[str], usage: str) -> tuple[str, dict[str, str]]:
    """(path, options) of a data source's ``PATH#key=value,...`` (split on the last ``#``), the keys
    among ``allowed``; no ``=`` after the ``#``: it is all path."""
    path, sep, tail = argument.rpartition("#")
    if not allowed or not sep or "=" not in tail:
        return argument, {}
    form = usage + "#" + ",".join(f"{k}={OPTION_VALUES.get(k, 'VALUE')}" for k in allowed)
    options: dict[str, str] = {}
    for item in tail.split(","):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or key not in allowed or not value:
            raise SpecError(
                f"{usage}: bad option {item.strip()!r} after '#' in {argument!r}; expected {form}"
            )
        if key in options:
            raise SpecError(f"{usage}: option {key!r} given twice in {argument!r}; expected {form}")
        options[key] = value
    return path, options


@functools.lru_cache(maxsize=32)
def resolve_dataset(text: str) -> DatasetLoader:
    """The loader of a registered dataset name, or of a data source ``PREFIX:ARGUMENT``.

    Cached per ``text``: a source's facts (shape, statistics, :meth:`~DatasetLoader.fingerprint`) are
    computed once per process, and stay those of the files as they were then; call
    ``resolve_dataset.cache_clear()`` to read changed files again. Anything else raises
    :class:`UnknownNameError` listing the dataset names and the source forms.
    """
    if text in DATASETS:
        return DATASETS.get(text)
    prefix, sep, argument = str(text).partition(":")
    if sep and prefix in DATA_SOURCES:
        return DATA_SOURCES.get(prefix)(argument)
    raise UnknownNameError(_unknown_dataset_message(str(text)))


def _unknown_dataset_message(text: str) -> str:
    """``Registry.unknown_message``'s style, naming the source forms too."""
    names = DATASETS.names()
    prefix, sep, argument = text.partition(":")
    close_prefix = difflib.get_close_matches(prefix, DATA_SOURCES.names(), n=1) if sep else []
    if close_prefix:
        hint = f" Did you mean {close_prefix[0] + ':' + argument!r}?"
    else:
        close = difflib.get_close_matches(text, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
    forms = ", ".join(cls.usage for _, cls in DATA_SOURCES.items())
    sources = f"; or {forms}" if forms else ""
    return f"unknown dataset {text!r}.{hint} Valid datasets: {', '.join(names)}{sources}."


def dataset_status(name: str, data_dir: str | Path | None = None) -> tuple[bool, str]:
    """(found, where it was found or how to get it) for the CLI's ``prunelab data list``."""
    return resolve_dataset(name).status(_as_path(data_dir))


Stats = tuple[Sequence[float], Sequence[float]]


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    val_size: int | None = None,
    device: str | torch.device = "cpu",
    stats: Stats | None = None,
    tokenizer: Tokenizer | None = None,
) -> Dataset:
    """Load ``name`` normalised, with a fixed validation split held out of the training set.

    ``name`` is anything :func:`resolve_dataset` accepts. ``stats`` = ``(mean, std)``, one value per
    channel, replaces the dataset's own statistics for the normalisation (e.g. those a pretrained
    model was trained with); the returned ``Dataset.info`` then carries them.

    A text dataset (``loader.is_text``) needs ``tokenizer`` (a :class:`prunelab.data.text.Tokenizer`,
    the model's) and takes no ``stats``: its texts become int64 token ids (N, max_length), cached on
    disk per data and tokenizer fingerprint (:func:`prunelab.data.text.tokenise`). Any other dataset
    refuses a ``tokenizer`` (a text model on image data).
    """
    loader = resolve_dataset(name)
    info = loader.info
    if loader.is_text:
        if stats is not None:
            raise SpecError(
                f"{info.name} is text data: stats (a per-channel mean and std) do not apply to it"
            )
        if tokenizer is None:
            raise SpecError(
                f"{info.name} is text data: loading it needs the model's tokenizer, "
                f"load_dataset({name!r}, tokenizer=...)"
            )
        from prunelab.data.text import tokenise

        raw = tokenise(loader, tokenizer, _as_path(data_dir))
    else:
        if tokenizer is not None:
            raise SpecError(
                f"{info.name} is not text data (inputs {info.input_shape}), so a tokenizer does not apply; "
                f"a model that takes text needs a text dataset"
            )
        if stats is not None:
            info = _with_stats(info, stats)
        raw = loader.load_raw(_as_path(data_dir))
    _check_raw(info, raw)
    if raw.val_index is not None:
        train_idx, val_idx = _given_split(raw, val_size, info.name)
    else:
        size = info.default_val_size if val_size is None else val_size
        train_idx, val_idx = split_indices(len(raw.y_train), size, name)
    # Index the stored (often uint8) arrays before converting: four times less memory to move.
    dataset = Dataset(
        info=info,
        train=_split(raw.x_train[train_idx], raw.y_train[train_idx], info),
        val=_split(raw.x_train[val_idx], raw.y_train[val_idx], info),
        test=_split(raw.x_test, raw.y_test, info),
        source=raw.source,
    )
    return dataset.to(device)


def split_indices(n: int, val_size: int, name: str = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into a training set of ``n``: fixed by :data:`SPLIT_SEED`, each sorted."""
    if not 0 <= val_size < n:
        raise DataError(
            f"validation size {val_size} is not possible for {name}: its training set has {n} samples; "
            f"use 0 <= val_size < {n}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def _given_split(raw: RawData, val_size: int | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices when the data defines its validation set (``raw.val_index``)."""
    n = len(raw.y_train)
    val_idx = raw.val_index.to(torch.int64).sort().values
    if val_size is not None and val_size != len(val_idx):
        raise DataError(
            f"{name} takes its validation set from its own validation data (a val/ folder, val file or "
            f"split: {len(val_idx)} examples, in {raw.source}), so val_size={val_size} cannot apply; leave "
            f"val_size unset, or remove that data to hold out val_size examples of the training set instead"
        )
    if len(val_idx) and (int(val_idx[0]) < 0 or int(val_idx[-1]) >= n or bool((val_idx.diff() == 0).any())):
        raise DataError(f"{name} from {raw.source}: its validation indices do not fit {n} training examples")
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero().flatten(), val_idx


def _with_stats(info: DatasetInfo, stats: Stats) -> DatasetInfo:
    """``info`` with the normalisation statistics ``stats`` = (mean, std), checked against its channels."""
    channels = info.input_shape[0]
    try:
        mean, std = (tuple(float(v) for v in part) for part in stats)
    except (TypeError, ValueError):
        raise DataError(
            f"stats must be (mean, std), each a sequence of {channels} numbers (one per channel of "
            f"{info.name}), not {stats!r}"
        ) from None
    if len(mean) != channels or len(std) != channels:
        raise DataError(
            f"stats give {len(mean)} mean and {len(std)} std values but {info.name} has {channels} "
            f"channel{'s' if channels != 1 else ''} (input shape {info.input_shape}); give one value per channel"
        )
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise DataError(f"stats for {info.name}: mean must be finite and std finite and > 0, not {stats!r}")
    return replace(info, mean=mean, std=std)


def _as_path(data_dir: str | Path | None) -> Path | None:
    return None if data_dir is None or str(data_dir) == "" else user_path(data_dir)


def _split(x: torch.Tensor, y: torch.Tensor, info: DatasetInfo) -> Split:
    """A normalised split (token ids stay int64); labels are copied because the raw arrays may be cached."""
    return Split(_normalise(x, info), y.to(torch.int64, copy=True))


def _normalise(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Scale to [0, 1] (uint8 / 255), then standardise each channel; never modifies ``x``.

    Integer inputs other than uint8 (token ids) are returned as a copy, unconverted.
    """
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        return x.clone()
    out = x.to(torch.float32, copy=True)
    if x.dtype == torch.uint8:
        out.div_(255.0)
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return out.sub_(mean).div_(std)


def _check_raw(info: DatasetInfo, raw: RawData) -> None:
    """Catch a loader handing back data of the wrong shape or labels out of range."""
    for part, x, y in (("training", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if len(y) == 0:
            raise DataError(
                f"{info.name} {part} data from {raw.source} holds no examples; replace the files "
                f"(`prunelab data list` says where {info.name} is looked for)"
            )
        if tuple(x.shape[1:]) != info.input_shape or x.shape[0] != y.shape[0]:
            raise DataError(
                f"{info.name} {part} data from {raw.source} has inputs {tuple(x.shape)} and labels "
                f"{tuple(y.shape)}; expected (N, {', '.join(map(str, info.input_shape))}) and (N,)"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise DataError(
                f"{info.name} {part} labels from {raw.source} range over {int(y.min())}..{int(y.max())}; "
                f"expected 0..{info.num_classes - 1}"
            )
