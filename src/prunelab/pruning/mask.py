"""Masks kept beside a plain ``nn.Module``.

A :class:`Mask` maps parameter names (``"fc1.weight"``) to boolean keep-tensors of the same shape.
The model itself stays an ordinary module with an ordinary ``state_dict``: pruned weights are stored
as exact zeros, and the trainer keeps them at zero (see :mod:`prunelab.training`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.errors import MaskError
from prunelab.io import load_tensors, save_tensors

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)


def prunable_names(model: nn.Module, include_bias: bool = False, include_norm: bool = False) -> list[str]:
    """Names of the parameters pruned by default: conv and linear weights (biases and norms if asked).

    A layer whose weight is an earlier parameter's (GPT-2's head shares the token embedding) is not
    a layer of its own: ``named_parameters`` names that tensor once, by its first name."""
    names = []
    named = set(dict(model.named_parameters()))
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, PRUNABLE_TYPES) and prefix + "weight" not in named:
            continue  # tied to a parameter named elsewhere
        if isinstance(module, PRUNABLE_TYPES):
            names.append(prefix + "weight")
            if include_bias and module.bias is not None:
                names.append(prefix + "bias")
        elif include_norm and isinstance(module, NORM_TYPES):
            names += [prefix + p for p, v in module.named_parameters(recurse=False) if v is not None]
    return names


class Mask:
    """Boolean keep-masks for some of a model's parameters (True = kept)."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self._masks: dict[str, torch.Tensor] = {}
        for name, m in masks.items():
            if not isinstance(m, torch.Tensor):
                raise MaskError(f"mask entry {name!r} is a {type(m).__name__}, not a tensor")
            if m.dtype != torch.bool:
                values = torch.unique(m)
                if not bool(((values == 0) | (values == 1)).all()):
                    raise MaskError(f"mask entry {name!r} holds values other than 0 and 1")
                m = m != 0
            self._masks[name] = m

    # construction ---------------------------------------------------------------------------
    @classmethod
    def ones(cls, model: nn.Module, include_bias: bool = False, include_norm: bool = False) -> Mask:
        """A dense mask over the model's prunable parameters."""
        params = dict(model.named_parameters())
        names = prunable_names(model, include_bias, include_norm)
        return cls({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})

    @classmethod
    def from_model_zeros(cls, model: nn.Module, include_bias: bool = False) -> Mask:
        """The mask implied by a model's exact zeros (what a masked checkpoint carries)."""
        params = dict(model.named_parameters())
        return cls({n: params[n].detach() != 0 for n in prunable_names(model, include_bias)})

    def and_nonzero(self, model: nn.Module, names: Iterable[str]) -> Mask:
        """This mask (on the CPU) with the exact zeros of the parameters ``names`` pruned too: what
        a method that trains zeros into the weights (variational dropout, gradual pruning) leaves."""
        params = dict(model.named_parameters())
        chosen = set(names)
        return Mask(
            {
                n: m.cpu() & (params[n].detach().cpu() != 0) if n in chosen else m.cpu().clone()
                for n, m in self.items()
            }
        )

    # mapping protocol ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def names(self) -> list[str]:
        return list(self._masks)

    def items(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self._masks.items()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or self.names() != other.names():
            return False
        return all(torch.equal(self[n], other[n]) for n in self)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density():.4f})"

    def to(self, device: torch.device | str) -> Mask:
        return Mask({n: m.to(device) for n, m in self.items()})

    def clone(self) -> Mask:
        return Mask({n: m.clone() for n, m in self.items()})

    # counts --------------------------------------------------------------------------------
    def num_kept(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    def num_total(self) -> int:
        return int(sum(m.numel() for m in self._masks.values()))

    def density(self) -> float:
        total = self.num_total()
        return self.num_kept() / total if total else 1.0

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_density(self) -> dict[str, float]:
        return {n: float(m.float().mean()) for n, m in self.items()}

    # model interaction ---------------------------------------------------------------------
    def check_fits(self, model: nn.Module) -> None:
        """Refuse a mask whose names or shapes do not match the model, saying which."""
        params = dict(model.named_parameters())
        unknown = [n for n in self if n not in params]
        if unknown:
            sample = ", ".join(list(params)[:8])
            raise MaskError(
                f"mask names {unknown[:5]} are not parameters of the model "
                f"({type(model).__name__} has: {sample}{', ...' if len(params) > 8 else ''})"
            )
        for name, m in self.items():
            if tuple(m.shape) != tuple(params[name].shape):
                raise MaskError(
                    f"mask for {name!r} has shape {tuple(m.shape)} but the parameter has shape "
                    f"{tuple(params[name].shape)}"
                )

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights of ``model`` in place (after checking the mask fits); a
        LayerNorm whose channels the mask prunes then normalises over the kept ones
        (:mod:`prunelab.pruning.norms`)."""
        from prunelab.pruning import norms

        self.check_fits(model)
        params = dict(model.named_parameters())
        for name, m in self.items():
            params[name].mul_(m.to(params[name].device, params[name].dtype))
        norms.install(model, self)
        return model

    def shuffled(self, generator: torch.Generator | None = None) -> Mask:
        """A random mask with exactly the same number of kept weights in every tensor (a control)."""
        out = {}
        for name, m in self.items():
            keep = torch.zeros(m.numel(), dtype=torch.bool)
            keep[torch.randperm(m.numel(), generator=generator)[: int(m.sum())]] = True
            out[name] = keep.view(m.shape).to(m.device)
        return Mask(out)

    # persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        save_tensors(path, self._masks, metadata={"format": "prunelab-mask"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Mask:
        """Load a mask saved by :meth:`save`, or a torch.nn.utils.prune state dict (``*_mask`` keys)."""
        tensors = load_tensors(path)
        torch_prune = any(k.endswith("_mask") for k in tensors)
        mask = from_torch_prune(tensors)[1] if torch_prune else cls(tensors)
        if not len(mask):
            raise MaskError(
                f"{path} holds no mask entries; a mask names at least one weight (e.g. fc1.weight)"
            )
        return mask

    def to_torch_prune(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Export as torch.nn.utils.prune's state-dict form (``weight_orig`` + float ``weight_mask``)."""
        self.check_fits(model)
        state = {}
        for key, value in model.state_dict().items():
            if key in self:
                state[f"{key}_orig"] = value.clone()
                state[f"{key}_mask"] = self[key].to(value.dtype)
            else:
                state[key] = value
        return state


def from_torch_prune(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Mask]:
    """Split a torch.nn.utils.prune state dict into a plain state dict (masked weights) and a Mask."""
    plain: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("_mask"):
            name = key[: -len("_mask")]
            orig = state.get(f"{name}_orig")
            if orig is None:
                raise MaskError(f"{key!r} has no matching {name + '_orig'!r} entry")
            if tuple(orig.shape) != tuple(value.shape):
                raise MaskError(
                    f"{key!r} has shape {tuple(value.shape)} but {name}_orig has {tuple(orig.shape)}"
                )
            masks[name] = value != 0
            plain[name] = orig * value
        elif not key.endswith("_orig"):
            plain[key] = value
    return plain, Mask(masks)


@dataclass(frozen=True)
class LayerSparsity:
    """One row of a per-layer sparsity table (Ou Yang & Xu, Table I)."""

    layer: str
    shape: tuple[int, ...]
    params: int  # all parameters of the layer (weights and biases)
    prunable: int  # parameters the mask covers
    kept: int  # non-zero parameters after masking, over all of the layer's parameters

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.params if self.params else 0.0


@dataclass(frozen=True)
class SparsityReport:
    layers: tuple[LayerSparsity, ...]
    total_params: int
    total_kept: int
    prunable_params: int
    prunable_kept: int

    @property
    def sparsity(self) -> float:
        """Over all of the model's parameters (biases, norms included)."""
        return 1.0 - self.total_kept / self.total_params if self.total_params else 0.0

    @property
    def prunable_sparsity(self) -> float:
        """Over the prunable parameters only."""
        return 1.0 - self.prunable_kept / self.prunable_params if self.prunable_params else 0.0


def sparsity_report(model: nn.Module, mask: Mask | None = None) -> SparsityReport:
    """Per-layer and overall sparsity, counting all parameters and prunable ones separately."""
    mask = mask if mask is not None else Mask.ones(model)
    mask.check_fits(model)
    rows: list[LayerSparsity] = []
    total = kept_total = 0
    for mod_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        params = kept = prunable = 0
        for pname, p in own:
            full = f"{mod_name}.{pname}" if mod_name else pname
            params += p.numel()
            if full in mask:
                prunable += p.numel()
                kept += int((mask[full].to(p.device) & (p.detach() != 0)).sum())
            else:
                kept += p.numel()
        weight = getattr(module, "weight", None)
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else tuple(own[0][1].shape)
        rows.append(LayerSparsity(mod_name or "(root)", shape, params, prunable, kept))
        total += params
        kept_total += kept
    prunable_params = mask.num_total()
    params = dict(model.named_parameters())
    prunable_kept = sum(
        int((m.to(params[n].device) & (params[n].detach() != 0)).sum()) for n, m in mask.items()
    )
    return SparsityReport(tuple(rows), total, kept_total, prunable_params, prunable_kept)
