"""Scorers: per-weight scores, higher = more important = kept.

A scorer only scores. One class per scorer, registered in :data:`SCORERS` (like Torch-Pruning's
``Importance``); which weights or units go is decided by the structure, scope and counts of
:func:`prunelab.prune`, for every method that ranks a scorer's scores (a
:class:`~prunelab.pruning.methods.Method` record, registered here beside its scorer). Its contract:
``needs`` (which :class:`PruneContext` inputs it reads, checked before any scoring and supplied by
the experiment runner only when asked for), an optional ``Settings`` spec (its own hyperparameters,
which become a table of :class:`~prunelab.pruning.spec.PruneSpec`, a config section and
``--<name>-<setting>`` flags), and ``scores``. Scores are computed on the masked model (pruned
weights at zero) and never modify the model: forward passes go through
``torch.func.functional_call`` with copies of the weights and buffers, so BatchNorm statistics and
signs are left as they were.
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
from prunelab.pruning.methods import Method, add_method
from prunelab.registry import Registry
from prunelab.spec import FrozenSpec

Scores = dict[str, torch.Tensor]


class Scorer(ABC):
    """Scores the weights named ``names``; ``signed`` scorers may give negative scores."""

    signed: ClassVar[bool] = False
    """Signed scores have no meaningful Ln norm per unit, so they are refused for structured pruning."""
    needs: ClassVar[frozenset[str]] = frozenset()
    """The :class:`PruneContext` inputs this scorer reads (keys of :data:`NEEDS`)."""
    Settings: ClassVar[type[FrozenSpec] | None] = None
    """The scorer's own hyperparameters, or None."""
    structures: ClassVar[tuple[str, ...] | None] = None
    """The structures its scores mean something for (None: any); ``unit`` says what it scores."""
    unit: ClassVar[str] = "weights"
    layerwise: ClassVar[bool] = False
    """Scores rank units within a layer only (a greedy order, a LASSO fit): scope must be layerwise."""
    wants_counts: ClassVar[bool] = False
    """``scores`` reads ``context.counts``: how many units each layer loses (LASSO's target)."""
    calibration: ClassVar[str | None] = None
    """The spec field counting the calibration examples it reads layers' inputs on
    (``calibration_images``), or None."""
    batches: ClassVar[int] = 10
    """Training batches it reads when it ``needs`` batches and counts no calibration examples."""
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

    @abstractmethod
    def scores(
        self,
        model: nn.Module,
        mask: Mask,
        names: Sequence[str],
        context: PruneContext,
        generator: torch.Generator | None,
    ) -> Scores: ...


SCORERS: Registry[type[Scorer]] = Registry("scorer", builtins="prunelab.pruning")


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
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration, then each module's own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


# magnitude and random -------------------------------------------------------------------------
@SCORERS.register("magnitude")
class Magnitude(Scorer):
    """|w| of the current weights: IMP's criterion (Frankle & Carbin), torch's L1Unstructured."""

    def scores(self, model, mask, names, context, generator) -> Scores:
        params = dict(model.named_parameters())
        return {n: params[n].detach().abs() for n in names}


add_method("magnitude", Method(scorer="magnitude", description="smallest |w| (IMP; torch l1_unstructured)"))
# The structured methods of Paganini & Forde (2020) prune along the input axis, hence the default
# "structured-input"; structure="structured-output" prunes whole filters / output neurons.
for _name, _what in [("l1", "L1 norm"), ("l2", "L2 norm"), ("linf", "L-inf norm (largest |w|)"),
                     ("lninf", "L-(-inf) norm (smallest |w|)")]:  # fmt: skip
    add_method(f"{_name}-structured", Method(
        scorer="magnitude", description=f"whole units with the smallest {_what}", structure="structured-input",
        unit_norm=_name, structured_only=True,
    ))  # fmt: skip
add_method("hybrid", Method(
    scorer="magnitude", description="L1-structured convs, L1-unstructured linear layers (Paganini & Forde)",
    structure="hybrid", structured_only=True,
))  # fmt: skip
add_method("l1-filter", Method(
    scorer="magnitude", description="coupled channels by L1 norm (Li et al. 2017)", structure="channels",
    structured_only=True,
))  # fmt: skip


