"""ThiNet (Luo, Wu & Lin 2017) and LASSO channel selection (He, Zhang & Sun 2017): each layer's input
channels scored on calibration data (:mod:`prunelab.pruning.calibration` collects what a layer sees),
and the ``thinet`` and ``lasso`` methods that rank those scores, one layer at a time.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.pruning.calibration import check_layer, collect
from prunelab.pruning.context import PruneContext
from prunelab.pruning.mask import Mask
from prunelab.pruning.methods import Method, add_method
from prunelab.pruning.scorers import SCORERS, Scorer, Scores, _batches


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
