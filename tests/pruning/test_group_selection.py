"""Sparse structure selection on the groups of grouped convs (ResNeXt's cardinality), against hand
computations: the convs found, the per-group scale's L1 subgradient, the scale folded exactly into the
BatchNorm, the groups removed by the rule, the compacted ResNeXt equal to the masked one with fewer
groups and a hand-counted parameter total, its export loaded back, and the method end to end."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_outputs, random_norms
from torch import nn

from prunelab.compress import compact, export_compact, load_compact
from prunelab.errors import SpecError
from prunelab.experiments import load_level
from prunelab.models import build_model, count_parameters
from prunelab.models.vision import import_torchvision
from prunelab.pruning import Mask, PruneContext, PruneSpec, prune
from prunelab.pruning.groups import grouped_convs, select_groups
from prunelab.pruning.selection import (
    GROUP_SCALE,
    StructureSelection,
    StructureSelectionSettings,
    residual_blocks,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 32, 32)


def torchvision():
    try:
        return import_torchvision()
    except SpecError:  # not installed (CI installs it)
        pytest.skip("torchvision is not installed")


def resnext(seed: int = 1) -> nn.Module:
    """torchvision's ResNet of Bottlenecks with 4 groups of 4 channels per 64 planes, one block a stage."""
    resnet = torchvision().models.resnet
    torch.manual_seed(seed)
    model = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4, num_classes=5)
    return random_norms(model, seed)


def groups_spec(rate: float) -> PruneSpec:
    return PruneSpec(method="structure-selection", rate=rate, structure_selection={"unit": "groups"})


def without(model: nn.Module, removed: dict[str, set[int]], rate: float, notes=None) -> Mask:
    """Structure selection's mask when the groups ``removed`` learned the smallest scales."""
    scales = {
        c.unit(g): (-0.01 if g % 2 else 0.01) * (g + 1) if g in removed.get(c.conv, ()) else 1.0 + g
        for c in grouped_convs(model)
        for g in range(c.groups)
    }
    context = PruneContext(reports={"structure-selection": {"scales": scales}}, notes=notes)
    return prune(model, None, groups_spec(rate), context=context)


def test_the_grouped_convs_of_a_resnext_and_a_model_without_any():
    found = grouped_convs(resnext())
    assert [(c.conv, c.norm, c.groups, c.in_per_group, c.out_per_group) for c in found] == [
        (f"layer{s}.0.conv2", f"layer{s}.0.bn2", 4, w, w) for s, w in ((1, 4), (2, 8), (3, 16), (4, 32))
    ]
    # a Sequential's grouped conv counts with the BatchNorm after it; depthwise convs never do
    seq = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8))
    assert [(c.conv, c.norm) for c in grouped_convs(seq)] == [("0", "1")]
    plain = build_model("resnet20", input_shape=(1, 8, 8), num_classes=4)
    with pytest.raises(SpecError, match=r"ResNet has none \(a grouped conv is an nn.Conv2d with 1 < groups"):
        prune(plain, None, groups_spec(0.5))
    with pytest.raises(SpecError, match="torchvision:resnext50_32x4d"):
        StructureSelection(StructureSelectionSettings(unit="groups")).check(plain, torch.zeros(1, 1, 8, 8))


