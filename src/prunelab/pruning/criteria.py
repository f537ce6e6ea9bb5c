"""Importance criteria: per-weight scores, higher = more important = kept.

One class per criterion, registered in :data:`CRITERIA` (like Torch-Pruning's importance plug-ins).
A criterion only scores; which weights go is decided by the structure, scope and counts in
:mod:`prunelab.pruning.prune`. Its contract: ``needs`` (which :class:`PruneContext` inputs it
reads, checked before any scoring and supplied by the experiment runner only when asked for),
an optional ``Settings`` spec (its own hyperparameters, which become a table of
:class:`~prunelab.pruning.spec.PruneSpec`, a config section and ``--<name>-<setting>`` flags), and
``scores``. Scores are computed on the masked model (pruned weights at zero)
and never modify the model: forward passes go through ``torch.func.functional_call`` with copies
of the weights and buffers, so BatchNorm statistics and signs are left as they were.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from prunelab.errors import SpecError
from prunelab.pruning.context import Batch, PruneContext
from prunelab.pruning.mask import PRUNABLE_TYPES, Mask
from prunelab.registry import Registry
from prunelab.spec import FrozenSpec

Scores = dict[str, torch.Tensor]


class Criterion(ABC):
    """Scores the weights named ``names``; ``signed`` criteria may give negative scores."""

    signed: ClassVar[bool] = False
    """Signed scores have no meaningful Ln norm per unit, so they are refused for structured pruning."""
    needs: ClassVar[frozenset[str]] = frozenset()
    """The :class:`PruneContext` inputs this criterion reads (keys of :data:`NEEDS`)."""
    Settings: ClassVar[type[FrozenSpec] | None] = None
    """The criterion's own hyperparameters, or None."""
    structures: ClassVar[tuple[str, ...] | None] = None
    """The structures its scores mean something for (None: any); ``unit`` says what it scores."""
    unit: ClassVar[str] = "weights"
    layerwise: ClassVar[bool] = False
    """Scores rank units within a layer only (a greedy order, a LASSO fit): scope must be layerwise."""
    wants_counts: ClassVar[bool] = False
    """``scores`` reads ``context.counts``: how many units each layer loses (LASSO's target)."""
    calibrated: ClassVar[bool] = False
    """Reads layers' inputs on calibration images (the spec's ``calibration_images``)."""
    requires: ClassVar[str] = ""
    """What the model must have, in words, beyond prunable layers (``prunelab methods`` shows it)."""

    def __init__(self, settings: FrozenSpec | None = None) -> None:
        if settings is None and self.Settings is not None:
            settings = self.Settings()
        self.settings = settings

    def check(self, model: nn.Module, names: Sequence[str], context: PruneContext) -> None:  # noqa: B027
        """Raise SpecError, before any work, for inputs ``needs`` cannot express (shapes, ...)."""

    def rounds(self, context: PruneContext) -> int:
        """Scoring rounds per pruning call; >1 re-scores between rounds (SynFlow)."""
        return 1

    def select(self, model: nn.Module, mask: Mask | None, spec, context: PruneContext, generator) -> Mask:
        """A criterion that chooses its units itself (network slimming's global BatchNorm-scale
        threshold) overrides this: ``prune`` then returns its mask instead of ranking ``scores``."""
        raise NotImplementedError

    @property
    def selects(self) -> bool:
        """Whether this criterion makes the mask itself (overrides :meth:`select`)."""
        return type(self).select is not Criterion.select

    def dense_hooks(self, spec) -> list:
        """Training hooks (:class:`~prunelab.training.plugins.TrainPlugin`) the dense training runs with,
        for methods that act during training (an experiment's trunk trains with them); ``spec`` is
        the :class:`~prunelab.pruning.PruneSpec`. Default: none."""
        return []

    def level_hooks(self, spec) -> list:
        """Training hooks each pruned level, and each control beside it, retrains with (network
        slimming's multi-pass scheme keeps its L1 push on); ``spec`` as for :meth:`dense_hooks`.
        Default: none."""
        return []

    @abstractmethod
    def scores(
        self,
        model: nn.Module,
        mask: Mask,
        names: Sequence[str],
        context: PruneContext,
        generator: torch.Generator | None,
    ) -> Scores: ...


