"""PCA layer shrinking (issue 15): exact at the outputs' rank, the variance rule, export round trip."""

import pytest
import torch
from torch import nn

from prunelab.compress.pca import Factorized, choose_rank, shrink
from prunelab.errors import SpecError

pytestmark = pytest.mark.usefixtures("one_thread")


def low_rank_net(rank: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(10, rank) @ torch.randn(rank, 12))  # outputs span rank dims
    return net.eval()


def test_at_the_outputs_rank_the_shrunken_layer_is_exact():
    net = low_rank_net(3)
    batches = [(torch.randn(64, 12), torch.zeros(64))]
    result = shrink(net, batches, layers=["0"], ranks={"0": 3})
    assert isinstance(result.model[0], Factorized) and result.model[0].rank == 3
    x = torch.randn(32, 12)  # new inputs: the outputs' span is the weight's, so still exact
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), net(x), rtol=1e-4, atol=1e-5)
    assert result.explained["0"][2] == pytest.approx(1.0, abs=1e-6)
    assert sum(p.numel() for p in result.model[0].parameters()) == 3 * 12 + 3 + 10 * 3 + 10
    with torch.no_grad():
        assert not torch.allclose(
            shrink(net, batches, layers=["0"], ranks={"0": 2}).model(x), net(x), atol=1e-3
        )


def test_the_variance_rule_picks_the_smallest_rank_reaching_the_fraction():
    values = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.5])  # cumulative 0.5, 0.8, 0.9, 0.95, 1.0
    assert [choose_rank(values, v) for v in (0.5, 0.79, 0.8, 0.9, 0.95, 0.96, 1.0)] == [1, 2, 2, 3, 4, 5, 5]
    net = low_rank_net(3)
    result = shrink(net, [(torch.randn(200, 12), torch.zeros(200))], layers=["0"], variance=0.999)
    assert result.ranks == {"0": 3}
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(SpecError, match="must be in \\(0, 1\\]"):
            choose_rank(values, bad)


def test_conv_layers_shrink_too_and_a_factorisation_that_is_not_smaller_is_skipped():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    with torch.no_grad():
        net[0].weight.copy_((torch.randn(16, 2) @ torch.randn(2, 27)).reshape(16, 3, 3, 3))
        net[0].bias.zero_()
    batches = [(torch.randn(8, 3, 10, 10), torch.zeros(8))]
    result = shrink(net, batches, layers=["0", "2"], ranks={"0": 2, "2": 4})
    x = torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), net(x), rtol=1e-4, atol=1e-4)
    assert "2" in result.kept_dense and "would not be smaller" in result.kept_dense["2"]
    with pytest.raises(SpecError, match=r"rank 40 is not in 1\.\.16"):
        shrink(net, batches, layers=["0"], ranks={"0": 40})
    with pytest.raises(SpecError, match="replaces Linear and ungrouped Conv2d layers; 1 is ReLU"):
        shrink(net, batches, layers=["1"])


def test_shrink_through_the_cli_exports_a_loadable_smaller_model(cli, tmp_path):
    from prunelab.compress.export import load_compact
    from prunelab.experiments import load_level

    root = tmp_path / "runs"
    code, out, err = cli("run", "--model", "lenet-300-100", "--data", "digits", "--iterations", 40, "--rounds", 1,
                         "--root", root, "--no-progress")  # fmt: skip
    assert code == 0, err
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    code, out, err = cli("shrink", run, "--root", root, "-o", tmp_path / "small", "--variance", 0.9,
                         "--plot", tmp_path / "pca.png")  # fmt: skip
    assert code == 0, err
    assert "rank kept" in out and "test accuracy" in out
    small = load_compact(tmp_path / "small")
    level = load_level(run, root=root)
    assert isinstance(small.fc1, Factorized) and small.fc1.rank < 300
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in level.model.parameters())
    assert (tmp_path / "pca.png").stat().st_size > 1000
    code, _, err = cli("shrink", run, "--root", root, "-o", tmp_path / "bad", "--variance", 1.5)
    assert code == 2 and "must be in (0, 1]" in err
    code, _, err = cli("shrink", run, "--root", root, "-o", tmp_path / "bad", "--images", 10**7)
    assert code == 2 and "--images must be in 1.." in err
