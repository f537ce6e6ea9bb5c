"""Structured pruning and physical removal on torchvision models; depthwise and grouped conv rules."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_outputs
from torch import nn

from prunelab.compress import compact, export_compact, load_compact
from prunelab.coupling import discover
from prunelab.errors import PrunelabError, SpecError
from prunelab.models import count_parameters
from prunelab.models.vision import import_torchvision
from prunelab.pruning import STRUCTURES, Mask, prune
from prunelab.pruning.coupled import CoupledStructure

try:
    tv = import_torchvision()
except SpecError:  # not installed (CI installs it)
    pytest.skip("torchvision is not installed", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_thread")

# the smallest inputs each model takes: AlexNet's last max-pool needs 63x63 (62 leaves it 0x0)
SIZES = {"resnet18": 32, "vgg11_bn": 32, "alexnet": 63, "mobilenet_v2": 32}
STRUCTURED_METHODS = ["l1-structured", "l2-structured", "linf-structured", "lninf-structured"]


def calibrate(model: nn.Module, shape, seed: int = 0) -> nn.Module:
    """BatchNorm statistics of a random batch and random BN scales and shifts, in eval mode.

    Without data-consistent statistics a random MobileNet's outputs hardly depend on its input,
    which proves nothing; the shifts make dead channels carry non-zero constants.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        model.train()
        model(torch.randn(8, *shape, generator=g))
    return model.eval()


def filters(model: nn.Module, fraction: float = 0.5, structure: str = "structured-output") -> Mask:
    """L1 structured pruning of every conv (the classifier's linear layers are left whole)."""
    return prune(
        model, None, fraction=fraction, method="l1-structured", structure=structure, layers="conv-only"
    )


def depthwise_convs(model: nn.Module) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
    ]


@pytest.mark.parametrize("name", list(SIZES))
def test_half_the_filters_of_every_conv_compact_to_the_masked_model(name, tmp_path):
    shape = (3, SIZES[name], SIZES[name])
    torch.manual_seed(0)
    model = calibrate(getattr(tv.models, name)(num_classes=10), shape)
    mask = filters(model)
    result = compact(model, mask, torch.zeros(1, *shape))
    assert_same_outputs(result.model, mask.apply(copy.deepcopy(model)).eval(), shape)
    assert count_parameters(result.model) < count_parameters(model)
    assert sum(result.removed.values()) > 0
    for dw in depthwise_convs(model):
        # a channel whose depthwise filter the mask keeps stays; one whose filter is pruned carries a
        # constant, which goes only where folding it is exact in eval and in train mode (a BatchNorm
        # turns it into its running-statistics value in eval mode, its shift in train mode)
        live = set(mask[f"{dw}.weight"].flatten(1).any(1).nonzero().flatten().tolist())
        kept = result.kept_channels.get(dw, list(range(model.get_submodule(dw).out_channels)))
        assert live <= set(kept), dw
        attrs = result.plan[dw]["attrs"]
        assert attrs["groups"] == attrs["in_channels"] == attrs["out_channels"] == len(kept)
    # exported, then rebuilt from the model source by load_compact
    out = export_compact(
        result, tmp_path / "m", model=f"torchvision:{name}", num_classes=10, input_shape=shape
    )
    assert_same_outputs(load_compact(out), mask.apply(copy.deepcopy(model)).eval(), shape)


def test_mobilenet_input_channel_pruning_compacts():
    """structured-input: a depthwise conv loses whole channels (= its filters), pointwise convs columns."""
    shape = (3, 32, 32)
    torch.manual_seed(0)
    model = calibrate(tv.models.mobilenet_v2(num_classes=10), shape, seed=1)
    mask = filters(model, structure="structured-input")
    for dw in depthwise_convs(model):
        rows = mask[f"{dw}.weight"].flatten(1)
        assert bool((rows.all(1) | ~rows.any(1)).all()) and int(rows.any(1).sum()) == round(len(rows) / 2)
    result = compact(model, mask, torch.zeros(1, *shape))
    assert_same_outputs(result.model, mask.apply(copy.deepcopy(model)).eval(), shape)
    assert count_parameters(result.model) < count_parameters(model)


