"""Whole residual blocks leave the architecture when compaction sees their branch masked to 0:
prunelab's and torchvision's ResNets (identity and projection shortcuts), counted by hand, exported
and loaded back, and the structure-selection method end to end through the command line."""

import copy
import json

import pytest
import torch
from helpers import assert_same_outputs, random_norms, selection_run
from torch import nn

from prunelab.compress import compact, count, export_compact, load_compact
from prunelab.compress.blocks import ShortcutBlock
from prunelab.errors import CheckpointError, SpecError
from prunelab.experiments import load_level
from prunelab.models import build_model, count_parameters
from prunelab.models.vision import import_torchvision
from prunelab.pruning import Mask, PruneContext, PruneSpec, prune
from prunelab.pruning.selection import residual_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def without(model: nn.Module, removed: set[str], rate: float | None = None) -> Mask:
    """Structure selection's mask when the blocks ``removed`` learned the smallest scales."""
    blocks = residual_blocks(model)
    scales = {b.name: 0.01 * i if b.name in removed else 1.0 + i for i, b in enumerate(blocks)}
    context = PruneContext(reports={"structure-selection": {"scales": scales}})
    spec = PruneSpec(method="structure-selection", rate=rate or len(removed) / len(blocks))
    return prune(model, None, spec, context=context)