CRITERIA: Registry[type[Criterion]] = Registry("criterion")


# helpers --------------------------------------------------------------------------------------
def _weights(model: nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    """Detached parameters with the mask applied: the network the scores are about."""
    out = {}
    for name, p in model.named_parameters():
        w = p.detach()
        out[name] = w * mask[name].to(w.device, w.dtype) if name in mask else w
    return out


def _forward(model: nn.Module, tensors: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with ``tensors`` in place of its parameters, on copies of its buffers."""
    state = {name: b.clone() for name, b in model.named_buffers()}
    state.update(tensors)
    return functional_call(model, state, (x,))


def _grad(output: torch.Tensor, leaves: Mapping[str, torch.Tensor], create_graph: bool = False) -> Scores:
    grads = torch.autograd.grad(output, list(leaves.values()), create_graph=create_graph, allow_unused=True)
    return {
        n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(leaves.items(), grads, strict=True)
    }


def _leaves(weights: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {n: weights[n].clone().requires_grad_(True) for n in names}


def _batches(context: PruneContext) -> tuple[Batch, ...]:
    return tuple(context.batches or ())


def _check_initial(what: str, model: nn.Module, names: Sequence[str], context: PruneContext) -> None:
    """The initial state (present: ``needs`` checked that) has every scored weight, in its shape."""
    init = context.initial_state
    assert init is not None
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in init]
    if missing:
        raise SpecError(f"{what}: initial_state has no entry for {missing[:5]} (it has {list(init)[:8]})")
    for n in names:
        if tuple(init[n].shape) != tuple(params[n].shape):
            raise SpecError(
                f"{what}: initial_state[{n!r}] has shape {tuple(init[n].shape)}, not {tuple(params[n].shape)}"
            )


def _initial(model: nn.Module, name: str, context: PruneContext) -> torch.Tensor:
    p = dict(model.named_parameters())[name]
    assert context.initial_state is not None  # checked by _require_initial
    return context.initial_state[name].detach().to(p.device, p.dtype)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration, then each module's own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


# magnitude and random -------------------------------------------------------------------------
@CRITERIA.register("magnitude")
class Magnitude(Criterion):
    """|w| of the current weights: IMP's criterion (Frankle & Carbin), torch's L1Unstructured."""

    def scores(self, model, mask, names, context, generator) -> Scores:
        params = dict(model.named_parameters())
        return {n: params[n].detach().abs() for n in names}


@CRITERIA.register("random")
class Random(Criterion):
    """Uniform random scores from ``generator``: random positions with exact counts."""

    def scores(self, model, mask, names, context, generator) -> Scores:
        params = dict(model.named_parameters())
        return {
            n: torch.rand(params[n].shape, generator=generator, dtype=torch.float64).to(params[n].device)
            for n in names
        }


# Zhou et al. (2019) criteria ------------------------------------------------------------------
@CRITERIA.register("large_final")
class LargeFinal(Magnitude):
    """Zhou et al.'s "large final": |w_final|, i.e. magnitude of the trained weights."""


@CRITERIA.register("magnitude_increase")
class MagnitudeIncrease(Criterion):
    """Zhou et al.'s "magnitude increase": |w_final| - |w_init| (signed: shrunk weights go first)."""

    signed = True
    needs = frozenset({"initial_state"})

    def check(self, model, names, context) -> None:
        _check_initial("magnitude_increase", model, names, context)

    def scores(self, model, mask, names, context, generator) -> Scores:
        params = dict(model.named_parameters())
        return {n: params[n].detach().abs() - _initial(model, n, context).abs() for n in names}


@CRITERIA.register("movement")
class Movement(Criterion):
    """Zhou et al.'s "movement": |w_final - w_init|, how far training moved the weight."""

    needs = frozenset({"initial_state"})

    def check(self, model, names, context) -> None:
        _check_initial("movement", model, names, context)

    def scores(self, model, mask, names, context, generator) -> Scores:
        params = dict(model.named_parameters())
        return {n: (params[n].detach() - _initial(model, n, context)).abs() for n in names}


# pruning at initialisation ----------------------------------------------------------------------
def _loss_gradients(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    names: Sequence[str],
    context: PruneContext,
    temperature: float,
) -> Scores:
    """Gradient of the loss w.r.t. the masked weights, summed over the context's batches."""
    total = {n: torch.zeros_like(weights[n]) for n in names}
    for x, y in _batches(context):
        leaves = _leaves(weights, names)
        loss = context.loss_fn(_forward(model, {**weights, **leaves}, x) / temperature, y)
        for n, g in _grad(loss, leaves).items():
            total[n] += g
    return total


@CRITERIA.register("snip")
class Snip(Criterion):
    """SNIP (Lee et al. 2019): connection sensitivity |g * w|, g summed over the given batches.

    Computed on the masked network, so re-scoring an already pruned model sees its current state.
    """

    needs = frozenset({"batches"})

    def scores(self, model, mask, names, context, generator) -> Scores:
        weights = _weights(model, mask)
        grads = _loss_gradients(model, weights, names, context, 1.0)
        return {n: (grads[n] * weights[n]).abs() for n in names}


@CRITERIA.register("grasp")
class GraSP(Criterion):
    """GraSP (Wang et al. 2020): keeps the weights whose removal would most reduce gradient flow.

    Wang et al. define S(-w) = -w * (H g) and remove the weights with the *largest* S. Here higher
    means kept, so the score is w * (H g) = -S (as in Tanaka et al.'s code). H g is a Hessian-gradient
    product by double backward; g is summed over the batches, logits divided by the ``temperature``
    setting. Scores are signed.
    """

    class Settings(FrozenSpec):
        flag_prefix = "grasp-"
        temperature: float = Field(
            200.0, gt=0, description="GraSP divides the logits by this before the loss (Wang et al.'s code)"
        )

    signed = True
    needs = frozenset({"batches"})

    def scores(self, model, mask, names, context, generator) -> Scores:
        weights = _weights(model, mask)
        temperature = self.settings.temperature
        stopped = _loss_gradients(model, weights, names, context, temperature)
        hg = {n: torch.zeros_like(weights[n]) for n in names}
        for x, y in _batches(context):
            leaves = _leaves(weights, names)
            loss = context.loss_fn(_forward(model, {**weights, **leaves}, x) / temperature, y)
            grads = _grad(loss, leaves, create_graph=True)
            gnorm = torch.stack([(grads[n] * stopped[n]).sum() for n in names]).sum()
            for n, g in _grad(gnorm, leaves).items():
                hg[n] += g
        return {n: weights[n] * hg[n] for n in names}


def synflow_input_shape(model: nn.Module, context: PruneContext) -> tuple[int, ...]:
    """Input shape for SynFlow's all-ones input: given, from a batch, or a leading Linear's width."""
    if context.input_shape is not None:
        return tuple(context.input_shape)
    batches = _batches(context)
    if batches:
        return tuple(batches[0][0].shape[1:])
    first = next((m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise SpecError(
        "synflow feeds an all-ones input and cannot guess its shape for a model starting with a "
        f"{type(first).__name__}: pass context=PruneContext(input_shape=(C, H, W))"
    )


@CRITERIA.register("synflow")
class SynFlow(Criterion):
    """SynFlow (Tanaka et al. 2020), data-free: |dR/dw * w| with R = sum(f(1; |w|)).

    All parameters and float buffers (BatchNorm running statistics included) are made positive and
    the model runs in eval mode on one all-ones input, in float64 against overflow. This works on
    copies, so the model's signs and weights are untouched. Pruning is iterative (the ``rounds``
    setting, 100 by default) with an exponential schedule, re-scoring each round. Its input shape
    comes from the context, a batch, or a leading Linear layer's width.
    """

    class Settings(FrozenSpec):
        flag_prefix = "synflow-"
        rounds: int = Field(
            100,
            ge=1,
            le=10_000,
            description="scoring rounds, the density shrinking exponentially (Tanaka et al.: 100)",
        )

    def check(self, model, names, context) -> None:
        synflow_input_shape(model, context)

    def rounds(self, context: PruneContext) -> int:
        return 1 if context.trial else self.settings.rounds

    def scores(self, model, mask, names, context, generator) -> Scores:
        tensors = {n: w.abs().double() for n, w in _weights(model, mask).items()}
        for n, b in model.named_buffers():
            tensors[n] = b.detach().abs().double() if b.is_floating_point() else b.clone()
        leaves = _leaves(tensors, names)
        device = next(iter(tensors.values())).device
        ones = torch.ones((1, *synflow_input_shape(model, context)), dtype=torch.float64, device=device)
        with _eval_mode(model):
            flow = functional_call(model, {**tensors, **leaves}, (ones,)).sum()
        grads = _grad(flow, leaves)
        return {n: (grads[n] * leaves[n].detach()).abs() for n in names}


# transformers and first-order importance --------------------------------------------------------
@CRITERIA.register("head-importance")
class HeadImportance(Criterion):
    """Michel et al. (2019): a head's importance is ``sum over batches |dL/dxi_h|`` for a gate ``xi_h``
    on its context, normalised per layer (:mod:`prunelab.pruning.heads`), on the masked model.

    Every weight of head ``h`` (its Q/K/V rows and output-projection columns) carries the head's
    score, so the ``linf`` unit norm gives the score back; other weights score 0.
    """

    needs = frozenset({"batches"})
    structures = ("heads",)
    unit = "attention heads"

    def check(self, model, names, context) -> None:
        from prunelab.models.encoder import encoder_blocks

        encoder_blocks(model, "method 'head-importance'")

    def scores(self, model, mask, names, context, generator) -> Scores:
        from prunelab.models.encoder import encoder_blocks
        from prunelab.pruning.heads import head_importance

        weights = _weights(model, mask)
        importance = head_importance(
            model, _batches(context), forward=lambda x: _forward(model, weights, x)
        ).to(torch.float64)
        out = {n: torch.zeros_like(weights[n], dtype=torch.float64) for n in names}
        for row, block in zip(importance, encoder_blocks(model), strict=True):
            for param, axis, size in block.head_parts():
                if param in out:
                    per_unit = row.to(out[param].device).repeat_interleave(size)
                    out[param] = (
                        per_unit.view(-1, 1).expand_as(out[param])
                        if axis == 0
                        else per_unit.expand_as(out[param])
                    )
        return out


@CRITERIA.register("taylor")
class Taylor(Criterion):
    """First-order Taylor importance (Molchanov et al. 2017; 2019): ``g * w`` per weight, ``g`` the loss
    gradient summed over the batches, on the masked model. A unit's score, by the ``abs-sum`` unit
    norm, is ``|sum of g * w over its weights|``: the first-order change of the loss when the whole
    unit (an FFN neuron, a filter, a head) is set to zero. Signed per weight."""

    signed = True
    needs = frozenset({"batches"})

    def scores(self, model, mask, names, context, generator) -> Scores:
        weights = _weights(model, mask)
        grads = _loss_gradients(model, weights, names, context, 1.0)
        return {n: grads[n] * weights[n] for n in names}


# data-driven channel selection (papers 002, 004) ------------------------------------------------
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


class _Calibrated(Criterion):
    """Criteria that take each layer's input channels apart on calibration data."""

    needs = frozenset({"batches"})
    structures = ("structured-input",)
    unit = "each layer's input channels"
    layerwise = True
    calibrated = True

    def check(self, model, names, context) -> None:
        from prunelab.pruning.calibration import check_layer

        for n in names:
            layer = n.rpartition(".")[0]
            check_layer(model.get_submodule(layer), layer, self.name)

    def scores(self, model, mask, names, context, generator) -> Scores:
        """Each layer's input patches in the masked model (copied once per call), taken apart into
        every input channel's contribution to each output, scored by :meth:`channel_scores`."""
        from prunelab.pruning.calibration import collect

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
    import copy

    net = copy.deepcopy(model)
    mask.apply(net)
    return net


@CRITERIA.register("thinet")
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


@CRITERIA.register("lasso")
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
