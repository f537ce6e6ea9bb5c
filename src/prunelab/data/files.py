"""Datasets read from files.

:class:`FileLoader` is the base of registered datasets whose files are searched for (MNIST,
CIFAR-10): locating, the 'not found' error and an in-process cache.

The data sources ``imagefolder:PATH`` (:class:`ImageFolderSource`) and ``npz:PATH``
(:class:`NpzSource`) read a user's own files at the path given after the colon; they work wherever
a dataset name does (see :func:`prunelab.data.base.resolve_dataset`).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import warnings
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunelab.data.base import DatasetInfo, DatasetLoader, RawData, register_source, split_options
from prunelab.data.labels import CLASSES_OPTION, LabelPart, check_labels, classes_option
from prunelab.data.locate import cache_root, find_data, missing_message, short_how
from prunelab.errors import CheckpointError, DataError, OutputError, SpecError
from prunelab.io import load_tensors, save_tensors, user_path

__all__ = ["FileLoader", "ImageFolderSource", "NpzSource", "SourceLoader"]


class FileLoader(DatasetLoader):
    """A dataset stored in files; subclasses say where they sit (``find_in``) and how to decode them."""

    needs_files = True
    #: Sub-folders of a search root in torchvision's layout (e.g. ``MNIST/raw``).
    torchvision_dirs: tuple[str, ...] = ()
    #: Folders searched last, such as those of a distribution package.
    system_dirs: tuple[Path, ...] = ()

    @abstractmethod
    def find_in(self, folder: Path) -> Path | None:
        """The dataset's location within ``folder`` (itself, a sub-folder or an archive), or None."""

    @abstractmethod
    def read(self, where: Path) -> RawData:
        """Decode the files at ``where`` (as returned by :meth:`find_in`)."""

    def locate(self, data_dir: Path | None) -> Path | None:
        return find_data(self.info.name, data_dir)

    def load_raw(self, data_dir: Path | None) -> RawData:
        where = self.locate(data_dir)
        if where is None:
            raise DataError(missing_message(self.info.name, data_dir))
        return _read_cached(self, where.resolve(), _stamp(where))

    def status(self, data_dir: Path | None) -> tuple[bool, str]:
        where = self.locate(data_dir)
        if where is None:
            return False, short_how(self.info.name)
        return True, f"{where} (archive, extracted on first load)" if where.is_file() else str(where)


@functools.lru_cache(maxsize=4)
def _read_cached(loader: FileLoader, where: Path, stamp: tuple) -> RawData:
    """Decoding Fashion-MNIST takes about a second: do it once per process (``stamp`` spots changed files)."""
    return loader.read(where)


def _stamp(where: Path) -> tuple:
    """Name, size and modification time of ``where`` or of the files directly in it."""
    paths = sorted(where.iterdir()) if where.is_dir() else [where]
    stats = ((p.name, p.stat()) for p in paths if p.is_file())
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


# --- data sources: a user's own files at the path after the colon ---------------------------------

#: Characters of a :meth:`SourceLoader.fingerprint` (a sha256 hex prefix).
FINGERPRINT_CHARS = 16


