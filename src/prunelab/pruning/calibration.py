"""What a layer sees on calibration data, and layers refitted to it (``--reconstruct``): the shared
pieces of ThiNet (Luo et al. 2017) and LASSO channel selection (He et al. 2017).

For a layer ``y = W x + b`` (a conv is this at each output position, ``x`` its input patch) the
collector samples output entries: for a conv, ``positions`` random output positions of each
calibration image (ThiNet samples 10 per image), for a linear layer every example (every token of
a sequence). At each it keeps the input patch, split by input channel: ``patches`` of shape
``(samples, channels, kernel)`` (kernel = 1 for a linear layer). A channel's contribution to output
``o`` is ``W[o, c] . patch[c]``, and ``y = sum over c of the contributions + b``. Samples are capped
(``max_samples``), so memory stays bounded whatever the data.

:func:`least_squares` refits a layer's kept weights so that its outputs on the new (pruned)
inputs match its outputs before pruning: ``min ||X W'^T - (Y - b)||^2 + ridge ||W'||^2`` over the
kept entries, row groups sharing a kept pattern solved together in closed form.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.mask import Mask

MAX_SAMPLES = 4096


@dataclass(frozen=True)
class LayerSamples:
    """Input patches of one layer at sampled output entries: ``(samples, channels, kernel)``."""

    patches: torch.Tensor

    def contributions(self, weight: torch.Tensor) -> torch.Tensor:
        """``(samples, outputs, channels)``: channel ``c``'s part of output ``o`` at each sample."""
        w = weight.reshape(weight.shape[0], weight.shape[1], -1).to(self.patches.dtype)
        return torch.einsum("sck,ock->soc", self.patches, w)

    def features(self) -> torch.Tensor:
        """``(samples, channels * kernel)``: the patches as a regression's design matrix."""
        return self.patches.reshape(self.patches.shape[0], -1)


def check_layer(module: nn.Module, name: str, method: str) -> None:
    """Refuse, naming it, a layer whose inputs these methods cannot take apart."""
    if isinstance(module, nn.Linear):
        return
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        return
    what = (
        f"a grouped conv (groups={module.groups})"
        if getattr(module, "groups", 1) != 1
        else type(module).__name__
    )
    raise SpecError(
        f"method {method!r} reads each layer's input channels from calibration data and handles "
        f"Linear and ungrouped Conv2d layers; {name} is {what}: exclude it (--exclude {name})"
    )


def _patches(module: nn.Module, x: torch.Tensor, positions: int, generator: torch.Generator) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1], 1).double()
    cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (N, C*k, L)
    n, _, length = cols.shape
    pick = torch.randint(0, length, (n, min(positions, length)), generator=generator)
    chosen = cols.gather(2, pick[:, None, :].expand(n, cols.shape[1], pick.shape[1]))  # (N, C*k, P)
    return (
        chosen.permute(0, 2, 1).reshape(-1, module.in_channels, cols.shape[1] // module.in_channels).double()
    )


@torch.no_grad()
def collect(
    models: Sequence[nn.Module],
    layer: str,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    positions: int = 10,
    seed: int = 0,
    max_samples: int = MAX_SAMPLES,
) -> list[LayerSamples]:
    """The input patches of module ``layer`` in each of ``models`` (same architecture) on the same
    calibration batches and the same sampled positions, in eval mode."""
    seen: list[list[torch.Tensor]] = [[] for _ in models]
    handles = []
    for i, model in enumerate(models):
        module = model.get_submodule(layer)

        def hook(m, args, i=i):
            seen[i].append(args[0].detach())

        handles.append(module.register_forward_pre_hook(hook))
    modes = [m.training for m in models]
    try:
        for model in models:
            model.eval()
        for x, _ in batches:
            for model in models:
                model(x)
    finally:
        for h in handles:
            h.remove()
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
    out = []
    for model, inputs in zip(models, seen, strict=True):
        g = torch.Generator().manual_seed(seed)  # the same positions in every model
        module = model.get_submodule(layer)
        patches = torch.cat([_patches(module, x, positions, g) for x in inputs])
        out.append(patches)
    keep = torch.randperm(len(out[0]), generator=torch.Generator().manual_seed(seed + 1))[:max_samples]
    return [LayerSamples(p[keep.sort().values]) for p in out]


def least_squares(
    weight: torch.Tensor, keep: torch.Tensor, new: LayerSamples, target: torch.Tensor, ridge: float = 1e-6
) -> torch.Tensor:
    """The weight (its shape, zeros outside ``keep``) whose outputs on ``new`` best match ``target``
    ``(samples, outputs)`` (the layer's outputs before pruning, minus its bias), in closed form:
    ``W_rows = (X^T X + r I)^{-1} X^T Y`` per group of rows sharing a kept pattern, with ``r`` =
    ``ridge`` times the mean diagonal of ``X^T X``."""
    x = new.features()
    flat_keep = keep.reshape(keep.shape[0], -1)
    out = torch.zeros(flat_keep.shape, dtype=torch.float64)
    patterns, group = torch.unique(flat_keep, dim=0, return_inverse=True)
    for g, pattern in enumerate(patterns):
        rows = (group == g).nonzero().flatten()
        cols = pattern.nonzero().flatten()
        if len(cols) == 0:
            continue
        a = x[:, cols]
        gram = a.T @ a
        gram += torch.eye(len(cols), dtype=gram.dtype) * (
            ridge * float(gram.diagonal().mean().clamp_min(1e-30))
        )
        solution = torch.linalg.solve(gram, a.T @ target[:, rows].double())  # (cols, rows)
        out[rows[:, None], cols[None, :]] = solution.T
    return out.reshape(weight.shape).to(weight.dtype)


def layer_output(samples: LayerSamples, weight: torch.Tensor) -> torch.Tensor:
    """``(samples, outputs)``: the layer's outputs without bias at the sampled entries."""
    return samples.features() @ weight.reshape(weight.shape[0], -1).double().T


def reconstruct(
    model: nn.Module,
    before: Mask | None,
    after: Mask,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    positions: int = 10,
    seed: int = 0,
    ridge: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """He et al.'s reconstruction: every layer whose mask changed from ``before`` (None: dense) to
    ``after`` gets its kept weights refitted by :func:`least_squares`, so its outputs on the pruned
    network's inputs match the unpruned network's, in module order (a later layer sees the earlier
    layers' refitted outputs). Returns the new weights by parameter name; ``model`` is untouched."""
    old = copy.deepcopy(model).eval()
    if before is not None:
        before.apply(old)
    new = copy.deepcopy(old)
    after.apply(new)
    params = dict(new.named_parameters())
    old_params = dict(old.named_parameters())
    out = {}
    for name, keep in after.items():
        if before is not None and name in before and torch.equal(before[name], keep):
            continue
        if before is None and bool(keep.all()):
            continue
        layer = name.rpartition(".")[0]
        check_layer(new.get_submodule(layer), layer, "reconstruction")
        was, now = collect([old, new], layer, batches, positions=positions, seed=seed)
        target = layer_output(was, old_params[name].detach())
        weight = least_squares(params[name].detach(), keep, now, target, ridge)
        with torch.no_grad():
            params[name].copy_(weight)
        out[name] = weight
    return out
