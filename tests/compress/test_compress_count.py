"""Parameter and FLOP counts of dense, masked and compacted models, and Ou Yang & Xu's Fig. 2 table."""

import pytest
import torch

from prunelab.compress import compact, count, layer_flops, nonzero_flops, removal_table
from prunelab.models import build_model, count_parameters
from prunelab.pruning import Mask, prune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flops_are_operator_level_with_macs_half_of_them():
    model = build_model("lenet-300-100", seed=0)
    flops = layer_flops(model, (1, 28, 28))
    assert flops == {"fc1": 2 * 784 * 300, "fc2": 2 * 300 * 100, "fc3": 2 * 100 * 10}
    conv = layer_flops(build_model("lenet5", seed=0), (1, 28, 28))
    assert conv["conv1"] == 2 * (6 * 1 * 3 * 3) * 26 * 26  # weights x output positions
    report = count(model, (1, 28, 28))
    rows = {name: values for name, *values in report.summary_rows()}
    assert rows["FLOPs"][0] == sum(flops.values()) and rows["MACs"][0] == sum(flops.values()) // 2
    assert rows["parameters"][0] == count_parameters(model) == 266_610


def test_attention_flops_include_projections_and_products_in_eval_mode():
    """torchvision's ViT in eval mode takes nn.MultiheadAttention's fused fast path, and CPU
    attention a kernel torch has no formula for: both are counted, as the hand formula says."""
    from prunelab.models.vision import import_torchvision

    tv = import_torchvision()
    net = tv.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()
    n, d = 17, 32  # 16 patches and the class token
    per_layer = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * n * d + 2 * (2 * n * d * 64)
    expected = 2 * 3 * 8 * 8 * d * 16 + 2 * per_layer + 2 * d * 10
    flops = layer_flops(net, (3, 32, 32))
    assert sum(flops.values()) == expected
    assert flops["encoder.layers.encoder_layer_0.self_attention"] == 2 * n * d * 4 * d + 2 * 2 * n * n * d
    assert torch.backends.mha.get_fastpath_enabled()  # left as it was


def test_masked_counts_are_non_zeros_and_compact_counts_are_real():
    model = build_model("lenet-300-100", seed=0).eval()
    mask = prune(
        model, None, fraction=0.5, method="l1-structured", structure="structured-output", exclude=["fc3"]
    )
    small = compact(model, mask, torch.zeros(1, 1, 28, 28)).model
    report = count(model, (1, 28, 28), mask, small)
    fc1 = next(x for x in report.layers if x.layer == "fc1")
    assert fc1.params == 784 * 300 + 300
    assert fc1.masked_params == 784 * 150 + 300  # a masked unit's bias stays
    assert fc1.compact_params == 784 * 150 + 150
    assert fc1.masked_flops == fc1.flops // 2 == fc1.compact_flops
    fc2 = next(x for x in report.layers if x.layer == "fc2")
    assert fc2.compact_flops == 2 * 150 * 50 < fc2.masked_flops  # removal also drops the inputs
    assert report.total("compact_params") == count_parameters(small)
    assert report.total("params") > report.total("masked_params") > report.total("compact_params")


def test_unstructured_zeros_count_as_masked_flops_only():
    model = build_model("lenet5", seed=0)
    mask = prune(model, None, fraction=0.8, method="magnitude")
    flops, masked = layer_flops(model, (1, 28, 28)), nonzero_flops(model, (1, 28, 28), mask)
    for name in flops:
        density = float(mask[f"{name}.weight"].float().mean())
        assert masked[name] == round(flops[name] * density)
    assert nonzero_flops(model, (1, 28, 28), Mask.ones(model)) == flops


def test_removal_table_has_masking_above_real_removal():
    rows = removal_table("lenet5", (0.25, 0.5, 0.75), input_shape=(1, 28, 28))
    assert [r.fraction for r in rows] == [0.25, 0.5, 0.75]
    for r in rows:
        assert r.dense == 60_074 and r.removed < r.masked < r.dense
    assert rows[0].removed > rows[1].removed > rows[2].removed
    assert rows[1].removed_pct < 50 < rows[1].masked_pct