class SourceLoader(DatasetLoader):
    """Base of data sources ``PREFIX:PATH``: the data is at ``PATH``, relative to the working folder.

    ``data_dir`` is ignored (the path says where the data is). The facts (:attr:`info`) and the
    :meth:`fingerprint` are computed on first use and then kept: they describe the files as they
    were then, and reading files that changed since raises :class:`DataError`. An empty ``PATH``
    raises :class:`SpecError` (the dataset text itself is malformed).
    """

    needs_files = True
    #: The registered prefix and the form shown in listings and errors.
    prefix: str = ""
    usage: str = ""
    #: Keys accepted after a final ``#`` (``PATH#classes=K``); none: all is path.
    options_allowed: tuple[str, ...] = ()

    def __init__(self, argument: str) -> None:
        if not str(argument).strip():
            raise SpecError(f"{self.prefix}: needs a path after the colon, as in {self.usage}")
        self.argument = str(argument)
        path, self.options = split_options(self.argument, self.options_allowed, self.usage)
        if not path.strip():
            raise SpecError(f"{self.prefix}: needs a path after the colon, as in {self.usage}")
        self.classes = classes_option(self.options, self.usage)
        self.path = user_path(path).absolute()
        self.name = f"{self.prefix}:{self.argument}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.argument!r})"

    @functools.cached_property
    def info(self) -> DatasetInfo:  # type: ignore[override]
        return self.make_info(self.load_raw(None))

    @abstractmethod
    def read(self) -> RawData:
        """Decode the data (raising :class:`DataError` for bad input), consistent with :meth:`fingerprint`."""

    @abstractmethod
    def make_info(self, raw: RawData) -> DatasetInfo:
        """The dataset's facts, computed from its data."""

    @abstractmethod
    def problem(self) -> str | None:
        """A cheap check that the data is there: what is wrong, or None (for :meth:`status`)."""

    def locate(self, data_dir: Path | None) -> Path | None:
        return self.path if self.path.exists() else None

    def load_raw(self, data_dir: Path | None) -> RawData:
        return _read_source(self)

    def status(self, data_dir: Path | None) -> tuple[bool, str]:
        problem = self.problem()
        return (True, str(self.path)) if problem is None else (False, problem)

    def changed_error(self) -> DataError:
        return DataError(
            f"{self.path} changed while this process was running (its content no longer matches the "
            f"fingerprint {self.fingerprint()} read first); run again to use the new content"
        )


