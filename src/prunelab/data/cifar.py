"""CIFAR-10 in either official version (binary or python batches), extracted or as the archive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prunelab.data.archive import extract_folder
from prunelab.data.base import DatasetInfo, RawData, register_loader
from prunelab.data.files import FileLoader
from prunelab.data.locate import cache_dir
from prunelab.data.unpickle import safe_unpickle
from prunelab.errors import DataError

PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS
BIN_DIR, PY_DIR = "cifar-10-batches-bin", "cifar-10-batches-py"
BIN_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
PY_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
ARCHIVES = {"cifar-10-binary.tar.gz": BIN_DIR, "cifar-10-python.tar.gz": PY_DIR}


@register_loader
class Cifar10(FileLoader):
    info = DatasetInfo(
        name="cifar10",
        input_shape=(3, 32, 32),
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        augment=True,
        default_val_size=5000,
        description="CIFAR-10 colour images in 10 classes: 50000 training and 10000 test, 32x32",
        how_to_get=(
            "the official archive cifar-10-binary.tar.gz or cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, or its extracted folder "
            f"{BIN_DIR} / {PY_DIR}"
        ),
    )
    torchvision_dirs = (PY_DIR, BIN_DIR)
    url_base = "https://www.cs.toronto.edu/~kriz/"
    downloads = (("cifar-10-binary.tar.gz", "md5", "c32a1d4ab5d03f1284b67883e8d87530"),)

    def find_in(self, folder: Path) -> Path | None:
        """An extracted folder (binary first: no unpickling), else an archive."""
        for candidate in (folder, folder / BIN_DIR, folder / PY_DIR):
            if _holds(candidate, BIN_FILES) or _holds(candidate, PY_FILES):
                return candidate
        for archive in ARCHIVES:
            if (folder / archive).is_file():
                return folder / archive
        return None

    def read(self, where: Path) -> RawData:
        folder = _extracted(where) if where.is_file() else where
        read_batch = _read_bin if _holds(folder, BIN_FILES) else _read_py
        files = BIN_FILES if read_batch is _read_bin else PY_FILES
        train = [read_batch(folder / name) for name in files[:5]]
        x_test, y_test = read_batch(folder / files[5])
        x_train = torch.cat([x for x, _ in train])
        y_train = torch.cat([y for _, y in train])
        return RawData(x_train, y_train, x_test, y_test, str(where))


def _holds(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / name).is_file() for name in names)


def _extracted(archive: Path) -> Path:
    """The archive's batches folder in the cache, extracted on first use."""
    folder = ARCHIVES[archive.name]
    target = cache_dir("cifar10") / folder
    files = BIN_FILES if folder == BIN_DIR else PY_FILES
    if _holds(target, files):
        return target
    return extract_folder(archive, folder, cache_dir("cifar10"))


def _read_bin(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A binary batch: records of one label byte then 3072 pixel bytes (R, G, B planes)."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % RECORD:
        raise DataError(
            f"{path} holds {data.size} bytes, not a whole number of {RECORD}-byte CIFAR-10 records "
            f"({data.size // RECORD} records and {data.size % RECORD} bytes left over); it may be truncated"
        )
    records = data.reshape(-1, RECORD)
    return _tensors(path, records[:, 1:], records[:, 0])


def _read_py(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A python batch: a pickled dict with b'data' (N x 3072 uint8) and b'labels' (N ints)."""
    batch = safe_unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 python batch: expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != PIXELS
    ):
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path} holds data of shape {shape}; expected N x {PIXELS} uint8")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path} holds labels that are not integers") from None
    if label_array.shape != (data.shape[0],):
        raise DataError(f"{path} holds {data.shape[0]} images but labels of shape {label_array.shape}")
    return _tensors(path, data, label_array)


def _tensors(path: Path, pixels: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path} holds labels {labels.min()}..{labels.max()}; CIFAR-10 labels are 0..9")
    x = torch.from_numpy(np.ascontiguousarray(pixels).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels.astype(np.int64))
