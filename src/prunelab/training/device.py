"""Device selection."""

from __future__ import annotations

import torch

from prunelab.errors import SpecError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without a GPU is refused clearly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            "--device cuda was asked for, but no CUDA GPU is available here; use --device cpu or auto"
        )
    if name not in {"cpu", "cuda"}:
        raise SpecError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)