# pruning rules for depthwise and grouped convs ---------------------------------------------------
class Convs(nn.Module):
    """A depthwise conv, a grouped conv (groups=2) and a depthwise conv with channel multiplier 2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.mult = nn.Conv2d(6, 12, 3, padding=1, groups=6)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.mult(torch.relu(self.grouped(torch.relu(self.dw(x))))))
        return self.head(x.mean((2, 3)))


def input_channels_read(conv: nn.Conv2d, weight: torch.Tensor) -> list[bool]:
    """For each input channel: does ``conv`` with ``weight`` still read it?"""
    x = torch.randn(2, conv.in_channels, 5, 5, generator=torch.Generator().manual_seed(0))
    base = F.conv2d(x, weight, None, padding=1, groups=conv.groups)
    read = []
    for i in range(conv.in_channels):
        y = x.clone()
        y[:, i] = 0
        read.append(not torch.equal(F.conv2d(y, weight, None, padding=1, groups=conv.groups), base))
    return read


@pytest.mark.parametrize("method", [*STRUCTURED_METHODS, "random-structured"])
def test_input_axis_units_of_grouped_convs_are_whole_input_channels(method):
    model = Convs()
    mask = prune(model, None, fraction=0.5, method=method, structure="structured-input", layers="conv-only")
    for name in ("dw", "grouped", "mult"):
        conv = model.get_submodule(name)
        keep = mask[f"{name}.weight"]
        read = input_channels_read(conv, conv.weight.detach() * keep)
        assert sum(read) == conv.in_channels - round(conv.in_channels / 2), name
        # a pruned input channel is every weight it feeds: of its group's filters, its column
        ipg, opg = conv.in_channels // conv.groups, conv.out_channels // conv.groups
        for i, kept in enumerate(read):
            g, j = divmod(i, ipg)
            block = keep[g * opg : (g + 1) * opg, j]
            assert bool(block.all()) if kept else not bool(block.any()), (name, i)


def test_a_depthwise_conv_prunes_the_same_channels_by_input_or_output_axis():
    model = Convs()

    def dw(method: str, structure: str | None = None) -> torch.Tensor:
        mask = prune(model, None, fraction=0.5, method=method, structure=structure, layers="conv-only")
        return mask["dw.weight"]

    for method in STRUCTURED_METHODS:
        by_input = dw(method, "structured-input")
        assert torch.equal(by_input, dw(method, "structured-output")), method
        assert int(by_input.flatten(1).any(1).sum()) == 4  # half the channels, not the whole layer
    assert torch.equal(dw("hybrid"), dw("l1-structured"))  # hybrid's conv units: input channels


@pytest.mark.parametrize(
    "structure",
    [n for n, s in STRUCTURES.items() if s.conv_axis == 0 and not isinstance(s, CoupledStructure)],
)
def test_output_axis_units_of_grouped_convs_are_whole_filters(structure):
    model = Convs()
    mask = prune(model, None, fraction=0.5, method="l2-structured", structure=structure, layers="conv-only")
    for name in ("dw", "grouped", "mult"):
        rows = mask[f"{name}.weight"].flatten(1)
        assert bool((rows.all(1) | ~rows.any(1)).all()) and int(rows.any(1).sum()) == round(len(rows) / 2)


# compaction of depthwise and grouped convs ---------------------------------------------------------
def test_grouped_and_depthwise_convs_lose_whole_groups_or_the_same_channels_of_each():
    """A depthwise conv's units are its channels (with their filters, a multiplier's m filters), a
    grouped conv with wider groups than it has groups loses the same channels of every group (the
    group count stays): pruned by coupled groups, the compacted convs compute what the masked
    model does."""
    torch.manual_seed(0)
    model = Convs().eval()
    x = torch.zeros(1, 3, 6, 6)
    mask = prune(model, None, fraction=0.5, method="l1-filter", example=x)
    result = compact(model, mask, x)
    assert_same_outputs(result.model, mask.apply(copy.deepcopy(model)).eval(), (3, 6, 6))
    grouped, mult, dw = (result.model.get_submodule(n) for n in ("grouped", "mult", "dw"))
    assert (dw.groups, dw.in_channels, dw.out_channels) == (4, 4, 4)  # half the stem's 8 channels
    assert (grouped.groups, grouped.in_channels, grouped.out_channels) == (
        2,
        4,
        2,
    )  # 2 of 4, 1 of 3 per group
    assert (mult.groups, mult.in_channels, mult.out_channels) == (2, 2, 4)  # each channel with its 2 filters
    assert result.removed_groups == {}  # no group went whole
    # a depthwise conv fed by the model input cannot lose channels (the input keeps them all)
    first = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 1),
        nn.Flatten(),
        nn.Linear(150, 2),
    )
    x = torch.zeros(1, 4, 5, 5)
    mask = prune(first, None, fraction=0.5, method="l1-filter", example=x)
    result = compact(first, mask, x)
    assert result.plan["0"]["attrs"]["out_channels"] == 4 and result.plan["2"]["attrs"]["out_channels"] == 3
    assert_same_outputs(result.model, mask.apply(copy.deepcopy(first)).eval(), (4, 5, 5))


# models whose forward code reuses, indexes or shuffles channels ---------------------------------------
class Functional(nn.Module):
    """conv2's weight is used by functional code; the layer itself is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = F.conv2d(torch.relu(self.conv1(x)), self.conv2.weight, self.conv2.bias, padding=1)
        return self.head(torch.relu(x).mean((2, 3)))