def test_a_group_scale_has_the_subgradient_s_sign_and_folds_exactly():
    model, plain = resnext(), resnext()
    plugin = StructureSelection(StructureSelectionSettings(penalty=0.03, unit="groups"))
    plugin.check(model, torch.zeros(1, *SHAPE))
    model = plugin.swap(model)
    scales = [getattr(model.get_submodule(c.conv), GROUP_SCALE) for c in plugin.units.convs]
    assert [tuple(s.shape) for s in scales] == [(4,)] * 4
    with torch.no_grad():
        for i, scale in enumerate(scales):
            scale.copy_(torch.tensor([0.7, -0.2, 0.0, 1.3]) + 0.01 * i)
    x = torch.randn(4, *SHAPE)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    before = [s.grad.clone() for s in scales]
    # every group's scale is in the graph (a zero scale meets relu at 0, whose gradient torch takes as 0)
    assert all(bool((g != 0).eq(s != 0).all()) for g, s in zip(before, scales, strict=True))
    plugin.after_backward(model)
    for scale, grad in zip(scales, before, strict=True):
        assert torch.equal(scale.grad, grad + 0.03 * torch.sign(scale.detach()))
    # the scale multiplies its group's channels of bn2, and only those: conv3 reads relu(bn2(.) * scale)
    model.eval()
    block, seen = model.layer1[0], {}
    block.conv2.register_forward_hook(lambda m, a, out: seen.setdefault("conv2", out.clone()))
    block.conv3.register_forward_pre_hook(lambda m, a: seen.setdefault("conv3", a[0].clone()))
    with torch.no_grad():
        expected = model(x)
        bn2 = block.bn2
        bare = F.batch_norm(
            seen["conv2"], bn2.running_mean, bn2.running_var, bn2.weight, bn2.bias, eps=bn2.eps
        )
        per_channel = torch.tensor([0.7, -0.2, 0.0, 1.3]).repeat_interleave(4)[:, None, None]
        torch.testing.assert_close(seen["conv3"], F.relu(bare * per_channel))
        restored, mask = plugin.restore(model)
    assert mask is None and not any(GROUP_SCALE in n for n, _ in restored.named_parameters())
    assert set(restored.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored(x), expected)
    report = plugin.report()["scales"]
    assert len(report) == 16 and report["layer2.0.conv2[1]"] == pytest.approx(-0.19)


def test_the_smallest_group_scales_go_but_every_conv_keeps_one():
    scales = [[0.5, -0.1, 0.3], [0.05, 0.02], [0.9, -0.3, 0.3, 0.7]]
    # round(0.5 * 9) = 4 go: 0.02; 0.05 would empty conv 1 (spared); 0.1; then three tie at 0.3:
    # conv 0's group 2 (the earlier conv) and conv 2's group 1 (its earlier group) go
    keep, spared = select_groups(scales, 0.5)
    assert keep == [[True, False, False], [True, False], [True, False, True, True]]
    assert spared == [1]
    assert select_groups(scales, 0.0) == ([[True] * 3, [True] * 2, [True] * 4], [])
    # at rate 1 every conv keeps its largest group
    assert select_groups(scales, 1.0)[0] == [[True, False, False], [True, False], [True, False, False, False]]


def test_removed_groups_are_masked_and_compacted_into_a_conv_with_fewer_groups(tmp_path):
    model = resnext()
    notes = []
    mask = without(model, {"layer2.0.conv2": {1, 3}}, 2 / 16, notes)
    assert notes == ["structure-selection: layer2.0.conv2 groups 1, 3 (|scale| 0.02, 0.04) removed"]
    rows = mask["layer2.0.conv2.weight"].flatten(1).any(1)
    assert rows.tolist() == [g in (0, 2) for g in range(4) for _ in range(8)]
    assert mask["layer2.0.bn2.weight"].tolist() == rows.tolist() == mask["layer2.0.bn2.bias"].tolist()
    assert sum(int((~m).sum()) for _, m in mask.items()) == 16 * 8 * 9 + 2 * 16  # nothing else masked
    masked = mask.apply(copy.deepcopy(model)).eval()
    result = compact(model, mask, torch.zeros(1, *SHAPE))
    small = result.model
    assert_same_outputs(small, masked, SHAPE)
    conv2 = small.layer2[0].conv2
    assert (conv2.groups, conv2.in_channels, conv2.out_channels) == (2, 16, 16)
    assert (small.layer2[0].conv1.out_channels, small.layer2[0].bn1.num_features) == (16, 16)
    assert (small.layer2[0].bn2.num_features, small.layer2[0].conv3.in_channels) == (16, 16)
    assert small.layer1[0].conv2.groups == 4 and small.layer3[0].conv2.groups == 4
    assert result.removed_groups == {"layer2.0.conv2": (1, 3)}
    kept = [i for g in (0, 2) for i in range(8 * g, 8 * g + 8)]
    assert result.kept_channels["layer2.0.conv1"] == kept == result.kept_channels["layer2.0.conv2"]
    # conv1 rows 16 x 256 in, bn1 and bn2 2 x 16, conv2 16 filters of 8 x 3 x 3, conv3 512 x 16 columns
    assert (
        count_parameters(model) - count_parameters(small)
        == 16 * 256 + 2 * 16 + 16 * 8 * 9 + 2 * 16 + 512 * 16
    )
    # exported and loaded back: the plan records the groups count
    factory = tmp_path / "tiny_resnext.py"
    factory.write_text(
        "from prunelab.models.vision import import_torchvision\n\n"
        "def make(num_classes, input_shape):\n"
        "    resnet = import_torchvision().models.resnet\n"
        "    return resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4, "
        "num_classes=num_classes)\n"
    )
    out = export_compact(
        result, tmp_path / "export", model=f"{factory}:make", num_classes=5, input_shape=SHAPE
    )
    plan = json.loads((out / "plan.json").read_text())
    assert plan["layers"]["layer2.0.conv2"]["attrs"]["groups"] == 2 and plan["removed_groups"] == {
        "layer2.0.conv2": [1, 3]
    }
    loaded = load_compact(out)
    assert loaded.layer2[0].conv2.groups == 2
    assert_same_outputs(loaded, small, SHAPE)


