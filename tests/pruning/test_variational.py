"""Sparse variational dropout against hand computations: the KL approximation at given log alpha, the
local reparameterisation, the log alpha > 3 rule, conversion back to plain layers with the same eval
outputs, the KL term's scale and warm-up, an exact resume, and the method from the command line."""

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from helpers import killed_at_epoch_end
from torch import nn

from prunelab.data import load_dataset
from prunelab.pruning.variational import (
    K1,
    K2,
    K3,
    SparseVD,
    SparseVDSettings,
    VariationalConv2d,
    VariationalLinear,
    kl_approximation,
)
from prunelab.training import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))


def test_the_kl_approximation_against_the_formula():
    assert (K1, K2, K3) == (0.63576, 1.87320, 1.48695)
    values = [-8.0, -3.0, 0.0, 1.5, 3.0, 8.0]
    for la, kl in zip(
        values, kl_approximation(torch.tensor(values, dtype=torch.float64)).tolist(), strict=True
    ):
        sigmoid = 1 / (1 + math.exp(-(K2 + K3 * la)))
        neg_kl = K1 * sigmoid - 0.5 * math.log(1 + math.exp(-la)) - K1  # Molchanov et al., eq. 14
        assert kl == pytest.approx(-neg_kl, rel=1e-12)
    assert kl_approximation(torch.tensor(8.0)) < 1e-3 < kl_approximation(torch.tensor(-8.0))


def with_log_alpha(layer: VariationalLinear, log_alpha: torch.Tensor) -> VariationalLinear:
    with torch.no_grad():
        layer.log_sigma2.copy_(log_alpha + torch.log(layer.weight**2 + 1e-8))
    return layer


def test_log_alpha_is_clipped_and_the_rule_keeps_log_alpha_up_to_3():
    torch.manual_seed(1)
    layer = VariationalLinear(nn.Linear(5, 3), threshold=3.0, log_sigma2=-10.0)
    wanted = torch.tensor(
        [[-9.0, -1.0, 2.9, 3.0, 3.1], [4.0, 8.5, 0.0, -8.0, 7.0], [1.0, 2.0, 5.0, -2.0, 3.5]]
    )
    with_log_alpha(layer, wanted)
    torch.testing.assert_close(layer.log_alpha(), wanted.clamp(-8, 8), atol=1e-4, rtol=0)
    expected = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 0], [1, 1, 0, 1, 0]], dtype=torch.bool)
    # 3.0 itself sits on the boundary: computed back through the log it may land either side
    kept = layer.kept()
    kept[0, 3] = True
    assert torch.equal(kept, expected)


def test_training_draws_the_preactivations_by_local_reparameterisation():
    torch.manual_seed(2)
    plain = nn.Linear(6, 4)
    layer = VariationalLinear(plain, threshold=3.0, log_sigma2=-10.0)
    with_log_alpha(layer, torch.linspace(-4, 2, 24).reshape(4, 6))
    x = torch.randn(3, 6)
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    eps = torch.randn(3, 4)
    alpha = torch.exp(layer.log_alpha())
    mean = x @ layer.weight.T + layer.bias
    var = (x**2) @ (alpha * layer.weight**2).T
    torch.testing.assert_close(out, mean + torch.sqrt(var + 1e-8) * eps)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_conversion_back_gives_a_plain_layer_with_the_same_eval_outputs(kind):
    torch.manual_seed(3)
    if kind == "linear":
        layer, x = VariationalLinear(nn.Linear(8, 5), 3.0, -10.0), torch.randn(4, 8)
    else:
        conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        layer, x = VariationalConv2d(conv, 3.0, -10.0), torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        layer.log_sigma2.normal_(0, 3)
    plain, keep = layer.plain()
    assert type(plain) in (nn.Linear, nn.Conv2d) and 0 < int(keep.sum()) < keep.numel()
    assert torch.equal(keep, layer.kept()) and (plain.weight[~keep] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), layer.eval()(x))


def test_the_kl_term_is_scaled_by_the_training_size_and_warmed_up(data):
    settings = SparseVDSettings(kl_weight=0.5, kl_warmup="10it")
    plugin = SparseVD(settings)
    trainer = Trainer(mlp(), data, TrainConfig(iterations=1, batch_size=64), hooks=[plugin])
    assert trainer.step_kind == "autograd"
    plugin.start(trainer)
    model = trainer.model
    kl = sum(kl_approximation(m.log_alpha()).sum() for m in (model[1], model[3]))
    assert plugin.loss(model, None, None) is None  # iteration 0: the warm-up starts at 0
    trainer.iteration = 4
    torch.testing.assert_close(plugin.loss(model, None, None), 0.5 * 0.4 * kl / len(data.train))
    trainer.iteration = 25
    torch.testing.assert_close(plugin.loss(model, None, None), 0.5 * kl / len(data.train))


def test_a_variational_training_killed_mid_way_resumes_with_identical_numbers(data):
    cfg = TrainConfig(epochs=3, batch_size=64, eval_every="5it", optimizer="adam", lr=1e-2)
    settings = SparseVDSettings(kl_weight=20.0, kl_warmup="1ep")
    straight = Trainer(mlp(), data, cfg, seed=4, hooks=[SparseVD(settings)])
    expected = straight.run()
    assert [type(m) for m in straight.model] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert 0 < expected.mask.density() < 1  # some log alpha went over 3
    saved = killed_at_epoch_end(Trainer(mlp(), data, cfg, seed=4, hooks=[SparseVD(settings)]))
    assert "1.log_sigma2" in saved["model"]
    resumed = Trainer(mlp(), data, cfg, seed=4, hooks=[SparseVD(settings)])
    resumed.load_state_dict(saved)
    result = resumed.run()
    assert [asdict(r) for r in result.history] == [asdict(r) for r in expected.history]
    assert result.mask == expected.mask
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)
    x = data.test.x[:16]
    with torch.no_grad():  # the plain model's pruned weights are zero: its outputs need no mask
        assert torch.equal(straight.model.eval()(x), F.linear(F.relu(F.linear(x.flatten(1), straight.model[1].weight, straight.model[1].bias)), straight.model[3].weight, straight.model[3].bias))  # fmt: skip


