"""Base class of datasets that need no files: bundled with a library or generated in code."""

from __future__ import annotations

import functools
from abc import abstractmethod
from pathlib import Path

from prunelab.data.base import DatasetLoader, RawData


class BuiltinLoader(DatasetLoader):
    """Always available offline; ``data_dir`` is ignored."""

    #: Shown by ``prunelab data list`` in place of a path.
    origin: str = "built in"

    @abstractmethod
    def generate(self) -> RawData:
        """Build the arrays (deterministically)."""

    def locate(self, data_dir: Path | None) -> Path | None:
        return None

    def load_raw(self, data_dir: Path | None) -> RawData:
        return _generate_cached(self)

    def status(self, data_dir: Path | None) -> tuple[bool, str]:
        return True, self.origin


@functools.cache
def _generate_cached(loader: BuiltinLoader) -> RawData:
    return loader.generate()