def modules(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


def check_removed(model: nn.Module, mask: Mask, removed: tuple[str, ...], shape, branch_params: int):
    """Compacted: the blocks are ShortcutBlocks with the original shortcut, nothing else changed."""
    result = compact(model, mask, torch.zeros(1, *shape))
    small = result.model
    assert result.removed_blocks == removed and not any(result.removed.values())
    for name in removed:
        assert isinstance(small.get_submodule(name), ShortcutBlock)
        assert not {f"{name}.conv1", f"{name}.bn1", f"{name}.conv2", f"{name}.bn2"} & modules(small)
    assert_same_outputs(small, mask.apply(copy.deepcopy(model)).eval(), shape)
    assert count_parameters(small) == count_parameters(model) - branch_params
    return result


def test_blocks_leave_a_prunelab_resnet_and_a_projection_shortcut_stays(tmp_path):
    shape = (1, 8, 8)
    model = random_norms(build_model("resnet20", input_shape=shape, num_classes=4, seed=0), 1)
    mask = without(model, {"layer2.0", "layer3.2"})
    # layer2.0 (16 -> 32, stride 2): conv1 16*32*9, conv2 32*32*9, two BatchNorms of 2*32
    # layer3.2 (64 -> 64): two convs of 64*64*9 and two BatchNorms of 2*64
    branches = (16 * 32 * 9 + 32 * 32 * 9 + 4 * 32) + (2 * 64 * 64 * 9 + 4 * 64)
    result = check_removed(model, mask, ("layer2.0", "layer3.2"), shape, branches)
    projection = result.model.layer2[0].shortcut
    assert torch.equal(projection.conv.weight, model.layer2[0].shortcut.conv.weight)
    assert isinstance(result.model.layer3[2].shortcut, nn.Identity)
    # MACs per example: layer2.0's convs on 4x4 outputs, layer3.2's on 2x2
    macs = 4 * 4 * 32 * (16 + 32) * 9 + 2 * 2 * 64 * 64 * 9 * 2
    report = count(model, shape, mask, result.model)
    assert report.total("compact_flops") == report.total("flops") - 2 * macs
    assert report.total("compact_params") == count_parameters(result.model)
    # exported: the plan records the blocks, load_compact rebuilds them with the weights
    out = export_compact(result, tmp_path / "export", model="resnet20", num_classes=4, input_shape=shape)
    loaded = load_compact(out)
    assert isinstance(loaded.layer2[0], ShortcutBlock) and modules(loaded) == modules(result.model)
    assert_same_outputs(loaded, result.model, shape)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["removed_blocks"] == ["layer2.0", "layer3.2"]
    plan["layers"]["layer2.0"]["shortcut"] = "downsample"  # not what a prunelab block holds
    (out / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(CheckpointError, match=r"'layer2\.0' is a ShortcutBlock, the model has BasicBlock"):
        load_compact(out)


def test_blocks_leave_a_torchvision_resnet_with_its_downsample():
    try:
        tv = import_torchvision()
    except SpecError:  # not installed (CI installs it)
        pytest.skip("torchvision is not installed")
    shape = (3, 32, 32)
    model = random_norms(tv.models.resnet18(num_classes=10), 2)
    mask = without(model, {"layer1.1", "layer3.0"})
    # layer1.1 (64 -> 64): two convs of 64*64*9, BatchNorms 4*64; layer3.0 (128 -> 256, stride 2)
    branches = (2 * 64 * 64 * 9 + 4 * 64) + (128 * 256 * 9 + 256 * 256 * 9 + 4 * 256)
    result = check_removed(model, mask, ("layer1.1", "layer3.0"), shape, branches)
    downsample = result.model.layer3[0].downsample
    assert isinstance(downsample[0], nn.Conv2d) and downsample[0].stride == (2, 2)
    assert torch.equal(downsample[0].weight, model.layer3[0].downsample[0].weight)
    assert isinstance(result.model.layer1[1].downsample, nn.Identity)  # torchvision's None


def test_bottleneck_blocks_leave_too():
    try:
        tv = import_torchvision()
    except SpecError:
        pytest.skip("torchvision is not installed")
    shape = (3, 16, 16)
    resnet = tv.models.resnet.ResNet(tv.models.resnet.Bottleneck, [2, 1, 1, 1], num_classes=3)
    model = random_norms(resnet, 3)
    mask = without(model, {"layer1.1"})
    # layer1.1: 256 -> 64 (1x1), 64 -> 64 (3x3), 64 -> 256 (1x1); BatchNorms 2*(64 + 64 + 256)
    branch = 256 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256)
    check_removed(model, mask, ("layer1.1",), shape, branch)


class PreActBlock(nn.Module):
    """A pre-activation block: its output is branch + shortcut, with no ReLU after the sum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.conv1(torch.relu(self.bn1(x)))
        return self.conv2(torch.relu(self.bn2(out))) + self.shortcut(x)


def test_a_block_whose_forward_is_not_known_stays():
    model = random_norms(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), PreActBlock(4), PreActBlock(4)))
    mask = without(model, {"1"})
    result = compact(model, mask, torch.zeros(1, 2, 6, 6))
    assert result.removed_blocks == () and isinstance(result.model[1], PreActBlock)
    assert_same_outputs(result.model, mask.apply(copy.deepcopy(model)).eval(), (2, 6, 6))


def test_structure_selection_exports_without_its_removed_blocks(cli, tmp_path):
    root = tmp_path / "runs"
    args = selection_run(tmp_path, (2, 2), 0.5)
    code, out, err = cli("run", *args, "--root", root, "--no-progress", "--threads", "1")
    assert code == 0, err
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    loaded = load_level(run, root=root)
    gone = [b.name for b in residual_blocks(loaded.model) if not loaded.mask[b.params[0]].any()]
    assert len(gone) == 2  # round(0.5 * 4)
    code, out, err = cli("export", run, "--root", root, "-o", tmp_path / "small")
    assert code == 0, err
    assert f"residual blocks removed {', '.join(gone)}" in " ".join(out.split()).replace(" │", "")
    small = load_compact(tmp_path / "small")
    assert all(isinstance(small.get_submodule(name), ShortcutBlock) for name in gone)
    shape = tuple(loaded.spec.data_info.input_shape)
    assert_same_outputs(small, loaded.mask.apply(copy.deepcopy(loaded.model)).eval(), shape)
    code, out, err = cli("count", run, "--root", root)
    assert code == 0, err
    assert f"residual blocks removed: {', '.join(gone)}" in " ".join(out.split())
