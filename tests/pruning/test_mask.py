import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelab.errors import CheckpointError, MaskError
from prunelab.pruning import Mask, from_torch_prune, prunable_names, sparsity_report


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )


def test_prunable_defaults_are_conv_and_linear_weights_only():
    assert prunable_names(convnet()) == ["0.weight", "4.weight"]
    assert prunable_names(convnet(), include_bias=True) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert prunable_names(convnet(), include_norm=True) == ["0.weight", "1.weight", "1.bias", "4.weight"]


def test_apply_zeroes_exactly_the_pruned_weights_and_keeps_state_dict_standard():
    model = mlp()
    before = model[0].weight.detach().clone()
    mask = Mask.ones(model)
    keep = mask["0.weight"].clone()
    keep[0, :3] = False
    mask = Mask({"0.weight": keep, "2.weight": mask["2.weight"]})
    mask.apply(model)
    assert (model[0].weight[0, :3] == 0).all()
    assert torch.equal(model[0].weight[1:], before[1:])
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_counts_and_density_by_hand():
    model = mlp()
    mask = Mask.ones(model)
    m = mask["0.weight"].clone()
    m[:, :3] = False  # 15 of 30 pruned
    mask = Mask({"0.weight": m, "2.weight": mask["2.weight"]})
    assert mask.num_total() == 30 + 15
    assert mask.num_kept() == 15 + 15
    assert mask.density() == pytest.approx(30 / 45)
    assert mask.layer_density() == {"0.weight": 0.5, "2.weight": 1.0}


def test_sparsity_report_counts_all_and_prunable_parameters_separately():
    model = mlp()
    m = torch.ones(5, 6, dtype=torch.bool)
    m[:, :3] = False
    mask = Mask({"0.weight": m, "2.weight": torch.ones(3, 5, dtype=torch.bool)})
    mask.apply(model)
    report = sparsity_report(model, mask)
    assert report.total_params == 30 + 5 + 15 + 3
    assert report.prunable_params == 45
    assert report.prunable_kept == 30
    assert report.total_kept == 53 - 15
    assert report.prunable_sparsity == pytest.approx(15 / 45)
    assert report.sparsity == pytest.approx(15 / 53)
    first = report.layers[0]
    assert (first.layer, first.params, first.prunable, first.kept) == ("0", 35, 30, 20)


def test_mask_that_does_not_fit_is_refused_naming_the_problem():
    model = mlp()
    with pytest.raises(MaskError, match=r"'fc9.weight'"):
        Mask({"fc9.weight": torch.ones(2, 2, dtype=torch.bool)}).check_fits(model)
    with pytest.raises(
        MaskError, match=r"'0.weight' has shape \(6, 5\) but the parameter has shape \(5, 6\)"
    ):
        Mask({"0.weight": torch.ones(6, 5, dtype=torch.bool)}).apply(model)
    with pytest.raises(MaskError, match="other than 0 and 1"):
        Mask({"0.weight": torch.full((5, 6), 0.5)})


def test_save_load_roundtrip(tmp_path):
    model = convnet()
    mask = Mask(
        {n: torch.rand_like(p) > 0.5 for n, p in model.named_parameters() if n in prunable_names(model)}
    )
    mask.save(tmp_path / "m.safetensors")
    assert Mask.load(tmp_path / "m.safetensors") == mask


def test_truncated_mask_file_gives_clear_error(tmp_path):
    mask = Mask.ones(mlp())
    path = tmp_path / "m.safetensors"
    mask.save(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"m\.safetensors"):
        Mask.load(path)


def test_export_matches_torch_prune_state_dict_and_imports_back():
    ours, theirs = mlp(), mlp()
    torch_prune.l1_unstructured(theirs[0], "weight", amount=0.4)
    torch_prune.random_unstructured(theirs[2], "weight", amount=0.2)
    reference = theirs.state_dict()
    plain, mask = from_torch_prune(reference)
    assert torch.equal(mask["0.weight"], theirs[0].weight_mask.bool())
    ours.load_state_dict(plain)
    mask.apply(ours)
    x = torch.randn(4, 6)
    assert torch.allclose(ours(x), theirs(x))
    exported = mask.to_torch_prune(ours)
    assert set(exported) == set(reference)
    for key, value in reference.items():
        assert torch.allclose(
            exported[key],
            value * (reference.get(key.replace("_orig", "_mask"), 1)) if key.endswith("_orig") else value,
        )


def test_torch_prune_file_with_weights_only_loading(tmp_path):
    theirs = mlp()
    torch_prune.l1_unstructured(theirs[0], "weight", amount=0.5)
    torch.save(theirs.state_dict(), tmp_path / "pruned.pt")
    mask = Mask.load(tmp_path / "pruned.pt")
    assert mask.names() == ["0.weight"]
    assert mask.num_kept() == 15


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the hostile file's protocol
def test_pickled_code_is_never_executed(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('pwned')",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"0.weight_mask": Evil()}))
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        Mask.load(path)
    assert not (tmp_path / "pwned").exists()
