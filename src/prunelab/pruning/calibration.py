"""ThiNet (Luo et al. 2017) and LASSO channel selection (He et al. 2017): input channels scored on
calibration data, and layers refitted to it (``--reconstruct``).

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
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.context import PruneContext
from prunelab.pruning.mask import Mask
from prunelab.pruning.methods import Method, add_method
from prunelab.pruning.scorers import SCORERS, Scorer, Scores, _batches

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


# ThiNet and LASSO: input channels scored on calibration data ------------------------------------
def _channel_scores(
    model: nn.Module, names: Sequence[str], per_channel: Mapping[str, torch.Tensor]
) -> Scores:
    """Every weight of input channel ``c`` carries channel ``c``'s score (the ``linf`` unit norm gives it back)."""
    params = dict(model.named_parameters())
    out = {}
    for n in names:
        w = params[n]
        shape = (1, -1) + (1,) * (w.dim() - 2)
        out[n] = per_channel[n].to(w.device, torch.float64).reshape(shape).expand(w.shape)
    return out


class _Calibrated(Scorer):
    """Scorers that take each layer's input channels apart on calibration data."""

    needs = frozenset({"batches"})
    structures = ("structured-input",)
    unit = "each layer's input channels"
    layerwise = True
    calibration = "calibration_images"

    def check(self, model, names, context) -> None:
        for n in names:
            layer = n.rpartition(".")[0]
            check_layer(model.get_submodule(layer), layer, self.name)

    def scores(self, model, mask, names, context, generator) -> Scores:
        """Each layer's input patches in the masked model (copied once per call), taken apart into
        every input channel's contribution to each output, scored by :meth:`channel_scores`."""
        masked = _masked_copy(model, mask)
        params = dict(masked.named_parameters())
        per_channel = {}
        for n in names:
            (samples,) = collect(
                [masked], n.rpartition(".")[0], _batches(context), positions=context.positions
            )
            alive = mask[n].reshape(mask[n].shape[0], mask[n].shape[1], -1).any(2).any(0)
            parts = samples.contributions(params[n].detach())  # (S, O, C)
            per_channel[n] = self.channel_scores(parts, alive, n, context)
        return _channel_scores(model, names, per_channel)

    @abstractmethod
    def channel_scores(
        self, parts: torch.Tensor, alive: torch.Tensor, name: str, context: PruneContext
    ) -> torch.Tensor:
        """Per input channel of layer ``name``, from ``parts`` (samples, outputs, channels) and the
        channels still ``alive``: higher is kept longer."""


def _masked_copy(model: nn.Module, mask: Mask) -> nn.Module:
    net = copy.deepcopy(model)
    mask.apply(net)
    return net


@SCORERS.register("thinet")
class ThiNet(_Calibrated):
    """ThiNet (Luo et al. 2017): a layer's input channels removed greedily, each step removing the
    channel whose removal adds least to ``sum over sampled output entries of (sum_{j in T} x_j)^2``,
    ``x_j`` channel ``j``'s contribution to that entry (one random output channel per sampled
    position, as ThiNet samples entries). The score is the step a channel would go at: the
    ``count`` lowest are exactly the greedy set of that size."""

    name = "thinet"

    def channel_scores(self, parts, alive, name, context) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        pick = torch.randint(0, parts.shape[1], (parts.shape[0],), generator=g)
        x = parts[torch.arange(parts.shape[0]), pick]  # (S, C): one output entry per sample
        return greedy_order(x, alive)


def greedy_order(x: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """ThiNet's greedy removal over the alive columns of ``x`` (samples, channels): per channel, the
    step it is removed at (pruned channels -1, so they stay first); higher = kept longer."""
    order = torch.full((x.shape[1],), -1.0, dtype=torch.float64)
    x = x.double()
    # ||t + x_j||^2 = ||t||^2 + 2 x_j.t + ||x_j||^2, with t the removed channels' sum: keep x^T t
    square, cross = (x * x).sum(0), torch.zeros(x.shape[1], dtype=torch.float64)
    left = alive.clone()
    for step in range(int(alive.sum())):
        cost = (2 * cross + square).masked_fill(~left, torch.inf)
        j = int(cost.argmin())  # ties: the lowest index
        order[j] = step
        cross += x.T @ x[:, j]
        left[j] = False
    return order


@SCORERS.register("lasso")
class Lasso(_Calibrated):
    """He et al. (2017): ``min ||Y - sum_c beta_c Z_c||^2 + alpha ||beta||_1`` over channel weights
    ``beta``, ``Z_c`` channel ``c``'s contributions to every output at the sampled entries and ``Y``
    their sum (scikit-learn's ``Lasso``); ``alpha`` bisected until the layer's target number of
    channels keeps a non-zero ``beta``. The score is ``|beta_c|``."""

    name = "lasso"
    wants_counts = True

    def channel_scores(self, parts, alive, name, context) -> torch.Tensor:
        z = parts.reshape(-1, parts.shape[2])
        rows = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:LASSO_ROWS]
        z = z[rows.sort().values]
        keep = int(alive.sum()) - int((context.counts or {}).get(name, 0))
        return lasso_select(z, alive, keep)


LASSO_ROWS = 4096  # sampled (entry, output) rows of the regression: bounded memory and time


def lasso_select(z: torch.Tensor, alive: torch.Tensor, keep: int, steps: int = 40) -> torch.Tensor:
    """``|beta|`` of the LASSO fit of ``y = z.sum(1)`` on the alive columns of ``z`` whose penalty
    keeps ``keep`` non-zero coefficients (bisection on log alpha; if no alpha gives exactly
    ``keep``, the smallest fit with more, whose smallest ``|beta|`` then go). Pruned channels -1."""
    from sklearn.linear_model import Lasso as SkLasso

    columns = alive.nonzero().flatten()
    out = torch.full((z.shape[1],), -1.0, dtype=torch.float64)
    if keep >= len(columns) or keep <= 0:
        out[columns] = 1.0 if keep > 0 else 0.0
        return out
    a = z[:, columns].numpy()
    y = a.sum(1)
    scale = float(abs(a.T @ y).max()) / len(y)  # alpha_max: above it every beta is 0

    def fit(alpha: float):
        model = SkLasso(alpha=alpha, fit_intercept=False, max_iter=5000, tol=1e-6, selection="cyclic")
        model.fit(a, y)
        return torch.as_tensor(model.coef_, dtype=torch.float64)

    low, high = -12.0, 0.0  # log10(alpha / alpha_max)
    best = fit(scale * 10**low)
    for _ in range(steps):
        mid = (low + high) / 2
        beta = fit(scale * 10**mid)
        nonzero = int((beta != 0).sum())
        if nonzero == keep:
            best = beta
            break
        if nonzero > keep:
            low, best = mid, beta
        else:
            high = mid
    out[columns] = best.abs()
    return out


add_method("thinet", Method(
    scorer="thinet", description="input channels, greedy (ThiNet, Luo et al. 2017)", structure="structured-input",
    unit_norm="linf", structured_only=True,
))  # fmt: skip
add_method("lasso", Method(
    scorer="lasso", description="input channels by LASSO (He et al. 2017)", structure="structured-input",
    unit_norm="linf", structured_only=True,
))  # fmt: skip