def test_sparse_vd_from_the_command_line(cli, tmp_path):
    root = tmp_path / "runs"
    args = [
        "--model", "lenet-300-100", "--data", "synthetic", "--epochs", "2", "--batch-size", "64",
        "--optimizer", "adam", "--lr", "0.001", "--method", "sparse-vd", "--sparse-vd-kl-warmup", "1ep",
        "--treatment", "finetune", "--finetune-epochs", "1", "--controls", "random-mask",
    ]  # fmt: skip
    code, out, err = cli("run", *args, "--root", root, "--no-progress", "--threads", "1")
    assert code == 0, err
    assert "sparse-vd keeps the weights its variational training left" in " ".join((out + err).split())
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    from prunelab.experiments import load_level

    dense, level = load_level(run, level=0, root=root), load_level(run, level=1, root=root)
    assert dense.metrics.environment["step"] == "autograd" and level.metrics.environment["step"] != "autograd"
    assert level.metrics.density == pytest.approx(dense.metrics.density) and level.metrics.density < 1
    code, _, err = cli("report", run, "--root", root, "-o", tmp_path / "report", "--no-ensembles", "--no-svg")
    assert code == 0, err
    for bad, needle in [(("--sparse-vd-kl-warmup", "soon"), "kl_warmup"), (("--rounds", "2"), "rounds 1")]:
        code, _, err = cli("run", "--data", "synthetic", "--method", "sparse-vd", "--root", root, *bad)
        assert code == 2 and needle in " ".join(err.split()), err
        assert "Traceback" not in err


# Bayesian compression ------------------------------------------------------------------------------
def group_layer(kind: str, seed: int):
    from prunelab.pruning.bayesian import GroupConv2d, GroupLinear

    torch.manual_seed(seed)
    if kind == "linear":
        layer, x = GroupLinear(nn.Linear(6, 4), -3.0, -9.0), torch.randn(3, 6)
    else:
        layer, x = GroupConv2d(nn.Conv2d(3, 5, 3, padding=1, stride=2), -3.0, -9.0), torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        layer.z_logvar.copy_(torch.linspace(-6, 1, layer.z_mu.numel()))
        layer.z_mu.copy_(torch.linspace(0.5, 1.5, layer.z_mu.numel()))
        layer.weight_logvar.normal_(-4, 1)
    return layer, x


def test_bayesian_compression_kl_and_sampling_against_the_formulas():
    layer, x = group_layer("linear", 0)
    log_alpha = layer.z_logvar - torch.log(layer.z_mu**2 + 1e-8)
    torch.testing.assert_close(layer.log_alpha(), log_alpha)
    sigma2, mu = layer.weight_logvar.exp(), layer.weight
    expected = kl_approximation(log_alpha).sum() + (0.5 * (sigma2 + mu**2 - layer.weight_logvar - 1)).sum()
    torch.testing.assert_close(layer.kl(), expected)
    torch.manual_seed(7)
    out = layer.train()(x)
    torch.manual_seed(7)
    z = layer.z_mu + torch.exp(0.5 * layer.z_logvar) * torch.randn(3, 6)  # one scale per example and unit
    xz = x * z
    mean, var = xz @ mu.T + layer.bias, (xz**2) @ sigma2.T
    torch.testing.assert_close(out, mean + torch.sqrt(var + 1e-8) * torch.randn(3, 4))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_bayesian_compression_converts_back_with_the_pruned_units_columns_at_zero(kind):
    layer, x = group_layer(kind, 1)
    kept = layer.log_alpha() <= -3.0
    assert 0 < int(kept.sum()) < kept.numel()
    plain, keep = layer.plain()
    assert type(plain) in (nn.Linear, nn.Conv2d)
    columns = keep.reshape(keep.shape[0], keep.shape[1], -1)
    assert torch.equal(columns.all(2).all(0), kept) and torch.equal(columns.any(2).any(0), kept)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), layer.eval()(x))


def test_bayesian_compression_end_to_end_units_removed_by_the_compaction(cli, tmp_path):
    from prunelab.compress import compact
    from prunelab.experiments import load_level

    root = tmp_path / "runs"
    args = [
        "--model", "lenet-300-100", "--data", "synthetic", "--epochs", "6", "--batch-size", "64",
        "--optimizer", "adam", "--lr", "0.02", "--method", "bayesian-compression",
        "--bayesian-compression-kl-weight", "10", "--bayesian-compression-kl-warmup", "2ep",
        "--treatment", "finetune", "--finetune-epochs", "1", "--controls", "reinit",
    ]  # fmt: skip
    code, _, err = cli("run", *args, "--root", root, "--no-progress", "--threads", "1")
    assert code == 0, err
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    level = load_level(run, level=1, root=root)
    fc2_columns = level.mask["fc2.weight"].any(0)  # fc1's units that fc2 still reads
    assert 0 < int(fc2_columns.sum()) < 300
    result = compact(level.model, level.mask, torch.zeros(1, 1, 8, 8))
    assert result.model.fc1.out_features == int(fc2_columns.sum())  # the unused units are gone
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), level.model.eval()(x), atol=1e-5, rtol=1e-5)
    code, _, err = cli("report", run, "--root", root, "-o", tmp_path / "report", "--no-ensembles", "--no-svg")
    assert code == 0, err