@SCORERS.register("random")
class Random(Scorer):
    """Uniform random scores from ``generator``: random positions with exact counts."""

    def scores(self, model, mask, names, context, generator) -> Scores:
        params = dict(model.named_parameters())
        return {
            n: torch.rand(params[n].shape, generator=generator, dtype=torch.float64).to(params[n].device)
            for n in names
        }


add_method(
    "random",
    Method(scorer="random", description="random weights (torch random_unstructured)", unit_norm="random"),
)
add_method("random-structured", Method(
    scorer="random", description="random whole units", structure="structured-input", unit_norm="random",
    structured_only=True,
))  # fmt: skip


# Zhou et al. (2019) scorers -------------------------------------------------------------------


@SCORERS.register("large_final")
class LargeFinal(Magnitude):
    """Zhou et al.'s "large final": |w_final|, i.e. magnitude of the trained weights."""


add_method(
    "large_final",
    Method(scorer="large_final", description="smallest |w_final| (Zhou et al.; same as magnitude)"),
)


@SCORERS.register("magnitude_increase")
class MagnitudeIncrease(Scorer):
    """Zhou et al.'s "magnitude increase": |w_final| - |w_init| (signed: shrunk weights go first)."""

    signed = True
    needs = frozenset({"initial_state"})

    def check(self, model, names, context) -> None:
        _check_initial("magnitude_increase", model, names, context)

    def scores(self, model, mask, names, context, generator) -> Scores:
        params = dict(model.named_parameters())
        return {n: params[n].detach().abs() - _initial(model, n, context).abs() for n in names}


add_method(
    "magnitude_increase",
    Method(scorer="magnitude_increase", description="smallest |w_final| - |w_init| (Zhou et al.)"),
)


@SCORERS.register("movement")
class Movement(Scorer):
    """Zhou et al.'s "movement": |w_final - w_init|, how far training moved the weight."""

    needs = frozenset({"initial_state"})

    def check(self, model, names, context) -> None:
        _check_initial("movement", model, names, context)

    def scores(self, model, mask, names, context, generator) -> Scores:
        params = dict(model.named_parameters())
        return {n: (params[n].detach() - _initial(model, n, context)).abs() for n in names}


add_method("movement", Method(scorer="movement", description="smallest |w_final - w_init| (Zhou et al.)"))


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


@SCORERS.register("snip")
class Snip(Scorer):
    """SNIP (Lee et al. 2019): connection sensitivity |g * w|, g summed over the given batches.

    Computed on the masked network, so re-scoring an already pruned model sees its current state.
    """

    needs = frozenset({"batches"})

    def scores(self, model, mask, names, context, generator) -> Scores:
        weights = _weights(model, mask)
        grads = _loss_gradients(model, weights, names, context, 1.0)
        return {n: (grads[n] * weights[n]).abs() for n in names}


add_method(
    "snip", Method(scorer="snip", description="smallest |g * w| at the current weights (Lee et al. 2019)")
)


@SCORERS.register("grasp")
class GraSP(Scorer):
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


add_method(
    "grasp", Method(scorer="grasp", description="GraSP w * Hg: keeps gradient flow (Wang et al. 2020)")
)


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


@SCORERS.register("synflow")
class SynFlow(Scorer):
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
        with eval_mode(model):
            flow = functional_call(model, {**tensors, **leaves}, (ones,)).sum()
        grads = _grad(flow, leaves)
        return {n: (grads[n] * leaves[n].detach()).abs() for n in names}


add_method(
    "synflow",
    Method(scorer="synflow", description="smallest synaptic flow, data-free, iterative (Tanaka et al. 2020)"),
)


# transformers and first-order importance --------------------------------------------------------
@SCORERS.register("head-importance")
class HeadImportance(Scorer):
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


add_method("head-importance", Method(
    scorer="head-importance", description="heads by gate gradients (Michel et al. 2019)", structure="heads",
    unit_norm="linf", structured_only=True,
))  # fmt: skip


@SCORERS.register("taylor")
class Taylor(Scorer):
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


add_method("taylor", Method(
    scorer="taylor", description="units by |sum g*w|, first-order Taylor", structure="ffn", unit_norm="abs-sum",
    structured_only=True,
))  # fmt: skip
