"""Starting weights: a file (safetensors, or a torch checkpoint read with ``weights_only=True``) or a
model source's pretrained weights (``torchvision:DEFAULT``, ``torchvision:IMAGENET1K_V1``,
``timm:DEFAULT``), loaded into a freshly built model.

Checkpoints in the common wrappers (``{"state_dict": ...}``, ``{"model": ...}``, a ``module.``
prefix from ``DataParallel``) are unwrapped. Weights that do not fit fail with the missing,
unexpected and mis-shaped names; a classifier head of another size is expected (the head is
replaced to fit the dataset) and reported, not an error.
"""

from __future__ import annotations

import os
import socket
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from prunelab.errors import SpecError
from prunelab.io import content_hash, user_path

WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")
PREFIXES = ("module.", "_orig_mod.", "model.")
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Weights:
    """What ``--weights`` names: a file, or the pretrained weights ``name`` of a model source."""

    text: str
    prefix: str | None = None  # "torchvision", "timm" for pretrained weights
    name: str | None = None

    @property
    def path(self) -> Path | None:
        return None if self.prefix else user_path(self.text)


def parse_weights(text: str, source_prefix: str | None) -> Weights:
    """Read ``--weights``: ``PREFIX:NAME`` where PREFIX is the model source's (``torchvision``,
    ``timm``), else a file path."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"weights must be a file path or SOURCE:NAME, got {text!r}")
    from prunelab.models.source import SOURCES  # the source module imports this one

    prefixes = {getattr(cls, "prefix", None) for _, cls in SOURCES.items()} - {None}
    prefix, sep, name = text.partition(":")
    if sep and prefix in prefixes:
        if prefix != source_prefix:
            raise SpecError(f"weights {text!r} are {prefix} weights, which only a {prefix}:NAME model takes")
        return Weights(text, prefix, name.strip() or "DEFAULT")
    return Weights(text)


def file_hash(path: Path) -> str:
    """The content hash of a weights file (:func:`prunelab.io.content_hash`)."""
    try:
        return content_hash(path)
    except OSError as exc:
        raise SpecError(f"weights file {path} cannot be read ({exc.strerror or exc})") from None


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped. Never executes code from the file."""
    if not path.is_file():
        raise SpecError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return unwrap_state(_safetensors(path), path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe files
        try:
            return unwrap_state(_safetensors(path), path)  # a safetensors file under another suffix
        except SpecError:
            pass
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(
            f"weights file {path} cannot be read safely as tensors (safetensors, or a torch checkpoint "
            f"of plain tensors): {first[:300]}"
        ) from None
    return unwrap_state(obj, path)


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpecError(f"weights file {path} is not a readable safetensors file ({exc})") from None


def unwrap_state(obj: Any, where: object) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a checkpoint: wrappers opened, DataParallel prefixes removed."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not _all_tensors(obj):
            inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise SpecError(
            f"weights in {where} are not a mapping of names to tensors (found {keys}); expected a "
            f"state_dict, or one inside {{'state_dict': ...}} or {{'model': ...}}"
        )
    state = {str(k): v for k, v in obj.items()}
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _all_tensors(obj: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


def head_names(model: nn.Module) -> set[str]:
    """The state entries of the model's classifier head (its ``output_layer``)."""
    head = getattr(model, "output_layer", None)
    return {f"{head}.weight", f"{head}.bias"} if isinstance(head, str) else set()


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> list[str]:
    """Copy ``state`` into ``model``; returns notes (a replaced head). A mismatch elsewhere raises a
    SpecError listing the missing, unexpected and mis-shaped names with their shapes."""
    own = model.state_dict()
    head = head_names(model)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    replaced = sorted({k for k in [*missing, *misshaped] if k in head})
    head_unexpected = [k for k in unexpected if k in head]
    missing = [k for k in missing if k not in head]
    misshaped = [k for k in misshaped if k not in head]
    unexpected = [k for k in unexpected if k not in head_unexpected]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append("missing: " + _listing(missing, own))
        if unexpected:
            parts.append("unexpected: " + _listing(unexpected, state))
        if misshaped:
            parts.append(
                "mis-shaped: "
                + ", ".join(
                    f"{k} {tuple(state[k].shape)} where the model has {tuple(own[k].shape)}"
                    for k in misshaped[:8]
                )
                + (f" and {len(misshaped) - 8} more" if len(misshaped) > 8 else "")
            )
        raise SpecError(f"weights {where} do not fit the model: " + "; ".join(parts))
    with torch.no_grad():
        for k, tensor in own.items():
            if k in state and k not in replaced:
                tensor.copy_(state[k].to(tensor.dtype))
    notes = [f"loaded weights {where}"]
    if replaced:
        shapes = ", ".join(f"{k} {tuple(state[k].shape) if k in state else '(absent)'}" for k in replaced)
        notes.append(
            f"the classifier head is new ({shapes} in the weights do not fit {len(replaced)} head entries)"
        )
    return notes


def _listing(keys: list[str], shapes: Mapping[str, torch.Tensor]) -> str:
    text = ", ".join(f"{k} {tuple(shapes[k].shape)}" for k in keys[:8])
    return text + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def hub_dir() -> Path:
    """torch's own cache of downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_download(url: str, what: str) -> dict[str, torch.Tensor]:
    """A checkpoint from torch's hub cache, downloaded there first when it is missing and the
    network is reachable; offline with nothing cached, one error naming the file and the folder."""
    file = hub_dir() / os.path.basename(url)
    if not file.is_file():
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                url, str(file), hash_prefix=_hash_prefix(file.name), progress=False
            )
        except (TimeoutError, urllib.error.URLError, OSError, RuntimeError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise SpecError(
                f"{what} are not cached and could not be downloaded ({reason}); put {file.name} "
                f"(from {url}) in {file.parent} (set $TORCH_HOME to use another folder)"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    return read_state(file)


def _hash_prefix(name: str) -> str | None:
    """torchvision names its files ``arch-<sha256 prefix>.pth``; the prefix checks the download."""
    stem = name.rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if len(tail) >= 6 and all(c in "0123456789abcdef" for c in tail) else None
