"""PCA layer shrinking (Zhang et al. 2015, as the Primer on Neural Network Pruning presents it): a layer replaced by a
low-rank factorisation fitted to its outputs on calibration data.

For a layer ``y = W x + b`` with outputs of mean ``mu`` and principal directions ``U`` (the
eigenvectors of their covariance, largest first), keeping ``k`` components gives
``y ~ mu + U_k U_k^T (y - mu) = U_k (U_k^T W x + U_k^T (b - mu)) + mu``: a ``k``-output layer
(weight ``U_k^T W``, of the layer's own kind: a conv keeps its kernel) followed by a ``k``-input
projection (a Linear, or a 1x1 conv), :class:`Factorized`. With ``k`` at the outputs' rank the
result is exact on the span the data covers. ``k`` is given, or the smallest reaching a fraction of
the explained variance (default 0.95); a layer whose factorisation would not be smaller keeps its
dense form. The folding of the projection into a following linear map is left out: prunelab's
models put a non-linearity after every layer but the classifier, which is never shrunk.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning.calibration import collect, layer_output


class Factorized(nn.Module):
    """``second(first(x))``: a rank-``k`` layer and its projection back to the outputs."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first = first
        self.second = second

    @classmethod
    def like(cls, layer: nn.Module, rank: int) -> Factorized:
        """An (uninitialised) factorisation of ``layer``'s shapes at ``rank``: what a plan rebuilds."""
        if isinstance(layer, nn.Linear):
            return cls(nn.Linear(layer.in_features, rank), nn.Linear(rank, layer.out_features))
        return cls(
            nn.Conv2d(
                layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation
            ),
            nn.Conv2d(rank, layer.out_channels, 1),
        )

    @property
    def rank(self) -> int:
        return self.second.in_features if isinstance(self.second, nn.Linear) else self.second.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


@dataclass
class ShrinkResult:
    """The shrunken model (eval mode), each layer's kept rank, and each layer's explained-variance curve."""

    model: nn.Module
    ranks: dict[str, int]
    explained: dict[str, list[float]] = field(default_factory=dict)  # cumulative, per component
    kept_dense: dict[str, str] = field(default_factory=dict)  # layer -> why it was not factorised


def check_variance(variance: float) -> None:
    if not 0 < variance <= 1:
        raise SpecError(f"the explained-variance fraction must be in (0, 1], got {variance!r}")


def choose_rank(explained: torch.Tensor, variance: float) -> int:
    """The smallest ``k`` whose first ``k`` components explain at least ``variance`` of the total."""
    check_variance(variance)
    total = float(explained.sum())
    if total <= 0:
        return 1
    cumulative = explained.cumsum(0) / total
    return int((cumulative < variance - 1e-12).sum()) + 1


def rank_at(cumulative: Sequence[float], variance: float) -> int:
    """:func:`choose_rank` from a cumulative explained-variance curve."""
    check_variance(variance)
    return min(len(cumulative), sum(1 for c in cumulative if c < variance - 1e-12) + 1)


def factorize(layer: nn.Module, mean: torch.Tensor, directions: torch.Tensor) -> Factorized:
    """The factorisation of ``layer`` onto the orthonormal ``directions`` (outputs x k) around ``mean``."""
    k = directions.shape[1]
    u = directions.to(layer.weight.dtype)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(u.shape[0], dtype=u.dtype)
    w = layer.weight.detach()
    small = Factorized.like(layer, k).to(u.dtype)
    if isinstance(layer, nn.Linear):
        small.first.weight.data = u.T @ w
        small.second.weight.data = u.clone()
    else:
        small.first.weight.data = torch.einsum("ok,ochw->kchw", u, w)
        small.second.weight.data = u.reshape(*u.shape, 1, 1).clone()
    small.first.bias.data = u.T @ (bias - mean.to(u.dtype))
    small.second.bias.data = mean.to(u.dtype).clone()
    return small


def _params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