def test_grouped_convs_not_pruned_by_whole_groups_keep_their_groups():
    model = resnext()
    entries = dict(Mask.ones(model).items())
    entries["layer3.0.conv2.weight"][:3] = False  # 3 of group 0's 16 filters: the group stays
    mask = Mask(entries)
    result = compact(model, mask, torch.zeros(1, *SHAPE))
    assert result.model.layer3[0].conv2.groups == 4 and "layer3.0.conv2" not in result.removed_groups
    assert_same_outputs(result.model, mask.apply(copy.deepcopy(model)).eval(), SHAPE)
    # an unpruned ResNeXt compacts as it is, and whole blocks leave it with their grouped conv
    result = compact(model, None, torch.zeros(1, *SHAPE))
    assert result.removed_groups == {} and count_parameters(result.model) == count_parameters(model)
    scales = {b.name: 0.01 if b.name == "layer2.0" else 1.0 for b in residual_blocks(model)}
    context = PruneContext(reports={"structure-selection": {"scales": scales}})
    mask = prune(model, None, PruneSpec(method="structure-selection", rate=0.25), context=context)
    result = compact(model, mask, torch.zeros(1, *SHAPE))
    assert result.removed_blocks == ("layer2.0",) and result.removed_groups == {}
    assert_same_outputs(result.model, mask.apply(copy.deepcopy(model)).eval(), SHAPE)


FACTORY = """\
from torch import nn
from prunelab.models.vision import import_torchvision


def make(num_classes, input_shape):
    block = import_torchvision().models.resnet.Bottleneck
    down = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        block(16, 8, downsample=down, groups=4, base_width=32), block(32, 8, groups=4, base_width=32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
"""


def test_group_selection_from_the_command_line(cli, tmp_path):
    torchvision()
    factory = tmp_path / "tiny_resnext.py"
    factory.write_text(FACTORY)
    root = tmp_path / "runs"
    args = [
        "--model", f"{factory}:make", "--data", "synthetic", "--epochs", "1", "--batch-size", "64",
        "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--method", "structure-selection",
        "--structure-selection-unit", "groups", "--structure-selection-penalty", "0.05", "--rate", "0.5",
        "--treatment", "finetune", "--root", root, "--no-progress", "--threads", "1",
    ]  # fmt: skip
    code, out, err = cli("run", *args)
    assert code == 0, err
    text = " ".join((out + err).split())
    assert "learned scales |lambda| of 8 groups" in text and text.count(") removed") == 2  # one note per conv
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    loaded = load_level(run, root=root)
    gone = {
        c.conv: [g for g in range(c.groups) if not loaded.mask[f"{c.conv}.weight"][c.outputs(g)].any()]
        for c in grouped_convs(loaded.model)
    }
    assert sum(map(len, gone.values())) == 4 and all(1 <= len(g) <= 3 for g in gone.values())
    code, out, err = cli("export", run, "--root", root, "-o", tmp_path / "small")
    assert code == 0, err
    small = load_compact(tmp_path / "small")
    assert [small.get_submodule(c).groups for c in gone] == [4 - len(g) for g in gone.values()]
    shape = tuple(loaded.spec.data_info.input_shape)
    assert_same_outputs(small, loaded.mask.apply(copy.deepcopy(loaded.model)).eval(), shape)
    code, out, err = cli("count", run, "--root", root)
    assert code == 0, err
    assert "conv groups removed: 3.conv2" in " ".join(out.split())
    bad = [a if a != f"{factory}:make" else "resnet20" for a in args]
    code, _, err = cli("run", *bad)
    assert code == 2 and "has none (a grouped conv is an nn.Conv2d" in " ".join(err.split())
    assert "Traceback" not in err
