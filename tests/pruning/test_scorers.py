"""Criteria against direct computations; layer densities (ERK by hand); schedule arithmetic."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from prunelab.errors import SpecError, UnknownNameError
from prunelab.pruning import (
    SCORERS,
    Mask,
    PruneContext,
    density_after,
    layer_densities,
    one_shot_rate,
    prune,
    random_mask,
    rate_for_rounds,
    rounds_for_rate,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))


def batches(n: int = 2, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(7, 5, generator=gen), torch.randint(0, 3, (7,), generator=gen)) for _ in range(n)]


WEIGHTS = ["0.weight", "2.weight", "4.weight"]


def scores(criterion: str, model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, torch.Tensor]:
    return SCORERS.get(criterion)().scores(model, mask, WEIGHTS, context, None)


def global_keep(values: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Reference: keep all but the round(fraction * N) lowest scores of the concatenation."""
    flat = torch.cat([values[n].flatten() for n in WEIGHTS])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, round(fraction * flat.numel()), largest=False).indices] = False
    out, offset = {}, 0
    for n in WEIGHTS:
        out[n] = keep[offset : offset + values[n].numel()].reshape(values[n].shape)
        offset += values[n].numel()
    return out


# SNIP --------------------------------------------------------------------------------------------
def test_snip_is_abs_grad_times_weight_summed_over_batches() -> None:
    model, data = tiny_mlp(), batches()
    model.zero_grad()
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    expected = {n: (params[n].grad * params[n]).abs().detach() for n in WEIGHTS}
    got = scores("snip", model, Mask.ones(model), PruneContext(batches=data))
    for n in WEIGHTS:
        torch.testing.assert_close(got[n], expected[n])
    mask = prune(
        model, None, fraction=0.6, method="snip", scope="global", context=PruneContext(batches=iter(data))
    )
    assert all(torch.equal(mask[n], global_keep(expected, 0.6)[n]) for n in WEIGHTS)


def test_snip_is_mask_aware() -> None:
    model, data = tiny_mlp(), batches(1)
    mask = prune(model, None, fraction=0.5)
    masked = copy.deepcopy(model)
    mask.apply(masked)
    x, y = data[0]
    F.cross_entropy(masked(x), y).backward()
    params = dict(masked.named_parameters())
    got = scores("snip", model, mask, PruneContext(batches=data))
    for n in WEIGHTS:
        torch.testing.assert_close(got[n], (params[n].grad * params[n]).abs().detach())
        assert (got[n][~mask[n]] == 0).all()


# GraSP -------------------------------------------------------------------------------------------
def test_grasp_is_weight_times_hessian_gradient_product() -> None:
    model, data = tiny_mlp(), batches()
    temperature = 3.0
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes = [params[n].shape for n in WEIGHTS]
    sizes = [params[n].numel() for n in WEIGHTS]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        weights = dict(
            zip(WEIGHTS, (t.reshape(s) for t, s in zip(flat.split(sizes), shapes, strict=True)), strict=True)
        )
        return sum(
            F.cross_entropy(functional_call(model, {**params, **weights}, (x,)) / temperature, y)
            for x, y in data
        )

    theta = torch.cat([params[n].flatten() for n in WEIGHTS])
    hessian = torch.autograd.functional.hessian(loss, theta)
    gradient = torch.func.grad(loss)(theta)
    expected = (theta * (hessian @ gradient)).split(sizes)
    settings = SCORERS.get("grasp").Settings(temperature=temperature)
    got = SCORERS.get("grasp")(settings).scores(
        model, Mask.ones(model), WEIGHTS, PruneContext(batches=data), None
    )
    for n, e, s in zip(WEIGHTS, expected, shapes, strict=True):
        torch.testing.assert_close(got[n], e.reshape(s), rtol=1e-4, atol=1e-7)
    mask = prune(
        model,
        None,
        fraction=0.5,
        method="grasp",
        scope="global",
        grasp={"temperature": temperature},
        context=PruneContext(batches=data),
    )
    reference = global_keep({n: got[n] for n in WEIGHTS}, 0.5)
    assert all(torch.equal(mask[n], reference[n]) for n in WEIGHTS)


# SynFlow -----------------------------------------------------------------------------------------
def one_path_model() -> nn.Sequential:
    """Input 0 -> hidden 0 -> output 0 carries huge weights (with mixed signs); the rest are tiny."""
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[2].weight.fill_(-0.1)
        model[0].weight[0, 0] = -5.0
        model[2].weight[0, 0] = 5.0
    return model


