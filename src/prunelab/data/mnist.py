"""MNIST and Fashion-MNIST: four IDX files each, raw or gzipped."""

from __future__ import annotations

from pathlib import Path

import torch

from prunelab.data.base import DatasetInfo, RawData, register_loader
from prunelab.data.files import FileLoader
from prunelab.data.idx import read_idx
from prunelab.errors import DataError

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FILE_LIST = ", ".join(f"{f}[.gz]" for f in FILES)


class IdxLoader(FileLoader):
    """A 28x28 grey-scale, 10-class dataset in MNIST's four-file IDX layout."""

    def find_in(self, folder: Path) -> Path | None:
        return folder if all(_file(folder, f) is not None for f in FILES) else None

    def read(self, where: Path) -> RawData:
        x_train, y_train = self._pair(where, FILES[0], FILES[1])
        x_test, y_test = self._pair(where, FILES[2], FILES[3])
        return RawData(x_train, y_train, x_test, y_test, str(where))

    def _pair(self, folder: Path, images_name: str, labels_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 1, 28, 28) and labels (N) of one part, checked against each other."""
        images_path, labels_path = _file(folder, images_name), _file(folder, labels_name)
        assert images_path is not None and labels_path is not None  # find_in checked them
        images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
        if tuple(images.shape[1:]) != (28, 28):
            raise DataError(
                f"{images_path} holds images of {images.shape[1]}x{images.shape[2]}; expected 28x28"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{labels_path} holds {len(labels)} labels but {images_path.name} holds {len(images)} images"
            )
        if len(labels) and int(labels.max()) > 9:
            raise DataError(
                f"{labels_path} holds label {int(labels.max())}; {self.info.name} labels are 0..9"
            )
        return images.unsqueeze(1), labels.to(torch.int64)


def _file(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``folder`` (the raw file first: it reads faster)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


@register_loader
class Mnist(IdxLoader):
    info = DatasetInfo(
        name="mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        augment=False,
        default_val_size=5000,
        description="MNIST handwritten digits: 60000 training and 10000 test images, 28x28 grey",
        how_to_get=f"the files are {FILE_LIST}, e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/",
    )
    torchvision_dirs = ("MNIST/raw",)
    url_base = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    downloads = (
        ("train-images-idx3-ubyte.gz", "md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "md5", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "md5", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "md5", "ec29112dd5afa0611ce80d1b7f02629c"),
    )


@register_loader
class FashionMnist(IdxLoader):
    info = DatasetInfo(
        name="fashion-mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        augment=False,
        default_val_size=5000,
        description="Fashion-MNIST clothing images (Zalando): 60000 training and 10000 test, 28x28 grey",
        how_to_get=(
            "on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
            "(installs /usr/share/datasets/fashion-mnist); "
            f"the files are {FILE_LIST}, e.g. from http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
        ),
    )
    torchvision_dirs = ("FashionMNIST/raw",)
    system_dirs = (Path("/usr/share/datasets/fashion-mnist"),)
    url_base = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    downloads = (
        ("train-images-idx3-ubyte.gz", "md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "md5", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "md5", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    )
