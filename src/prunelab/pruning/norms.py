"""Masked normalisation: a LayerNorm or RMSNorm whose channels a mask prunes normalises over the rest.

A pruned channel's scale and shift are masked to 0, so a BatchNorm (per-channel statistics) or a
GroupNorm that loses whole groups computes on the kept channels exactly what the compacted model
computes. A LayerNorm does not: its mean and variance run over every channel, the pruned ones
included. :func:`install` (which :meth:`prunelab.Mask.apply` calls) gives each LayerNorm/RMSNorm
whose scale the mask prunes a forward hook computing the statistics over the kept channels only,
so the masked model and the compacted one (a narrower LayerNorm) compute the same function. The
pruned channels output 0. The hook is part of the masked model, not of its ``state_dict``.

A norm's channel dimension is the last one for ``nn.LayerNorm``/``nn.RMSNorm`` and for subclasses
that normalise it, dimension 1 for channels-first ones (torchvision's and timm's ``LayerNorm2d``):
found by running the module once on a small random input (:func:`channel_dim`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.pruning.mask import Mask

_HANDLE = "_prunelab_masked_norm"
_DIMS: dict[type, int | None] = {}
_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def _reference(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``module`` computes on ``x`` (channels last), by its type's definition."""
    shape = tuple(module.normalized_shape)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, shape, module.weight, module.bias, module.eps)
    eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * module.weight


@torch.no_grad()
def channel_dim(module: nn.Module) -> int | None:
    """-1 or 1: the dimension ``module`` normalises; None for norms over several dimensions,
    without a scale, or that normalise something else."""
    if not isinstance(module, _NORMS) or len(module.normalized_shape) != 1 or module.weight is None:
        return None
    if type(module) in _NORMS:
        return -1
    if type(module) not in _DIMS:
        size = module.normalized_shape[0]
        generator = torch.Generator().manual_seed(0)
        found = None
        for dim, shape in ((-1, (2, 3, size)), (1, (2, size, 3, 3))):
            x = torch.randn(shape, generator=generator, dtype=torch.float64)
            probe = _double(module)
            try:
                out = probe(x)
            except Exception:
                continue
            want = _reference(probe, x.movedim(dim, -1)).movedim(-1, dim)
            if out.shape == want.shape and torch.allclose(out, want, atol=1e-9):
                found = dim
                break
        _DIMS[type(module)] = found
    return _DIMS[type(module)]


def _double(module: nn.Module) -> nn.Module:
    import copy

    probe = copy.deepcopy(module).double()
    for h in list(probe._forward_hooks):
        del probe._forward_hooks[h]
    return probe


def supports(module: nn.Module) -> bool:
    """Whether a mask may prune channels of ``module`` (a one-dimensional LayerNorm/RMSNorm with a
    scale)."""
    return channel_dim(module) is not None


def install(model: nn.Module, mask: Mask) -> None:
    """Give every LayerNorm/RMSNorm of ``model`` whose scale ``mask`` prunes the masked form (see
    the module docstring); norms the mask keeps whole lose an earlier one."""
    for name, module in model.named_modules():
        if not isinstance(module, _NORMS):
            continue
        old = getattr(module, _HANDLE, None)
        if old is not None:
            old.remove()
            delattr(module, _HANDLE)
        key = f"{name}.weight" if name else "weight"
        if key not in mask or bool(mask[key].all()) or not supports(module):
            continue
        keep = mask[key].nonzero().flatten()
        setattr(module, _HANDLE, module.register_forward_hook(_Masked(keep, channel_dim(module))))


class _Masked:
    """The forward hook: the norm's output recomputed over the kept channels (0 elsewhere)."""

    def __init__(self, keep: torch.Tensor, dim: int) -> None:
        self.keep, self.dim = keep, dim

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0].movedim(self.dim, -1)
        keep = self.keep.to(x.device)
        sub = x.index_select(-1, keep)
        weight = module.weight.index_select(0, keep)
        if isinstance(module, nn.LayerNorm):
            bias = module.bias.index_select(0, keep) if module.bias is not None else None
            y = F.layer_norm(sub, (len(keep),), weight, bias, module.eps)
        else:
            eps = module.eps if module.eps is not None else torch.finfo(sub.dtype).eps
            y = sub * torch.rsqrt(sub.pow(2).mean(-1, keepdim=True) + eps) * weight
        full = x.new_zeros(x.shape).index_copy(-1, keep, y.to(x.dtype))
        return full.movedim(-1, self.dim)