@functools.lru_cache(maxsize=2)
def _read_source(loader: SourceLoader) -> RawData:
    """The last sources read, kept decoded: computing the facts and loading read the files once."""
    return loader.read()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:FINGERPRINT_CHARS]


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _default_val_size(n_train: int) -> int:
    """10% of the training set, at least 1 when it has 2 examples or more."""
    return max(1, n_train // 10) if n_train >= 2 else 0


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of images (N, C, H, W), uint8 scaled by 1/255; rounded to 6 digits.

    The std is the population one; a constant channel gets std 1, so normalising never divides by 0.
    """
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, x.shape[0], 1024):
        chunk = x[start : start + 1024].to(torch.float64)
        if x.dtype == torch.uint8:
            chunk /= 255.0
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = max(1, x.shape[0] * x.shape[2] * x.shape[3])
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    means = tuple(round(float(m), 6) for m in mean)
    stds = tuple(round(float(s), 6) if float(s) >= 1e-6 else 1.0 for s in std)
    return means, stds


# --- imagefolder:PATH -----------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Part of the fingerprint: bump it when decoding changes, so cached tensors and ids change with it.
IMAGEFOLDER_FORMAT = "imagefolder-v1"
#: Pillow modes read as grayscale (one channel); any other mode (RGB, RGBA, P, CMYK, ...) is colour.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
LAYOUT = "PATH/train/<class>/*.png|jpg|jpeg and PATH/test/<class>/... (optionally PATH/val/<class>/...)"


@dataclass(frozen=True)
class _ImageFile:
    split: str  # "train", "val" or "test": the folder it is in
    label: int
    rel: str  # path relative to the root, with "/"
    path: Path


@dataclass(frozen=True)
class _Layout:
    classes: tuple[str, ...]
    files: dict[str, tuple[_ImageFile, ...]]  # by folder: train, and val and/or test when present

    @property
    def val_folder(self) -> str | None:
        """The folder of the validation set: val/ when test/ is there too, else None (held out of train)."""
        return "val" if "val" in self.files and "test" in self.files else None

    @property
    def test_folder(self) -> str:
        return "test" if "test" in self.files else "val"


@register_source("imagefolder")
class ImageFolderSource(SourceLoader):
    """Images in one folder per class under PATH/train/ and PATH/test/ (optional PATH/val/).

    - Classes are the sorted names of the sub-folders of ``train/`` (label 0 is the first); ``val/``
      and ``test/`` hold the same class folders (some may be missing or empty; an unknown one is an
      error). Images are ``*.png``, ``*.jpg``, ``*.jpeg`` (any case), also in nested folders; other
      files and hidden entries (names starting with ".") are ignored.
    - Splits: with ``test/`` and ``val/``, the test set is ``test/`` and the validation set is exactly
      ``val/`` (then ``val_size`` cannot be set to anything else). With only one of them, it is the
      test set and the validation set is held out of ``train/`` (10% by default). With neither, it is
      an error.
    - Pixels: decoded with Pillow into uint8; RGB (alpha dropped) when any image is in colour,
      else one grayscale channel. All images must have one size (resize them beforehand).
    - Decoded once: the tensors are cached in ``<cache>/datasets/imagefolder/<fingerprint>.safetensors``;
      the fingerprint hashes every image's relative path, size and content.
    """

    prefix = "imagefolder"
    usage = "imagefolder:PATH"

    @functools.cached_property
    def layout(self) -> _Layout:
        return _scan(self.path)

    def fingerprint(self) -> str:
        if "_fingerprint" not in self.__dict__:
            hashes = _file_hashes(self.layout)  # kept: decoding checks each file against them
            self.__dict__["_hashes"] = hashes
            self.__dict__["_fingerprint"] = _folder_fingerprint(hashes)
        return self.__dict__["_fingerprint"]

    def cache_file(self) -> Path:
        return cache_root() / "imagefolder" / f"{self.fingerprint()}.safetensors"

    def problem(self) -> str | None:
        try:
            self.layout  # noqa: B018 - scanning the folders is the check
        except DataError as exc:
            return str(exc)
        return None

    def read(self) -> RawData:
        cached = self._load_cache()
        tensors = cached if cached is not None else self._decode()
        layout = self.layout
        x_train, y_train = tensors["x_train"], tensors["y_train"]
        val_index = None
        if layout.val_folder is not None:
            n = len(y_train)
            val_index = torch.arange(n, n + len(tensors["y_val"]))
            x_train = torch.cat([x_train, tensors["x_val"]])
            y_train = torch.cat([y_train, tensors["y_val"]])
        return RawData(x_train, y_train, tensors["x_test"], tensors["y_test"], str(self.path), val_index)

    def make_info(self, raw: RawData) -> DatasetInfo:
        layout = self.layout
        n_val = 0 if raw.val_index is None else len(raw.val_index)
        n_train = len(raw.y_train) - n_val
        mean, std = channel_stats(raw.x_train[:n_train])
        shape = tuple(int(d) for d in raw.x_train.shape[1:])
        names = ", ".join(layout.classes[:5]) + (", ..." if len(layout.classes) > 5 else "")
        counts = f"{n_train} training" + (f", {n_val} validation (val/)" if n_val else "")
        return DatasetInfo(
            name=self.name,
            input_shape=shape,  # type: ignore[arg-type]
            num_classes=len(layout.classes),
            mean=mean,
            std=std,
            augment=False,
            default_val_size=n_val if raw.val_index is not None else _default_val_size(n_train),
            description=(
                f"images from {self.path}: {len(layout.classes)} classes ({names}); {counts} and "
                f"{len(raw.y_test)} test ({layout.test_folder}/), {'x'.join(map(str, shape))}"
            ),
            how_to_get=f"a folder laid out as {LAYOUT.replace('PATH', str(self.path))}",
        )

    def _load_cache(self) -> dict[str, torch.Tensor] | None:
        path = self.cache_file()
        if not path.is_file():
            return None
        try:
            tensors = load_tensors(path)
        except CheckpointError:
            return None  # a damaged cache is decoded again and replaced
        layout = self.layout
        counts = {"train": len(layout.files["train"]), "test": len(layout.files[layout.test_folder])}
        if layout.val_folder is not None:
            counts["val"] = len(layout.files["val"])
        for role, n in counts.items():
            x, y = tensors.get(f"x_{role}"), tensors.get(f"y_{role}")
            if x is None or y is None or len(x) != n or len(y) != n:
                return None  # not what this layout decodes to: decoded again and replaced
        return tensors

    def _decode(self) -> dict[str, torch.Tensor]:
        self.fingerprint()  # the cache file is named after it; decoding checks the files still match
        tensors = _decode_layout(self.layout, self.__dict__["_hashes"], self.changed_error)
        try:
            save_tensors(self.cache_file(), tensors, metadata={"source": str(self.path)})
        except OutputError as exc:
            warnings.warn(f"decoded images not cached: {exc}", stacklevel=2)
        return tensors


def _scan(root: Path) -> _Layout:
    """The classes and image files under ``root``; :class:`DataError` for a bad layout."""
    if not root.exists():
        raise DataError(f"image folder {root} does not exist; expected {LAYOUT}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; imagefolder:PATH needs a folder laid out as {LAYOUT}")
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{root} has no train/ folder; expected {LAYOUT}")
    classes = tuple(sorted(d.name for d in _subfolders(train)))
    if not classes:
        raise DataError(f"{train} holds no class folders; put the images of each class in {train}/<class>/")
    present = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if present == ["train"]:
        raise DataError(
            f"{root} has no test/ folder (nor val/): the test set comes from {root}/test/<class>/ "
            f"(or from val/<class>/ when there is no test/); expected {LAYOUT}"
        )
    files: dict[str, tuple[_ImageFile, ...]] = {}
    for split in present:
        folder = root / split
        for sub in _subfolders(folder):
            if sub.name not in classes:
                raise DataError(
                    f"{sub}: class {sub.name!r} is not one of the classes in {train} ({', '.join(classes)}); "
                    f"{split}/ may only hold class folders of train/"
                )
        found: list[_ImageFile] = []
        for label, name in enumerate(classes):
            images = _images_in(folder / name, root)
            if split == "train" and not images:
                raise DataError(
                    f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                    f"add images or remove the folder"
                )
            found += [_ImageFile(split, label, rel, path) for rel, path in images]
        if not found:
            raise DataError(
                f"{folder} holds no images in its class folders ({folder}/<class>/*.png|jpg|jpeg); "
                f"add images or remove the folder"
            )
        files[split] = tuple(found)
    return _Layout(classes, files)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path, root: Path) -> list[tuple[str, Path]]:
    """(path relative to ``root``, path) of the images below ``folder``, sorted; none if it is absent."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if (
            path.suffix.lower() in IMAGE_SUFFIXES
            and not any(p.startswith(".") for p in parts)
            and path.is_file()
        ):
            found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _file_entry(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def _file_hashes(layout: _Layout) -> dict[str, tuple[int, str]]:
    """(size, sha256) of every image by relative path, reading one file at a time."""
    files = (f for split in layout.files.values() for f in split)
    return {f.rel: _file_entry(_read_bytes(f.path, "image")) for f in files}


def _folder_fingerprint(hashes: dict[str, tuple[int, str]]) -> str:
    """Hash of the format version and every image's relative path, size and content hash, sorted."""
    h = hashlib.sha256(f"{IMAGEFOLDER_FORMAT}\n".encode())
    for rel, (size, digest) in sorted(hashes.items()):
        h.update(f"{rel}\t{size}\t{digest}\n".encode())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def _decode_image(data: bytes, path: Path) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 RGB pixels of one image file and whether it is in colour."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            colour = image.mode not in GRAY_MODES
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # Pillow raises many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read image {path}: {reason}; replace or remove the file") from None
    return pixels, colour


def _decode_layout(
    layout: _Layout, expected: dict[str, tuple[int, str]], changed: Callable[[], DataError]
) -> dict[str, torch.Tensor]:
    """Decode every image: ``x_<role>`` uint8 (N, C, H, W) and ``y_<role>`` int64 per role
    (train, val, test); ``changed()`` is raised when a file no longer has its ``expected`` hash."""

    def decode(f: _ImageFile) -> tuple[_ImageFile, np.ndarray, bool]:
        data = _read_bytes(f.path, "image")
        if _file_entry(data) != expected.get(f.rel):
            raise changed()
        return (f, *_decode_image(data, f.path))

    decoded = {split: [decode(f) for f in files] for split, files in layout.files.items()}
    every = [item for items in decoded.values() for item in items]
    sizes = collections.Counter(pixels.shape[:2] for _, pixels, _ in every)
    common = sizes.most_common(1)[0][0]
    if len(sizes) > 1:
        odd, pixels, _ = next(item for item in every if item[1].shape[:2] != common)
        h, w = pixels.shape[:2]
        raise DataError(
            f"image {odd.path} is {w}x{h} pixels but most images are {common[1]}x{common[0]} "
            f"({len(sizes)} sizes in all); all images must have one size: resize them first"
        )
    colour = any(c for _, _, c in every)
    roles = {"train": "train", layout.test_folder: "test"}
    if layout.val_folder is not None:
        roles["val"] = "val"
    tensors: dict[str, torch.Tensor] = {}
    for split, items in decoded.items():
        x = np.stack([pixels for _, pixels, _ in items])
        x = x.transpose(0, 3, 1, 2) if colour else x[..., :1].transpose(0, 3, 1, 2)
        tensors[f"x_{roles[split]}"] = torch.from_numpy(np.ascontiguousarray(x))
        tensors[f"y_{roles[split]}"] = torch.tensor([f.label for f, _, _ in items], dtype=torch.int64)
    return tensors


# --- npz:PATH -------------------------------------------------------------------------------------

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_IMAGES = "(N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3"


@register_source("npz")
class NpzSource(SourceLoader):
    """Arrays x_train, y_train, x_test, y_test in a NumPy .npz file (numpy.savez).

    - ``x_*``: images shaped (N, H, W) (one channel), (N, C, H, W) or (N, H, W, C) with C = 1 or 3
      (channels last when the last axis is 1 or 3 and axis 1 is not); uint8 (0..255) or float in [0, 1].
    - ``y_*``: integer labels 0..K-1 (integer or whole float arrays), shaped (N,) or (N, 1); there are
      K = 1 + the largest label classes, and each must occur, unless ``npz:PATH#classes=K`` says K
      classes are meant (see :mod:`prunelab.data.labels`).
    - Read without pickle; the validation set is held out of the training set (10% by default).
      The fingerprint hashes the file's bytes.
    """

    prefix = "npz"
    usage = "npz:PATH"
    options_allowed = (CLASSES_OPTION,)

    def fingerprint(self) -> str:
        if "_fingerprint" not in self.__dict__:
            self.__dict__["_fingerprint"] = _digest(self._bytes())
        return self.__dict__["_fingerprint"]

    def problem(self) -> str | None:
        if not self.path.is_file():
            return f"no such file: {self.path}; npz:PATH needs a .npz file holding {', '.join(NPZ_ARRAYS)}"
        return None

    def read(self) -> RawData:
        data = self._bytes()
        if self.__dict__.setdefault("_fingerprint", _digest(data)) != _digest(data):
            raise self.changed_error()
        arrays = _npz_arrays(self.path, data)
        x_train = _npz_images(self.path, "x_train", arrays["x_train"])
        x_test = _npz_images(self.path, "x_test", arrays["x_test"])
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(
                f"{self.path}: x_train images are {tuple(x_train.shape[1:])} (C, H, W) but x_test ones are "
                f"{tuple(x_test.shape[1:])}; both must have one shape"
            )
        parts = [
            _npz_labels(self.path, key, arrays[key], len(x), x_key)
            for key, x, x_key in (("y_train", x_train, "x_train"), ("y_test", x_test, "x_test"))
        ]
        (y_train, y_test), _ = check_labels(parts, self.classes, data=self.name)
        return RawData(x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test), str(self.path))

    def make_info(self, raw: RawData) -> DatasetInfo:
        mean, std = channel_stats(raw.x_train)
        shape = tuple(int(d) for d in raw.x_train.shape[1:])
        classes = self.classes or int(max(int(raw.y_train.max()), int(raw.y_test.max()))) + 1
        return DatasetInfo(
            name=self.name,
            input_shape=shape,  # type: ignore[arg-type]
            num_classes=classes,
            mean=mean,
            std=std,
            augment=False,
            default_val_size=_default_val_size(len(raw.y_train)),
            description=(
                f"arrays from {self.path}: {classes} classes, {len(raw.y_train)} training and "
                f"{len(raw.y_test)} test, {'x'.join(map(str, shape))}"
            ),
            how_to_get=(
                f"a file {self.path} written by numpy.savez with arrays x_train, y_train, x_test, y_test "
                f"(images {NPZ_IMAGES}, uint8 or float in [0, 1]; integer labels 0..K-1)"
            ),
        )

    def _bytes(self) -> bytes:
        if not self.path.is_file():
            raise DataError(
                f"no such file: {self.path}; npz:PATH needs a .npz file holding {', '.join(NPZ_ARRAYS)}"
            )
        return _read_bytes(self.path, "file")


