"""Unpickling restricted to plain data, for CIFAR-10's python batches.

``pickle.load`` runs whatever callables the file names, so a doctored "data_batch_1" could run
code; this unpickler resolves only numpy's array reconstruction and refuses everything else.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.errors import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals needed to rebuild numpy arrays; any other global is refused."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.source}: "
                "only plain arrays, lists, dicts, bytes and numbers are accepted"
            ) from None


def safe_unpickle(path: Path) -> Any:
    """Load a pickle of plain data (numpy arrays included) from ``path``, never running code from it."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # pickle raises many types for a truncated or foreign file
        raise DataError(
            f"{path} is not a readable pickle ({type(exc).__name__}: {exc}); it may be truncated"
        ) from None
