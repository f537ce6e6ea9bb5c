"""Dataset types, the dataset registry and :func:`load_dataset`.

Every dataset is held as whole tensors (they all fit in memory), normalised once, so training
iterates by index instead of through a per-sample ``DataLoader``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch

from prunelab.data.augment import cifar_augment
from prunelab.data.loader import TensorLoader
from prunelab.errors import DataError
from prunelab.registry import Registry

__all__ = [
    "DATASETS",
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
    "split_indices",
]

#: Seed of the train/validation permutation: fixed, so every experiment sees the same split
#: whatever its own seed is.
SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: shapes and constants that models and training need before loading it."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    default_val_size: int
    description: str
    how_to_get: str


@dataclass
class Split:
    """One part of a dataset: normalised float32 inputs ``x`` (N, C, H, W) and int64 labels ``y`` (N)."""

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
    """Decoded arrays as stored: ``x`` uint8 (0..255) or float in [0, 1], shaped (N, C, H, W)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str


class DatasetLoader(ABC):
    """Knows where one dataset lives and how to decode it; one subclass per dataset."""

    info: DatasetInfo
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


DATASETS: Registry[DatasetLoader] = Registry("dataset")

L = TypeVar("L", bound=type[DatasetLoader])


def register_loader(cls: L) -> L:
    """Class decorator: register one instance of a loader under its ``info.name``."""
    DATASETS.add(cls.info.name, cls())
    return cls


def dataset_status(name: str, data_dir: str | Path | None = None) -> tuple[bool, str]:
    """(found, where it was found or how to get it) for the CLI's ``prunelab data list``."""
    return DATASETS.get(name).status(_as_path(data_dir))


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    val_size: int | None = None,
    device: str | torch.device = "cpu",
) -> Dataset:
    """Load ``name`` normalised, with a fixed validation split held out of the training set."""
    loader = DATASETS.get(name)
    info = loader.info
    raw = loader.load_raw(_as_path(data_dir))
    _check_raw(info, raw)
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


def _as_path(data_dir: str | Path | None) -> Path | None:
    return None if data_dir is None or str(data_dir) == "" else Path(data_dir).expanduser()


def _split(x: torch.Tensor, y: torch.Tensor, info: DatasetInfo) -> Split:
    """A normalised split; labels are copied because the raw arrays may be cached."""
    return Split(_normalise(x, info), y.to(torch.int64, copy=True))


def _normalise(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Scale to [0, 1] (uint8 / 255), then standardise each channel; never modifies ``x``."""
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