def _npz_arrays(path: Path, data: bytes) -> dict[str, np.ndarray]:
    expected = f"expected a numpy.savez archive with arrays {', '.join(NPZ_ARRAYS)}"
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, zipfile errors, ... for foreign files
        raise DataError(f"{path} is not a readable .npz file ({exc}); {expected}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz archive; {expected}")
    with archive:
        missing = [k for k in NPZ_ARRAYS if k not in archive.files]
        if missing:
            held = ", ".join(archive.files) or "no arrays"
            raise DataError(f"{path} lacks {', '.join(missing)} (it holds {held}); {expected}")
        arrays = {}
        for key in NPZ_ARRAYS:
            try:
                arrays[key] = archive[key]
            except Exception as exc:  # object arrays need pickle; a damaged member fails to inflate
                raise DataError(
                    f"array {key} in {path} cannot be read ({exc}); save plain numeric arrays"
                ) from None
    return arrays


def _npz_images(path: Path, key: str, a: np.ndarray) -> torch.Tensor:
    """Images of one split as (N, C, H, W), uint8 or float32 in [0, 1]."""
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    elif a.ndim != 4 or a.shape[1] not in (1, 3):
        raise DataError(f"array {key} in {path} has shape {a.shape}; expected images {NPZ_IMAGES}")
    if a.shape[0] == 0 or 0 in a.shape[2:]:
        raise DataError(f"array {key} in {path} has shape {a.shape}: it holds no images")
    if np.issubdtype(a.dtype, np.floating):
        expected = "expected float in [0, 1] or uint8 (0..255)"
        if not np.isfinite(a).all():
            raise DataError(f"array {key} in {path} holds non-finite values (NaN or infinity); {expected}")
        if float(a.min()) < 0 or float(a.max()) > 1:
            raise DataError(
                f"array {key} in {path} holds floats in {float(a.min()):g}..{float(a.max()):g}; {expected} "
                f"(divide 0..255 values by 255)"
            )
        a = a.astype(np.float32)
    elif a.dtype != np.uint8:
        raise DataError(
            f"array {key} in {path} has dtype {a.dtype}; expected uint8 (0..255) or float in [0, 1]"
        )
    return torch.from_numpy(np.ascontiguousarray(a))


def _npz_labels(path: Path, key: str, a: np.ndarray, n: int, x_key: str) -> LabelPart:
    """Labels of one split, shaped (N,), for :func:`~prunelab.data.labels.check_labels`."""
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DataError(f"array {key} in {path} has shape {a.shape}; expected integer labels shaped (N,)")
    if len(a) != n:
        raise DataError(
            f"array {key} in {path} has {len(a)} labels but {x_key} has {n} images; expected one each"
        )
    return LabelPart(f"array {key} in {path}", a)
