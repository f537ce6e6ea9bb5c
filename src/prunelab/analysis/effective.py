"""Effective sparsity (Paganini & Forde 2020, appendix B) and neuron sparsity (Reddy, Vaddiraju & Datta).

A kept weight is *effectively* pruned when no input-to-output path passes through it: its input
unit receives nothing from the input, or its output unit reaches no output. Such weights get no
gradient and can be zeroed without changing the function (up to constants folded into biases).

How paths are found: a float64 copy of the model gets weights ``mask / fan_in`` (all >= 0), zero
biases, normalisation layers as identity and max-pooling as average pooling (a structural,
data-independent version of the same connections), and runs one all-ones input. An activation is
then > 0 exactly where some path from the input arrives, and the gradient of the summed output
with respect to a kept weight is > 0 exactly where a path through it reaches the output. Because
it runs the model's own ``forward``, any graph works, residual networks included: a unit fed by a
shortcut stays alive. Connectivity is resolved per position, so conv layers are treated at the
level of channels at each spatial location (which only differs from a pure channel-level count
where padding means a kernel tap never sees real input). Biases never count as paths.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from prunelab.analysis.runs import (
    RunRef,
    levels_of,
    resolve,
    seeds_of,
)
from prunelab.errors import PrunelabError
from prunelab.pruning import Mask
from prunelab.pruning.mask import PRUNABLE_TYPES, prunable_names

_MAX_POOLS = {
    F.max_pool1d: F.avg_pool1d,
    F.max_pool2d: F.avg_pool2d,
    F.max_pool3d: F.avg_pool3d,
    F.adaptive_max_pool1d: F.adaptive_avg_pool1d,
    F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
    F.adaptive_max_pool3d: F.adaptive_avg_pool3d,
}
_NORMS = {F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm}


def _avg_pool(
    avg, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    return avg(input, kernel_size, stride, padding, ceil_mode)


class _Structural(TorchFunctionMode):
    """Max-pooling -> average pooling and normalisation -> identity, so connectivity is data-free."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NORMS:
            return args[0] if args else kwargs["input"]
        if func in _MAX_POOLS:
            avg = _MAX_POOLS[func]
            if "adaptive" in avg.__name__:
                return avg(args[0], *args[1:2], **{k: v for k, v in kwargs.items() if k == "output_size"})
            return _avg_pool(avg, *args, **kwargs)
        return func(*args, **kwargs)


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(input_shape)
    first = next((m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise PrunelabError(
        "give input_shape (e.g. (1, 28, 28)): it cannot be inferred for a model starting with a conv"
    )


@torch.no_grad()
def _structural_copy(
    model: nn.Module, keep: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    net = copy.deepcopy(model).double().eval()
    params = dict(net.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
        p.zero_()  # biases and norm affine parameters play no part
    for name, k in keep.items():
        p = params[name]
        fan_in = max(1, p[0].numel())
        p.copy_(k.to(p.device, torch.float64) / fan_in)  # keeps activations near 1 at any depth
        p.requires_grad_(True)
    return net, {n: params[n] for n in keep}


def effective_mask(
    model: nn.Module, mask: Mask | None = None, input_shape: Sequence[int] | None = None
) -> Mask:
    """The kept weights that lie on some input-to-output path (a sub-mask of ``mask``).

    ``mask`` defaults to the model's non-zero weights; prunable layers outside ``mask`` count as
    kept where non-zero. ``input_shape`` excludes the batch dimension, e.g. ``(1, 28, 28)``.
    """
    mask = mask if mask is not None else Mask.from_model_zeros(model)
    mask.check_fits(model)
    current = dict(model.named_parameters())
    keep = {n: (mask[n].bool() if n in mask else current[n].detach() != 0) for n in prunable_names(model)}
    net, weights = _structural_copy(model, keep)
    device = next(iter(weights.values())).device
    x = torch.ones(1, *_input_shape(model, input_shape), dtype=torch.float64, device=device)
    with torch.enable_grad():
        with _Structural():
            out = net(x)
        grads = torch.autograd.grad(out.sum(), list(weights.values()), allow_unused=True)
    alive = {
        n: keep[n].cpu() & (g.cpu() > 0 if g is not None else torch.zeros_like(keep[n], device="cpu"))
        for n, g in zip(weights, grads, strict=True)
    }
    return Mask({n: alive.get(n, m.cpu()) for n, m in mask.items()})  # other entries (biases) as they are


def effective_sparsity(
    model: nn.Module, mask: Mask | None = None, input_shape: Sequence[int] | None = None
) -> list[dict]:
    """Per layer and overall (last row): weights, explicitly kept, effectively kept, both sparsities."""
    mask = mask if mask is not None else Mask.from_model_zeros(model)
    eff = effective_mask(model, mask, input_shape)
    rows = []
    for name, m in mask.items():
        rows.append(
            {
                "layer": name.removesuffix(".weight"),
                "weights": m.numel(),
                "kept": int(m.sum()),
                "effective_kept": int(eff[name].sum()),
            }
        )
    rows.append(
        {"layer": "overall", **{k: sum(r[k] for r in rows) for k in ("weights", "kept", "effective_kept")}}
    )
    for r in rows:
        r["sparsity"] = 1 - r["kept"] / r["weights"] if r["weights"] else 0.0
        r["effective_sparsity"] = 1 - r["effective_kept"] / r["weights"] if r["weights"] else 0.0
    return rows


def unit_densities(mask: Mask) -> dict[str, dict[str, torch.Tensor]]:
    """Per layer: the kept fraction of each output unit's incoming weights (``"in"``, one per
    neuron/filter) and of each input unit's outgoing weights in this layer (``"out"``)."""
    out = {}
    for name, m in mask.items():
        if m.dim() < 2:  # biases and norms have no units of their own
            continue
        f = m.float()
        reduce_in = tuple(d for d in range(f.dim()) if d != 0)
        reduce_out = tuple(d for d in range(f.dim()) if d != 1)
        out[name.removesuffix(".weight")] = {"in": f.mean(dim=reduce_in), "out": f.mean(dim=reduce_out)}
    return out


def neuron_sparsity(mask: Mask) -> list[dict]:
    """Per layer: fraction of units (neurons, or filters for conv) with every incoming weight pruned,
    fraction of the layer's input units with every outgoing weight (in this layer) pruned, and the
    quartiles of the per-unit incoming density (Reddy, Vaddiraju & Datta's neuron-wise sparsity)."""
    rows = []
    for layer, d in unit_densities(mask).items():
        q = torch.quantile(d["in"], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
        rows.append(
            {
                "layer": layer,
                "units": d["in"].numel(),
                "dead_in": float((d["in"] == 0).float().mean()),
                "inputs": d["out"].numel(),
                "dead_out": float((d["out"] == 0).float().mean()),
                **{
                    f"unit_density_{p}": float(v)
                    for p, v in zip(("min", "q1", "median", "q3", "max"), q, strict=True)
                },
            }
        )
    return rows


def effective_levels(
    run: RunRef, *, root: str | Path | None = None, seeds: Sequence[int] | None = None
) -> list[dict]:
    """Explicit and effective density of every finished level, per seed, with its test accuracy.

    Rows: level, seed, density, effective_density, test_acc (for accuracy-vs-sparsity plots).
    """
    exp = resolve(run, root)
    model, shape = exp.build_model(), exp.spec.data_info.input_shape
    rows = []
    for seed in seeds_of(exp, seeds):
        for level in levels_of(exp, seed):
            mask = exp.mask(seed, level)
            model.load_state_dict(exp.weights(seed, level))
            r = effective_sparsity(model, mask, shape)[-1]
            rows.append(
                {
                    "level": level,
                    "seed": seed,
                    "density": 1 - r["sparsity"],
                    "effective_density": 1 - r["effective_sparsity"],
                    "test_acc": exp.levels[seed][level].final.test_acc,
                }
            )
    return rows
