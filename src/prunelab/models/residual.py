"""What a residual block is, for the methods that remove whole blocks and the compaction that drops them.

A residual block is a module with a ``shortcut`` (prunelab's ResNets) or ``downsample`` attribute
(torchvision's) and BatchNorms named ``bn1``, ``bn2``, ...; its residual branch is its own
``convK``/``bnK`` children.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

__all__ = ["ResidualBlock", "residual_blocks", "shortcut_attribute"]

_NUMBERED = re.compile(r"^(conv|bn)(\d+)$")


@dataclass(frozen=True)
class ResidualBlock:
    """A block's name, the parameters of its residual branch, and that branch's last BatchNorm."""

    name: str
    params: tuple[str, ...]
    last_norm: str


def shortcut_attribute(module: nn.Module) -> str | None:
    """The attribute that holds a residual block's shortcut, ``shortcut`` (prunelab's ResNets) or
    ``downsample`` (torchvision's; ``None`` there is the identity), or ``None`` for other modules."""
    return next((a for a in ("shortcut", "downsample") if hasattr(module, a)), None)


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """The residual blocks of ``model`` in module order (see the module docstring for what counts)."""
    out = []
    for name, module in model.named_modules():
        if shortcut_attribute(module) is None:
            continue
        numbered = {n: m for n, m in module.named_children() if _NUMBERED.match(n)}
        norms = sorted(
            (
                n
                for n, m in numbered.items()
                if n.startswith("bn") and isinstance(m, nn.BatchNorm2d) and m.affine
            ),
            key=lambda n: int(n[2:]),
        )
        if not norms:
            continue
        prefix = f"{name}." if name else ""
        params = tuple(
            f"{prefix}{child}.{p}"
            for child, m in numbered.items()
            for p, v in m.named_parameters(recurse=False)
            if v is not None
        )
        out.append(ResidualBlock(name, params, f"{prefix}{norms[-1]}"))
    return out
