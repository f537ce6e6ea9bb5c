"""prune(): agreement with torch.nn.utils.prune, exact counts, scopes, structures, filters, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunelab.errors import SpecError, UnknownNameError
from prunelab.pruning import (
    METHODS,
    SCOPES,
    SCORERS,
    STRUCTURES,
    Mask,
    Method,
    PruneContext,
    prunable_names,
    prune,
)
from prunelab.pruning.coupled import CoupledStructure
from prunelab.pruning.rowgroups import RowGroups

pytestmark = pytest.mark.usefixtures("one_thread")


class MLP(nn.Module):
    output_layer = "fc3"

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.fc2 = nn.Linear(16, 12)
        self.fc3 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class ConvNet(nn.Module):
    """2x8x8 input -> conv 6 -> conv 8 -> fc 16 -> fc 5 (conv weights 108 + 432, linear 2048 + 80)."""

    output_layer = "fc2"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def kept(mask: Mask) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in mask.items()}


# torch.nn.utils.prune references -----------------------------------------------------------------
@pytest.mark.parametrize("amount", [0.1, 0.2, 0.25, 1 / 3, 0.5, 0.7, 0.0025, 0.0075, 0.99])
def test_magnitude_layerwise_matches_l1_unstructured(amount: float) -> None:
    layer = seeded(lambda: nn.Linear(30, 20))
    ours = prune(layer, None, fraction=amount)
    torch_prune.l1_unstructured(layer, "weight", amount=amount)
    assert torch.equal(ours["weight"], layer.weight_mask.bool())
    assert int(ours["weight"].sum()) == 600 - round(amount * 600)


def test_iterative_magnitude_matches_repeated_l1_unstructured() -> None:
    layer = seeded(lambda: nn.Linear(30, 20))
    first = prune(layer, None, fraction=0.2)
    second = prune(layer, first, fraction=0.2)
    torch_prune.l1_unstructured(layer, "weight", amount=0.2)
    torch_prune.l1_unstructured(layer, "weight", amount=0.2)
    assert torch.equal(second["weight"], layer.weight_mask.bool())


@pytest.mark.parametrize("amount", [0.1, 0.3, 0.5, 0.0075])
def test_random_matches_random_unstructured_count(amount: float) -> None:
    layer = seeded(lambda: nn.Linear(30, 20))
    ours = prune(layer, None, fraction=amount, method="random", generator=torch.Generator().manual_seed(1))
    torch_prune.random_unstructured(layer, "weight", amount=amount)
    assert int(ours["weight"].sum()) == int(layer.weight_mask.sum())


@pytest.mark.parametrize("amount", [0.2, 0.45, 0.9])
def test_global_matches_global_unstructured(amount: float) -> None:
    model = seeded(MLP)
    ours = prune(model, None, fraction=amount, scope="global")
    params = [(model.fc1, "weight"), (model.fc2, "weight"), (model.fc3, "weight")]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(ours[f"{name}.weight"], getattr(model, name).weight_mask.bool())


@pytest.mark.parametrize("n", [1, 2, math.inf, -math.inf])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("amount", [0.25, 0.5, 0.8])
@pytest.mark.parametrize("factory", [lambda: nn.Conv2d(5, 8, 3), lambda: nn.Linear(10, 7)])
def test_structured_matches_ln_structured(n: float, dim: int, amount: float, factory) -> None:
    layer = seeded(factory)
    method = {1: "l1", 2: "l2", math.inf: "linf", -math.inf: "lninf"}[n] + "-structured"
    structure = ("structured-output", "structured-input")[dim]
    ours = prune(layer, None, fraction=amount, method=method, structure=structure)
    torch_prune.ln_structured(layer, "weight", amount=amount, n=n, dim=dim)
    assert torch.equal(ours["weight"], layer.weight_mask.bool())


# iterative pruning and counts --------------------------------------------------------------------
def test_two_rounds_of_20_percent_exact_counts() -> None:
    model = seeded(MLP)
    mask = prune(model, prune(model, None, fraction=0.2), fraction=0.2)
    # fc1 320 -> 256 -> 205 (round(51.2) = 51); fc2 192 -> 154 -> 123; fc3 48 -> 38 -> 30
    assert kept(mask) == {"fc1.weight": 205, "fc2.weight": 123, "fc3.weight": 30}


def test_pruned_weights_never_revive() -> None:
    model = seeded(MLP)
    first = prune(model, None, fraction=0.5, scope="global")
    with torch.no_grad():  # pruned weights grow huge: they must stay pruned
        for name, p in model.named_parameters():
            if name in first:
                p[~first[name]] = 1000.0
    second = prune(model, first, fraction=0.5, scope="global")
    for name in first:
        assert not (second[name] & ~first[name]).any()
    assert second.num_kept() == first.num_kept() - round(0.5 * first.num_kept())


def test_input_mask_is_not_modified_and_dense_start() -> None:
    model = seeded(MLP)
    start = Mask.ones(model)
    before = start.clone()
    out = prune(model, start, fraction=0.3)
    assert start == before and out is not start
    assert prune(model, None, fraction=0.3) == out


def test_output_layer_at_half_rate() -> None:
    model = seeded(MLP)
    mask = None
    for _ in range(2):
        mask = prune(model, mask, fraction=0.2, output_rate_factor=0.5)
    # fc3: 48 -> 48 - round(4.8) = 43 -> 43 - round(4.3) = 39
    assert kept(mask) == {"fc1.weight": 205, "fc2.weight": 123, "fc3.weight": 39}


def test_layer_rates_override_and_global_pool_excludes_overridden_layer() -> None:
    model = seeded(MLP)
    mask = prune(model, None, fraction=0.5, scope="global", layer_rates={"fc1": 0.1})
    assert kept(mask)["fc1.weight"] == 320 - 32
    assert kept(mask)["fc2.weight"] + kept(mask)["fc3.weight"] == 240 - 120


def test_output_rate_factor_needs_output_layer_attribute() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(SpecError, match="output_layer"):
        prune(model, None, fraction=0.2, output_rate_factor=0.5)


def test_ties_are_broken_by_flat_index() -> None:
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    mask = prune(layer, None, fraction=0.5)
    assert mask["weight"].flatten().tolist() == [False] * 6 + [True] * 6
    assert prune(layer, None, fraction=0.5) == mask


# scopes, structures, layer filters ---------------------------------------------------------------
def test_by_type_pools_conv_apart_from_linear() -> None:
    model = seeded(ConvNet)
    with torch.no_grad():  # huge conv weights: a global ranking would prune linear weights only
        for w in (model.conv1.weight, model.conv2.weight):
            w.copy_(w.sign() * (w.abs() + 10))
    glob = kept(prune(model, None, fraction=0.3, scope="global"))
    assert glob["conv1.weight"] + glob["conv2.weight"] == 540
    by_type = kept(prune(model, None, fraction=0.3, scope="by-type"))
    assert by_type["conv1.weight"] + by_type["conv2.weight"] == 540 - round(0.3 * 540)
    assert by_type["fc1.weight"] + by_type["fc2.weight"] == 2128 - round(0.3 * 2128)
    assert by_type["conv1.weight"] != 108 - round(0.3 * 108)  # pooled, not layerwise


def whole_units(mask: torch.Tensor, axis: int) -> bool:
    rows = mask.movedim(axis, 0).reshape(mask.shape[axis], -1)
    return bool((rows.all(dim=1) | ~rows.any(dim=1)).all())


@pytest.mark.parametrize("structure,axis", [("structured-output", 0), ("structured-input", 1)])
@pytest.mark.parametrize(
    "method", ["l1-structured", "l2-structured", "linf-structured", "lninf-structured", "random-structured"]
)
def test_structured_masks_remove_whole_units(structure: str, axis: int, method: str) -> None:
    model = seeded(ConvNet)
    mask = None
    for _ in range(2):
        mask = prune(model, mask, fraction=0.3, method=method, structure=structure)
    for name, m in mask.items():
        assert whole_units(m, axis), name
        units = m.shape[axis]
        after_one = units - round(0.3 * units)
        assert int(m.movedim(axis, 0).reshape(units, -1).any(1).sum()) == after_one - round(0.3 * after_one)


def test_lninf_uses_smallest_weight_of_the_unit() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():  # row 0: big L1 but one tiny weight; row 1: moderate everywhere
        layer.weight.copy_(torch.tensor([[5.0, 5.0, 0.01], [1.0, 1.0, 1.0]]))
    lninf = prune(layer, None, fraction=0.5, method="lninf-structured", structure="structured-output")
    l1 = prune(layer, None, fraction=0.5, method="l1-structured", structure="structured-output")
    assert lninf["weight"].all(1).tolist() == [False, True]
    assert l1["weight"].all(1).tolist() == [True, False]


def test_hybrid_structured_conv_unstructured_linear() -> None:
    model = seeded(ConvNet)
    mask = prune(model, None, fraction=0.5, method="hybrid")
    for name in ("conv1.weight", "conv2.weight"):
        assert whole_units(mask[name], 1)
    assert kept(mask)["conv2.weight"] == (6 - 3) * 8 * 9
    assert kept(mask)["fc1.weight"] == 1024
    assert not whole_units(mask["fc1.weight"], 1)


def test_fc_only_conv_only_and_exclude() -> None:
    model = seeded(ConvNet)
    fc = kept(prune(model, None, fraction=0.5, layers="fc-only"))
    assert fc["conv1.weight"] == 108 and fc["conv2.weight"] == 432 and fc["fc1.weight"] == 1024
    conv = kept(prune(model, None, fraction=0.5, layers="conv-only"))
    assert conv["fc1.weight"] == 2048 and conv["conv1.weight"] == 54
    ex = kept(prune(model, None, fraction=0.5, exclude=["fc2", "conv1.weight"]))
    assert ex["fc2.weight"] == 80 and ex["conv1.weight"] == 108 and ex["conv2.weight"] == 216


def test_unknown_layer_name_lists_the_valid_ones() -> None:
    model = seeded(ConvNet)
    with pytest.raises(
        SpecError, match=r"'fc9'.*conv1 \(conv\), conv2 \(conv\), fc1 \(linear\), fc2 \(linear\)"
    ):
        prune(model, None, fraction=0.2, exclude=["fc9"])
    with pytest.raises(SpecError, match="'conv3'"):
        prune(model, None, fraction=0.2, layer_rates={"conv3": 0.1})


# bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [1.2, 1, 1.0, -0.1, float("nan"), "0.2", True])
def test_fraction_out_of_range(fraction: object) -> None:
    with pytest.raises(SpecError, match=r"fraction must be in \[0, 1\), got"):
        prune(seeded(MLP), None, fraction=fraction)  # type: ignore[arg-type]


def test_fraction_message() -> None:
    with pytest.raises(SpecError, match=r"^fraction must be in \[0, 1\), got 1.2"):
        prune(seeded(MLP), None, fraction=1.2)


@pytest.mark.parametrize(
    "kwargs", [{"method": "magnitud"}, {"scope": "globl"}, {"structure": "structured"}, {"layers": "fc"}]
)
def test_unknown_names_list_the_valid_ones(kwargs: dict) -> None:
    with pytest.raises(UnknownNameError, match="Valid"):
        prune(seeded(MLP), None, fraction=0.2, **kwargs)


def test_layer_rate_out_of_range() -> None:
    with pytest.raises(SpecError, match=r"layer_rates\['fc3'\] must be in \[0, 1\)"):
        prune(seeded(MLP), None, fraction=0.2, layer_rates={"fc3": 1.5})
    with pytest.raises(SpecError, match="output layer's rate"):
        prune(seeded(MLP), None, fraction=0.6, output_rate_factor=2)


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_methods_need_batches(method: str) -> None:
    with pytest.raises(SpecError, match="batches"):
        prune(seeded(MLP), None, fraction=0.2, method=method)


def test_no_prunable_layer() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.ReLU())
    for method in ("synflow", "magnitude"):
        with pytest.raises(SpecError, match="no prunable layer"):
            prune(model, None, fraction=0.2, method=method)
    with pytest.raises(SpecError, match="conv-only"):
        prune(seeded(MLP), None, fraction=0.2, layers="conv-only")


# every combination -------------------------------------------------------------------------------
def full_context(model: nn.Module) -> PruneContext:
    gen = torch.Generator().manual_seed(3)
    init = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    batch = (torch.randn(8, 2, 8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen))
    return PruneContext(initial_state=init, batches=[batch], input_shape=(2, 8, 8))


def pools(layers: list[str], scope: str) -> list[list[str]]:
    kind = {"conv1.weight": "conv", "conv2.weight": "conv", "fc1.weight": "linear", "fc2.weight": "linear"}
    if scope == "layerwise":
        return [[n] for n in layers]
    if scope == "global":
        return [layers]
    return [[n for n in layers if kind[n] == k] for k in ("conv", "linear")]


def elements(mask: torch.Tensor, axis: int | None) -> int:
    if axis is None:
        return int(mask.sum())
    return int(mask.movedim(axis, 0).reshape(mask.shape[axis], -1).any(1).sum())


# per-layer structures (coupled ones, which prune groups across layers, are tested in tests/coupling/test_coupling.py)
STRUCTURE_CHOICES = [None, *(n for n, s in STRUCTURES.items() if not isinstance(s, CoupledStructure))]
# methods that rank elements by scores (those that choose their units themselves, network slimming's
# BatchNorm-scale channels, are tested in test_slimming.py)
RANKING_METHODS = [m for m, entry in METHODS.items() if isinstance(entry, Method)]
COMBINATIONS = [
    (method, scope, structure)
    for method in RANKING_METHODS
    for scope in SCOPES.names()
    for structure in STRUCTURE_CHOICES
    # a method whose own default is coupled (l1-filter) is tested there with structure None
    if structure is not None
    or not isinstance(STRUCTURES.get(METHODS.get(method).structure), CoupledStructure)
]


@pytest.mark.parametrize(("method", "scope", "structure"), COMBINATIONS)
def test_every_combination(method: str, scope: str, structure: str | None) -> None:
    spec = METHODS.get(method)
    struct = STRUCTURES.get(structure or spec.structure)
    signed = SCORERS.get(spec.scorer).signed
    hybrid = struct.conv_axis != struct.linear_axis
    signed_units = spec.unit_norm == "abs-sum" and not hybrid  # |sum of g*w| per unit (taylor)
    valid = not (spec.structured_only and not struct.structured)
    valid = valid and not (signed and struct.structured and not signed_units)
    criterion = SCORERS.get(spec.scorer)
    allowed = criterion.structures  # head-importance: heads only; thinet/lasso: input channels
    valid = valid and (allowed is None or (structure or spec.structure) in allowed)
    valid = valid and not (criterion.layerwise and scope != "layerwise")  # thinet/lasso rank within a layer
    valid = valid and not (hybrid and scope == "global")
    grouped = isinstance(struct, RowGroups)  # per-row: each output row loses its own share
    valid = valid and not (grouped and scope != "layerwise")
    model = seeded(ConvNet)
    context = full_context(model)
    start = prune(model, None, fraction=0.2, method="random", generator=torch.Generator().manual_seed(0))
    call = dict(
        fraction=0.3, method=method, scope=scope, structure=structure, synflow={"rounds": 10}, context=context
    )
    if not valid:
        with pytest.raises(SpecError):
            prune(model, start, **call, generator=torch.Generator().manual_seed(0))
        return
    state = copy.deepcopy(model.state_dict())
    mask = prune(model, start, **call, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # model untouched
    if grouped:
        for n in mask:
            before, after = (
                start[n].reshape(start[n].shape[0], -1).sum(1),
                mask[n].reshape(start[n].shape[0], -1).sum(1),
            )
            assert after.tolist() == [b - round(0.3 * b) for b in before.tolist()], n
            assert not (mask[n] & ~start[n]).any()
        return
    axes = {n: struct.conv_axis if n.startswith("conv") else struct.linear_axis for n in mask}
    for pool in pools(mask.names(), scope):
        before = sum(elements(start[n], axes[n]) for n in pool)
        after = sum(elements(mask[n], axes[n]) for n in pool)
        assert after == before - round(0.3 * before), pool
    for n in mask:
        assert not (mask[n] & ~start[n]).any()
    if scope == "layerwise" and not struct.structured:
        assert mask.num_kept() == sum(int(start[n].sum()) - round(0.3 * int(start[n].sum())) for n in mask)


def test_mask_names_cover_prunable_layers() -> None:
    model = seeded(ConvNet)
    assert prune(model, None, fraction=0.1).names() == prunable_names(model)