def test_synflow_keeps_the_obvious_path_data_free() -> None:
    model = one_path_model()
    state = copy.deepcopy(model.state_dict())
    mask = prune(model, None, fraction=13 / 15, method="synflow", scope="global")
    assert mask.num_kept() == 2
    assert mask["0.weight"][0, 0] and mask["2.weight"][0, 0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # signs restored


def test_synflow_score_is_abs_grad_times_weight_on_positive_network() -> None:
    model = tiny_mlp()
    positive = copy.deepcopy(model)
    with torch.no_grad():
        for p in positive.parameters():
            p.abs_()
    positive.double()(torch.ones(1, 5, dtype=torch.float64)).sum().backward()
    got = scores("synflow", model, Mask.ones(model), PruneContext())
    for n, p in positive.named_parameters():
        if n in WEIGHTS:
            torch.testing.assert_close(got[n], (p.grad * p).abs().detach())


def test_synflow_exact_density_with_batchnorm_and_untouched_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
        nn.ReLU(),
        nn.Linear(10, 3),
    )
    model.train()
    state = copy.deepcopy(model.state_dict())
    mask = prune(
        model,
        None,
        fraction=0.9,
        method="synflow",
        scope="global",
        context=PruneContext(input_shape=(2, 6, 6)),
    )
    total = 72 + 640 + 30
    assert mask.num_kept() == total - round(0.9 * total)
    assert model.training and model[1].training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_synflow_needs_input_shape_for_conv_models() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(SpecError, match="input_shape"):
        prune(model, None, fraction=0.5, method="synflow")


# Zhou et al. -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,keep",
    [
        ("large_final", [True, False, False, True]),  # |f| = 3, 1, .5, 4
        ("magnitude_increase", [True, False, True, False]),  # |f| - |i| = .1, -2, .4, 0
        ("movement", [False, True, False, True]),  # |f - i| = .1, 2, .4, 8
    ],
)
def test_zhou_criteria_on_hand_made_weights(method: str, keep: list[bool]) -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, -1.0], [0.5, -4.0]]))
    init = {"weight": torch.tensor([[2.9, -3.0], [0.1, 4.0]])}
    mask = prune(layer, None, fraction=0.5, method=method, context=PruneContext(initial_state=init))
    assert mask["weight"].flatten().tolist() == keep


def test_zhou_criteria_need_initial_state() -> None:
    with pytest.raises(SpecError, match="initial_state"):
        prune(tiny_mlp(), None, fraction=0.5, method="movement")
    with pytest.raises(SpecError, match="shape"):
        bad = {n: torch.zeros(1) for n in WEIGHTS}
        prune(tiny_mlp(), None, fraction=0.5, method="movement", context=PruneContext(initial_state=bad))


# layer densities ---------------------------------------------------------------------------------
def three_layers() -> nn.Module:
    """conv 4x1x3x3 (36 weights), linear 400->100 (40,000), linear 100->10 (1,000)."""
    model = nn.Module()
    model.conv = nn.Conv2d(1, 4, 3)
    model.fc1 = nn.Linear(400, 100)
    model.fc2 = nn.Linear(100, 10)
    return model


SIZES = {"conv.weight": 36, "fc1.weight": 40_000, "fc2.weight": 1000}
ERK_RAW = {"conv.weight": (4 + 1 + 3 + 3) / 36, "fc1.weight": 500 / 40_000, "fc2.weight": 110 / 1000}


def test_erk_by_hand_without_capping() -> None:
    density = 0.01
    eps = density * sum(SIZES.values()) / sum(ERK_RAW[n] * SIZES[n] for n in SIZES)  # = 410.36 / 621
    got = layer_densities(three_layers(), density, "erk")
    assert got == pytest.approx({n: eps * ERK_RAW[n] for n in SIZES})
    assert got["conv.weight"] < 1


def test_erk_by_hand_with_a_dense_small_layer() -> None:
    density = 0.1  # eps = 4103.6 / 621 would give the conv 2.02 > 1: it is made dense, eps re-solved
    eps = (density * sum(SIZES.values()) - 36) / (
        ERK_RAW["fc1.weight"] * 40_000 + ERK_RAW["fc2.weight"] * 1000
    )
    got = layer_densities(three_layers(), density, "erk")
    assert got == pytest.approx({"conv.weight": 1.0, "fc1.weight": eps * 0.0125, "fc2.weight": eps * 0.11})
    mask = random_mask(three_layers(), density, "erk", torch.Generator().manual_seed(0))
    assert mask.num_kept() == pytest.approx(density * sum(SIZES.values()), abs=3)
    assert int(mask["conv.weight"].sum()) == 36
    for n in SIZES:
        assert int(mask[n].sum()) == round(got[n] * SIZES[n])


