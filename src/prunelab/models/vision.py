"""Importing the optional model libraries (torchvision, timm, transformers) with one clear error when absent."""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType

from prunelab.errors import SpecError

#: Operators whose fake kernels torchvision registers at import even when its compiled library did
#: not load. Their schemas as torchvision declares them.
_UNCONDITIONAL_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARIES: list = []  # keeps the schema definitions alive


def _define_missing_ops() -> None:
    """Declare torchvision's NMS operators when its compiled library could not be loaded.

    A torchvision wheel built against another torch build (a CUDA wheel beside a CPU torch) fails to
    load its C++ operators; torchvision then still registers fake kernels for ``nms``/``qnms`` and its
    import fails with "operator torchvision::nms does not exist". Declaring the two schemas lets the
    pure-Python parts (every model, weights and transforms) import; the detection operators
    themselves still raise torchvision's own error when called, as they would without this.
    """
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _UNCONDITIONAL_OPS.values():
        with contextlib.suppress(RuntimeError):  # already declared
            lib.define(schema)
    _LIBRARIES.append(lib)


def _install_hint(package: str, extra: str) -> str:
    return (
        f"`pip install 'prunelab[{extra}]'` (it pins the {package} release that matches the installed torch)"
    )


def import_torchvision() -> ModuleType:
    """torchvision, imported; a SpecError saying how to install it when it is not installed."""
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError:
        raise SpecError(
            f"torchvision models need torchvision: {_install_hint('torchvision', 'vision')}"
        ) from None
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        import sys

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _define_missing_ops()
        return importlib.import_module("torchvision")


def import_timm() -> ModuleType:
    """timm, imported (after torchvision, which it needs); a SpecError when it is not installed."""
    import_torchvision()
    try:
        return importlib.import_module("timm")
    except ModuleNotFoundError:
        raise SpecError(f"timm models need timm: {_install_hint('timm', 'timm')}") from None


def import_transformers() -> ModuleType:
    """transformers, imported (after torchvision where it is installed, which transformers imports
    itself); a SpecError naming the extra when it is not installed."""
    with contextlib.suppress(SpecError):
        import_torchvision()
    try:
        t = importlib.import_module("transformers")
    except ModuleNotFoundError:
        raise SpecError(
            f"transformer models need transformers: {_install_hint('transformers', 'nlp')}"
        ) from None
    # prunelab says what it loads in one line; transformers' progress bars and config notes are noise
    t.logging.set_verbosity_error()
    t.logging.disable_progress_bar()
    return t