class Flip(Functional):
    """Reverses the channel order between two convs: positions fixed by the code."""

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)).flip(1))
        return self.head(torch.relu(x).mean((2, 3)))


class Shuffle(Functional):
    """A ShuffleNet-style channel shuffle: a view whose group width is computed from the channels."""

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        b, c, h, w = x.shape
        x = self.conv2(x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w))
        return self.head(torch.relu(x).mean((2, 3)))


class Fixed(Functional):
    """The same shuffle with the group width written into the code: it cannot shrink."""

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        b, _, h, w = x.shape
        x = self.conv2(x.view(b, 2, 4, h, w).transpose(1, 2).reshape(b, 8, h, w))
        return self.head(torch.relu(x).mean((2, 3)))


class Twice(Functional):
    def forward(self, x):
        x = self.conv2(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(torch.relu(x).mean((2, 3)))


@pytest.mark.parametrize(
    "cls, conv1_kept, frozen",
    [
        (Functional, 4, None),  # its weight is a parameter wherever it is used
        (Twice, 4, None),  # conv1's and conv2's channels are one group: conv2 reads both
        (Flip, 8, "positions fixed by flip"),
        (Shuffle, 4, None),  # the two halves lose the same positions
        (Fixed, 8, "split with no part computed by view"),
    ],
)
def test_models_that_reuse_index_or_shuffle_channels_compact_exactly(cls, conv1_kept, frozen):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.zeros(1, 3, 8, 8)
    groups = discover(model, x)
    if frozen:
        assert frozen in groups.table(), groups.table()
    mask = prune(model, None, fraction=0.5, method="l1-filter", example=x)
    result = compact(model, mask, x)
    assert_same_outputs(result.model, mask.apply(copy.deepcopy(model)).eval(), (3, 8, 8))
    assert result.model.conv1.out_channels == conv1_kept


def test_an_input_too_small_for_alexnet_fails_naming_the_layer():
    with pytest.raises(PrunelabError, match=r"AlexNet fails on the example input .* in layer 'features.12'"):
        compact(tv.models.alexnet(num_classes=10), None, torch.zeros(1, 3, 62, 62))
