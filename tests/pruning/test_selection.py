"""Sparse structure selection against hand computations: the blocks found, the scale folded exactly
into the branch's last BatchNorm, the L1 subgradient, the blocks removed by the rule, the masked block
computing relu(shortcut(x)), compacted outputs equal to the masked ones, and the method end to end."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import random_norms, selection_run

from prunelab.compress import compact
from prunelab.errors import SpecError
from prunelab.models import build_model
from prunelab.pruning import PruneContext, PruneSpec, prune
from prunelab.pruning.selection import (
    SCALE,
    StructureSelection,
    StructureSelectionSettings,
    residual_blocks,
    select_blocks,
)

SHAPE = (1, 8, 8)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


def resnet(seed: int = 0):
    return random_norms(build_model("resnet20", input_shape=SHAPE, num_classes=4, seed=seed), seed + 1)


def test_the_residual_blocks_of_a_resnet():
    blocks = residual_blocks(resnet())
    assert [b.name for b in blocks] == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert blocks[3].last_norm == "layer2.0.bn2"
    assert blocks[3].params == tuple(
        f"layer2.0.{p}"
        for p in ("conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias")
    )  # the shortcut's projection is not part of the branch
    with pytest.raises(SpecError, match=r"has none.*resnet20"):
        prune(build_model("conv2-bn", input_shape=SHAPE), None, PruneSpec(method="structure-selection"))


def test_the_scale_is_folded_exactly_and_its_subgradient_is_s_sign_lambda():
    model, plain = resnet(), resnet()
    plugin = StructureSelection(StructureSelectionSettings(penalty=0.03))
    plugin.check(model, torch.zeros(1, *SHAPE))
    model = plugin.swap(model)
    scales = [getattr(model.get_submodule(b.name), SCALE) for b in plugin.blocks]
    with torch.no_grad():
        for i, scale in enumerate(scales):
            scale.fill_([0.7, -0.2, 0.0][i % 3] + 0.01 * i)
    x = torch.randn(4, *SHAPE)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    before = [s.grad.clone() for s in scales]
    plugin.after_backward(model)
    for scale, grad in zip(scales, before, strict=True):
        assert torch.equal(scale.grad, grad + 0.03 * torch.sign(scale.detach()))
    # the residual branch is scaled: block 2 (lambda 0.02) is nearly its shortcut
    model.eval()
    with torch.no_grad():
        expected = model(x)
        restored, mask = plugin.restore(model)
    assert mask is None and not any(SCALE in n for n, _ in restored.named_parameters())
    assert set(restored.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored(x), expected)
    assert plugin.report()["scales"]["layer1.1"] == pytest.approx(-0.19)


def test_the_smallest_scales_go_and_a_removed_block_is_its_shortcut():
    assert select_blocks([0.5, -0.1, 0.3, 0.1, 0.9], 0.4) == [True, False, True, False, True]  # ties: earlier
    model = resnet()
    scales = {b.name: s for b, s in zip(residual_blocks(model), [0.9, 0.05, 0.8, 0.7, 0.6, -0.01, 0.5, 0.4, 0.3], strict=True)}  # fmt: skip
    notes = []
    context = PruneContext(reports={"structure-selection": {"scales": scales}}, notes=notes)
    mask = prune(model, None, PruneSpec(method="structure-selection", rate=0.25), context=context)
    # round(0.25 * 9) = 2 go: |lambda| 0.01 (layer2.2) and 0.05 (layer1.1)
    assert [n.split()[2] for n in notes] == ["layer1.1", "layer2.2"]
    for block in residual_blocks(model):
        removed = block.name in ("layer1.1", "layer2.2")
        assert all((bool(mask[p].any()) if p in mask else True) != removed for p in block.params)
    masked = mask.apply(copy.deepcopy(model)).eval()
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        inputs = {}
        masked.layer1[1].register_forward_pre_hook(lambda m, a: inputs.setdefault("x", a[0]))
        out = masked(x)
        torch.testing.assert_close(masked.layer1[1](inputs["x"]), F.relu(inputs["x"]))  # identity shortcut
        result = compact(model, mask, torch.zeros(1, *SHAPE))
        torch.testing.assert_close(result.model(x), out, atol=1e-5, rtol=1e-5)
    assert result.removed_blocks == ("layer1.1", "layer2.2") and not any(result.removed.values())
    with pytest.raises(SpecError, match="reported scales for"):
        prune(model, None, PruneSpec(method="structure-selection"), context=PruneContext(reports={}))


def test_structure_selection_from_the_command_line(cli, tmp_path):
    root = tmp_path / "runs"
    args = [*selection_run(tmp_path, (3, 2), 0.3), "--controls", "random-mask"]
    code, out, err = cli("run", *args, "--root", root, "--no-progress", "--threads", "1")
    assert code == 0, err
    text = " ".join((out + err).split())
    assert "learned scales |lambda| of 5 blocks" in text and text.count("removed (|lambda|") == 2
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    code, _, err = cli("report", run, "--root", root, "-o", tmp_path / "report", "--no-ensembles", "--no-svg")
    assert code == 0, err
    code, _, err = cli("run", "--data", "synthetic", "--model", "conv2-bn", "--method", "structure-selection", "--root", root)  # fmt: skip
    assert code == 2 and "residual blocks" in " ".join(err.split()) and "Traceback" not in err