def test_er_ignores_the_kernel() -> None:
    raw = {"conv.weight": 5 / 4, "fc1.weight": 500 / 40_000, "fc2.weight": 110 / 1000}
    got = layer_densities(three_layers(), 0.01, "er")
    eps = 0.01 * sum(SIZES.values()) / sum(raw[n] * SIZES[n] for n in SIZES)
    assert got == pytest.approx({n: min(1.0, eps * raw[n]) for n in SIZES})


def test_uniform_and_random_positions() -> None:
    model = three_layers()
    assert layer_densities(model, 0.3, "uniform") == pytest.approx(dict.fromkeys(SIZES, 0.3))
    a = random_mask(model, 0.3, "uniform", torch.Generator().manual_seed(0))
    b = random_mask(model, 0.3, "uniform", torch.Generator().manual_seed(1))
    assert {n: int(m.sum()) for n, m in a.items()} == {n: round(0.3 * s) for n, s in SIZES.items()}
    assert a != b and a == random_mask(model, 0.3, "uniform", torch.Generator().manual_seed(0))


def test_snip_ratio_takes_global_snip_densities() -> None:
    model, context = tiny_mlp(), PruneContext(batches=batches())
    snip = prune(model, None, fraction=0.7, method="snip", scope="global", context=context)
    got = layer_densities(model, 0.3, "snip-ratio", context=context)
    assert got == pytest.approx(snip.layer_density())
    mask = random_mask(model, 0.3, "snip-ratio", torch.Generator().manual_seed(0), context)
    assert {n: int(m.sum()) for n, m in mask.items()} == {n: int(m.sum()) for n, m in snip.items()}


def test_density_bad_input() -> None:
    with pytest.raises(SpecError, match=r"density must be in \(0, 1\]"):
        layer_densities(tiny_mlp(), 0.0, "erk")
    with pytest.raises(UnknownNameError, match="erk"):
        layer_densities(tiny_mlp(), 0.5, "ERK-ish")
    with pytest.raises(SpecError, match="batches"):
        layer_densities(tiny_mlp(), 0.5, "snip-ratio")
    assert layer_densities(tiny_mlp(), 1.0, "erk") == dict.fromkeys(WEIGHTS, 1.0)


def test_excluded_layers_stay_dense() -> None:
    mask = random_mask(three_layers(), 0.1, "erk", torch.Generator().manual_seed(0), exclude=["fc2"])
    assert int(mask["fc2.weight"].sum()) == 1000
    assert mask["conv.weight"].sum() + mask["fc1.weight"].sum() == pytest.approx(0.1 * 40_036, abs=2)


# schedules ---------------------------------------------------------------------------------------
def test_schedule_arithmetic() -> None:
    assert rate_for_rounds(0.8, 2) == pytest.approx(1 - 0.2**0.5)  # 0.5528
    assert rate_for_rounds(0.75, 2) == pytest.approx(0.5)
    assert rate_for_rounds(0.488, 3) == pytest.approx(0.2)  # 0.8^3 = 0.512
    assert rate_for_rounds(0.9, 1) == pytest.approx(0.9)
    assert density_after(0.2, 2) == pytest.approx(0.64)
    assert density_after(0.2, 0) == 1.0
    assert density_after(rate_for_rounds(0.99, 10), 10) == pytest.approx(0.01)
    assert one_shot_rate(0.8) == 0.8
    assert rounds_for_rate(0.2, 0.488) == 3 and rounds_for_rate(0.2, 0.5) == 4
    for bad in (
        lambda: rate_for_rounds(1.0, 2),
        lambda: rate_for_rounds(0.5, 0),
        lambda: one_shot_rate(-0.1),
    ):
        with pytest.raises(SpecError):
            bad()


def test_iterative_to_target_reaches_it_within_rounding() -> None:
    model = tiny_mlp()
    rate, mask = rate_for_rounds(0.8, 3), None
    for _ in range(3):
        mask = prune(model, mask, fraction=rate, scope="global")
    assert mask.density() == pytest.approx(0.2, abs=1 / mask.num_total() * 2)
