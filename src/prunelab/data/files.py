"""Base class of datasets read from files: locating, the 'not found' error and an in-process cache."""

from __future__ import annotations

import functools
from abc import abstractmethod
from pathlib import Path

from prunelab.data.base import DatasetLoader, RawData
from prunelab.data.locate import find_data, missing_message, short_how
from prunelab.errors import DataError


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