@torch.no_grad()
def shrink(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    layers: Sequence[str],
    variance: float = 0.95,
    ranks: dict[str, int] | None = None,
    positions: int = 10,
    seed: int = 0,
) -> ShrinkResult:
    """A copy of ``model`` with each named Linear/Conv2d layer replaced by its PCA factorisation,
    fitted on ``batches`` in module order (a later layer's statistics are those of the shrunken
    network). ``ranks`` fixes ``k`` per layer; otherwise the ``variance`` rule chooses it."""
    check_variance(variance)
    net = copy.deepcopy(model).eval()
    result = ShrinkResult(net, {})
    for name in layers:
        layer = net.get_submodule(name)
        if not (isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)):
            raise SpecError(
                f"PCA shrinking replaces Linear and ungrouped Conv2d layers; {name} is {type(layer).__name__}"
            )
        (samples,) = collect([net], name, batches, positions=positions, seed=seed)
        outputs = layer_output(samples, layer.weight.detach())
        if layer.bias is not None:
            outputs = outputs + layer.bias.detach().double()
        mean = outputs.mean(0)
        values, vectors = torch.linalg.eigh(torch.cov((outputs - mean).T).reshape(outputs.shape[1], -1))
        values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
        total = float(values.sum())
        result.explained[name] = (values.cumsum(0) / total).tolist() if total > 0 else [1.0] * len(values)
        k = (ranks or {}).get(name) or choose_rank(values, variance)
        out_units = vectors.shape[0]
        if not 1 <= k <= out_units:
            raise SpecError(f"layer {name} has {out_units} outputs; rank {k} is not in 1..{out_units}")
        small = factorize(layer, mean, vectors[:, :k])
        if _params(small) >= _params(layer):
            result.kept_dense[name] = f"rank {k} of {out_units} would not be smaller"
            continue
        net.set_submodule(name, small)
        result.ranks[name] = k
    return result


def shrink_level(
    loaded,
    *,
    variance: float = 0.95,
    layers: str = "all",
    exclude: Sequence[str] = (),
    images: int = 256,
    positions: int = 10,
    data_dir=None,
) -> ShrinkResult:
    """:func:`shrink` on a trained level (:func:`prunelab.load_level`; its mask applied), calibrated
    on ``images`` training images drawn with the level's seed; the output layer stays whole."""
    from prunelab.pruning.layers import select_layers
    from prunelab.seeding import derive_seed

    check_variance(variance)
    data = loaded.spec.load_data(data_dir)
    if not 1 <= images <= len(data.train):
        raise SpecError(f"--images must be in 1..{len(data.train)} (the training images), got {images}")
    model = copy.deepcopy(loaded.model)
    loaded.mask.apply(model)
    output = getattr(model, "output_layer", None)
    chosen = [layer.name for layer in select_layers(model, layers, exclude) if layer.name != output]
    if not chosen:
        raise SpecError(
            f"layers={layers!r} with exclude={list(exclude)} leaves no layer but the output layer"
        )
    g = torch.Generator().manual_seed(derive_seed(loaded.seed, "pca-calibration"))
    idx = torch.randperm(len(data.train), generator=g)[:images]
    size = loaded.spec.train.batch_size
    batches = [
        (data.train.x[idx[i : i + size]], data.train.y[idx[i : i + size]]) for i in range(0, images, size)
    ]
    return shrink(model, batches, layers=chosen, variance=variance, positions=positions, seed=loaded.seed)


def plot_explained(result: ShrinkResult, title: str):
    """Per layer, the cumulative explained variance against the number of components kept."""
    from prunelab.analysis.plots import new_figure

    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for name, curve in result.explained.items():
        line = ax.plot(range(1, len(curve) + 1), [100 * c for c in curve], label=name)[0]
        if name in result.ranks:
            ax.plot([result.ranks[name]], [100 * curve[result.ranks[name] - 1]], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("components kept")
    ax.set_ylabel("explained variance (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig
