"""Data-driven channel selection (issue 15): ThiNet's greedy choice, LASSO channel selection,
least-squares reconstruction, checked against brute force, scikit-learn and the closed form."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from prunelab.errors import SpecError
from prunelab.pruning import Mask, PruneContext, prune
from prunelab.pruning.calibration import collect, layer_output, least_squares, reconstruct
from prunelab.pruning.channel_selection import greedy_order, lasso_select

pytestmark = pytest.mark.usefixtures("one_thread")


def removal_cost(x: torch.Tensor, removed) -> float:
    return float((x[:, list(removed)].sum(1) ** 2).sum()) if removed else 0.0


def best_subset(x: torch.Tensor, size: int) -> float:
    return min(removal_cost(x, s) for s in itertools.combinations(range(x.shape[1]), size))


def test_thinet_greedy_is_optimal_for_uncorrelated_channels_and_its_gap_is_reported_otherwise():
    g = torch.Generator().manual_seed(0)
    # orthogonal contributions: the cost of a set is the sum of its members' costs, so greedy is optimal
    q, _ = torch.linalg.qr(torch.randn(20, 6, generator=g, dtype=torch.float64))
    x = q * torch.tensor([3.0, 0.5, 2.0, 1.0, 0.1, 4.0], dtype=torch.float64)
    order = greedy_order(x, torch.ones(6, dtype=torch.bool))
    assert order.argsort().tolist() == [4, 1, 3, 2, 0, 5]  # smallest norm first
    for size in range(1, 6):
        chosen = order.argsort()[:size].tolist()
        assert removal_cost(x, chosen) == pytest.approx(best_subset(x, size))
    # correlated channels: two that cancel each other are a better pair than greedy's first choices
    a = torch.randn(30, 1, generator=g, dtype=torch.float64)
    noise = 0.05 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    x = torch.cat([a * 1.0, -a * 1.0, noise[:, :1] + 0.8 * a, noise[:, 1:2] + 0.9 * a], 1)
    order = greedy_order(x, torch.ones(4, dtype=torch.bool))
    greedy = removal_cost(x, order.argsort()[:2].tolist())
    optimum = best_subset(x, 2)
    assert optimum < greedy  # greedy's first pick blocks the cancelling pair
    assert optimum == pytest.approx(removal_cost(x, [0, 1]))
    print(f"ThiNet greedy gap on the correlated case: {greedy:.3f} vs optimum {optimum:.3f}")
    # pruned channels are never candidates and stay first
    alive = torch.tensor([True, False, True, True])
    assert greedy_order(x, alive)[1] == -1 and sorted(greedy_order(x, alive)[alive].tolist()) == [0, 1, 2]


def test_lasso_selects_what_scikit_learn_selects_and_bisects_to_the_count():
    from sklearn.linear_model import Lasso

    g = torch.Generator().manual_seed(1)
    z = torch.randn(200, 8, generator=g, dtype=torch.float64) * torch.tensor(
        [1, 0.05, 2, 0.1, 1.5, 0.02, 0.7, 1.1]
    )
    alive = torch.ones(8, dtype=torch.bool)
    for keep in (2, 4, 6):
        beta = lasso_select(z, alive, keep)
        assert int((beta > 0).sum()) == keep
    beta = lasso_select(z, alive, 4)
    # the same fit by scikit-learn directly: find the alpha giving 4 non-zero coefficients
    y = z.sum(1).numpy()
    coefs = None
    for alpha in np.geomspace(1e-4, 10, 400):
        coef = Lasso(alpha=alpha, fit_intercept=False, max_iter=5000, tol=1e-6).fit(z.numpy(), y).coef_
        if (coef != 0).sum() == 4:
            coefs = coef
            break
    assert coefs is not None
    assert set(np.flatnonzero(coefs)) == set(beta.nonzero().flatten().tolist())
    assert set(beta.nonzero().flatten().tolist()) == {0, 2, 4, 7}  # the four largest contributions


def test_least_squares_is_the_closed_form_and_never_worse_than_no_reconstruction():
    torch.manual_seed(0)
    layer = nn.Conv2d(6, 4, 3, padding=1).double()
    upstream = nn.Conv2d(2, 6, 3, padding=1).double()
    net = nn.Sequential(upstream, nn.ReLU(), layer)
    batches = [(torch.randn(16, 2, 8, 8, dtype=torch.float64), torch.zeros(16))]
    mask = Mask.ones(net)
    mask["2.weight"][:, [1, 4]] = False  # two input channels of the conv pruned
    (samples,) = collect([net], "2", batches, positions=5)
    target = layer_output(samples, layer.weight.detach())
    fitted = least_squares(layer.weight.detach(), mask["2.weight"], samples, target, ridge=0.0)
    x = samples.features()
    cols = mask["2.weight"][0].flatten().nonzero().flatten()
    solution = np.linalg.lstsq(x[:, cols].numpy(), target.numpy(), rcond=None)[0]
    np.testing.assert_allclose(fitted.reshape(4, -1)[:, cols].numpy(), solution.T, rtol=1e-6, atol=1e-8)
    assert bool((fitted[~mask["2.weight"]] == 0).all())
    plain = layer.weight.detach() * mask["2.weight"]
    error = lambda w: float(((layer_output(samples, w) - target) ** 2).sum())  # noqa: E731
    assert error(fitted) <= error(plain) and error(fitted) < 0.9 * error(plain)


def test_reconstruct_refits_only_the_layers_whose_mask_changed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    batches = [(torch.randn(64, 10), torch.zeros(64))]
    mask = prune(net, None, fraction=0.5, method="l1-structured", layers="all", exclude=["0", "4"])
    new = reconstruct(net, None, mask, batches)
    assert list(new) == ["2.weight"] and bool((new["2.weight"][~mask["2.weight"]] == 0).all())
    again = reconstruct(net, mask, mask, batches)
    assert again == {}


def test_thinet_and_lasso_prune_input_channels_and_refuse_what_they_cannot_do():
    from prunelab.models import build_model

    net = build_model("conv2", num_classes=10, input_shape=(1, 28, 28), seed=0)
    data = [(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))]
    for method in ("thinet", "lasso"):
        mask = prune(net, None, fraction=0.5, method=method, layers="conv-only", exclude=["conv1"],
                     context=PruneContext(batches=data))  # fmt: skip
        kept = mask["conv2.weight"].flatten(2).any(2).any(0)
        assert int(kept.sum()) == 32 and bool(mask["conv2.weight"][:, kept].all())
    with pytest.raises(SpecError, match="would remove every input channel of conv1 \\(1 of 1 left\\)"):
        prune(
            net, None, fraction=0.99, method="thinet", layers="conv-only", context=PruneContext(batches=data)
        )
    with pytest.raises(SpecError, match="scope must be 'layerwise'"):
        prune(net, None, fraction=0.5, method="thinet", scope="global", context=PruneContext(batches=data))
    with pytest.raises(SpecError, match="needs structure 'structured-input'"):
        prune(
            net,
            None,
            fraction=0.5,
            method="lasso",
            structure="structured-output",
            context=PruneContext(batches=data),
        )
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(SpecError, match="0 is a grouped conv \\(groups=2\\): exclude it"):
        prune(
            grouped,
            None,
            fraction=0.5,
            method="thinet",
            context=PruneContext(batches=[(torch.randn(2, 4, 8, 8), torch.zeros(2))]),
        )


def test_thinet_lasso_reconstruction_and_sensitivity_through_the_cli(cli, tmp_path):
    from prunelab.compress.export import load_compact
    from prunelab.experiments import load_level

    root = tmp_path / "runs"
    common = ("--model", "conv2", "--data", "digits", "--iterations", "30", "--batch-size", "64",
              "--layers", "conv-only", "--exclude", "conv1", "--rate", "0.5", "--rounds", "1",
              "--treatment", "finetune", "--calibration-images", "128", "--root", root, "--no-progress")  # fmt: skip
    start = {}
    for flags in (
        ("--method", "thinet"),
        ("--method", "thinet", "--reconstruct"),
        ("--method", "lasso", "--reconstruct"),
    ):
        known = set(root.glob("experiments/*"))
        code, out, err = cli("run", *common, *flags)
        assert code == 0, err
        (run,) = [p.name for p in set(root.glob("experiments/*")) - known]
        level = load_level(run, root=root)
        kept = level.mask["conv2.weight"].flatten(2).any(2).any(0)
        assert int(kept.sum()) == 32
        start[flags] = level.metrics.history[0].val_acc  # right after pruning, before fine-tuning
        assert ("reconstructed 1 layer(s) by least squares" in out + err) == ("--reconstruct" in flags)
    assert start[("--method", "thinet")] != start[("--method", "thinet", "--reconstruct")]  # refitted weights
    code, out, err = cli("export", run, "--root", root, "-o", tmp_path / "small")
    assert code == 0, err
    small = load_compact(tmp_path / "small")
    assert small.conv2.in_channels == 32 and small.conv1.out_channels == 32  # conv1's unused filters go
    code, out, err = cli("report", run, "--root", root, "-o", tmp_path / "report")
    assert code == 0 and (tmp_path / "report" / "report.html").stat().st_size > 1000, err
    code, out, err = cli("sensitivity", run, "--root", root, "--level", 0, "--fractions", "0.25,0.5,0.75",
                         "--plot", tmp_path / "sens.png", "--layers", "all")  # fmt: skip
    assert code == 0, err
    text = " ".join(out.split())
    assert "Sensitivity" in text and "--layer-rates" in text and "fc1" in text
    assert (tmp_path / "sens.png").stat().st_size > 1000
    code, _, err = cli("run", *common, "--method", "thinet", "--calibration-images", 100_000)
    assert code == 2 and "calibration_images=100000 is more than the" in err
    code, _, err = cli("run", *common, "--method", "l1-filter", "--reconstruct", "--treatment", "rewind")
    assert code == 2 and "only treatment 'finetune'" in err


def test_sensitivity_prunes_each_layer_alone_without_training():
    from prunelab.analysis.sensitivity import sensitivity
    from prunelab.data import load_dataset
    from prunelab.models import build_model

    data = load_dataset("digits")
    net = build_model("conv2", num_classes=10, input_shape=(1, 8, 8), seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = sensitivity(net, data.val, fractions=(0.5, 0.9))
    assert list(result.accuracy) == ["conv1", "conv2"]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # untouched, untrained
    # by hand: conv1's group alone at 50% of its channels (conv1's filters, conv2's columns), the rest whole
    mask = prune(
        net, None, fraction=0.0, method="l1-filter", layer_rates={"conv1": 0.5}, example=data.val.x[:1]
    )
    gone = ~mask["conv1.weight"].flatten(1).any(1)
    assert int(gone.sum()) == net.conv1.out_channels // 2
    assert torch.equal(~mask["conv2.weight"].transpose(0, 1).flatten(1).any(1), gone)
    assert all(bool(mask[n].all()) for n in mask if n not in ("conv1.weight", "conv2.weight", "conv1.bias"))
    import copy

    from prunelab.training.evaluation import evaluate

    trial = copy.deepcopy(net)
    mask.apply(trial)
    assert result.accuracy["conv1"][0] == evaluate(trial, data.val)[1]
    assert result.rates(1.0) == {"conv1": 0.9, "conv2": 0.9}
    with pytest.raises(SpecError, match="fractions must be in"):
        sensitivity(net, data.val, fractions=(0.5, 1.0))
