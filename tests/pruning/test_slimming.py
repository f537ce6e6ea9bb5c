"""Network slimming and early-bird tickets against hand computations: the L1 subgradient, the global
|gamma| threshold, no layer emptied, the compaction of slimmed channels, the early-bird stop rule on
hand-made masks, and a search killed mid-way that finds the same ticket."""

from dataclasses import asdict

import pytest
import torch
from helpers import killed_at_epoch_end
from torch import nn

from prunelab.compress import compact
from prunelab.data import load_dataset
from prunelab.errors import SpecError
from prunelab.experiments import ExperimentRunner, ExperimentSpec
from prunelab.models import build_model
from prunelab.pruning import METHODS, PruneContext, PruneSpec, prune
from prunelab.pruning.early_bird import EarlyBird, EarlyBirdSettings, MaskQueue, hamming
from prunelab.pruning.slimming import (
    SlimmingL1,
    SlimmingSettings,
    alive_channels,
    channel_scales,
    scaled_layers,
    select_channels,
)
from prunelab.spec import build_spec
from prunelab.training import TrainConfig, Trainer, TrainHook
from prunelab.training.plugins import PLUGINS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def bn_net(seed: int = 0) -> nn.Module:
    """Two conv-BN-ReLU layers (the second zero-padded) and a classifier, on 1x8x8 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(20, 4),
    )  # fmt: skip


def randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Distinct scales (some negative), shifts and running statistics: eval-mode BN then proves something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model


EXAMPLE = torch.zeros(1, 1, 8, 8)


def test_the_methods_and_plugins_are_registered():
    assert {"slimming", "early-bird"} <= set(METHODS.names())
    assert {"slimming", "early-bird"} <= set(PLUGINS.names())
    assert [(s.layer, s.norm, s.channels) for s in scaled_layers(bn_net(), EXAMPLE)] == [
        ("0", "1", 6),
        ("3", "4", 5),
    ]


class Record(TrainHook):
    """The gradients and BN scales as the hooks after it will see them."""

    def __init__(self):
        self.grads, self.gammas = [], []

    def after_backward(self, model):
        self.grads.append([model[i].weight.grad.clone() for i in (1, 4)])
        self.gammas.append([model[i].weight.detach().clone() for i in (1, 4)])


@pytest.mark.parametrize("s", [1e-4, 0.03])
def test_the_subgradient_is_exactly_s_sign_gamma_added_to_the_gradient(data, s):
    model = randomise_bn(bn_net(), 1)
    before, after = Record(), Record()
    plugin = SlimmingL1(SlimmingSettings(penalty=s))
    cfg = TrainConfig(iterations=3, batch_size=64, optimizer="sgd", lr=0.1)
    trainer = Trainer(model, data, cfg, hooks=[before, plugin, after])
    trainer.run()
    for step in range(3):
        for plain, pushed, gamma in zip(
            before.grads[step], after.grads[step], before.gammas[step], strict=True
        ):
            assert torch.equal(pushed, plain + s * torch.sign(gamma))
            assert not torch.equal(pushed, plain)


def test_one_global_threshold_is_a_sort_of_all_the_scales():
    # by hand: 0.05 and 0.1 are the two smallest of the five; round(0.4 * 5) = 2 go
    keep, back = select_channels([torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.2, 0.05])], [torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool)], 0.4)  # fmt: skip
    assert [k.tolist() for k in keep] == [[True, False, True], [True, False]] and back == []
    # against a sort of every scale, with ties, on random sizes
    g = torch.Generator().manual_seed(0)
    scales = [torch.randint(0, 6, (n,), generator=g).double() for n in (7, 11, 5)]
    alive = [torch.ones(len(s), dtype=torch.bool) for s in scales]
    for fraction in (0.1, 0.3, 0.5, 0.8):
        keep, _ = select_channels(scales, alive, fraction, min_channels=0)
        flat = torch.cat(scales)
        count = round(fraction * len(flat))
        ranked = sorted(range(len(flat)), key=lambda i: (float(flat[i]), i))
        expected = torch.ones(len(flat), dtype=torch.bool)
        expected[ranked[:count]] = False
        assert torch.equal(torch.cat(keep), expected)
        threshold = float(flat[ranked[count - 1]]) if count else -1.0
        assert bool((flat[~torch.cat(keep)] <= threshold).all()) and bool(
            (flat[torch.cat(keep)] >= threshold).all()
        )


def test_no_layer_is_emptied_and_the_run_says_so():
    scales = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.02, 0.01])]
    alive = [torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
    keep, back = select_channels(scales, alive, 0.4)  # the two smallest are all of the second layer
    assert [k.tolist() for k in keep] == [[True, True, True], [True, False]] and back == [(1, 1)]
    keep, back = select_channels(scales, alive, 0.4, min_channels=2)
    assert [k.tolist() for k in keep] == [[True, True, True], [True, True]] and back == [(1, 2)]

    model = bn_net()
    with torch.no_grad():
        model[4].weight.fill_(1e-3)  # the second layer's scales are all smaller than the first's
    notes = []
    mask = prune(model, None, PruneSpec(method="slimming", rate=0.6), context=PruneContext(input_shape=(1, 8, 8), notes=notes))  # fmt: skip
    assert mask["3.weight"].reshape(5, -1).any(1).sum() == 1
    # round(0.6 * 11) = 7 go by the threshold: all 5 of layer 3, then 2 of layer 0; layer 3 gets one back
    assert mask["0.weight"].reshape(6, -1).any(1).sum() == 4
    (note,) = notes
    assert "layer 3" in note and "--slimming-min-channels" in note


def test_slimmed_channels_are_removed_by_the_compaction_with_the_same_outputs():
    model = randomise_bn(bn_net(), 2)
    mask = prune(
        model, None, PruneSpec(method="slimming", rate=0.5), context=PruneContext(input_shape=(1, 8, 8))
    )
    scales = torch.cat(channel_scales(model, scaled_layers(model, EXAMPLE)))
    kept = torch.cat(alive_channels(model, scaled_layers(model, EXAMPLE), mask))
    assert int((~kept).sum()) == round(0.5 * 11) and float(scales[~kept].max()) <= float(scales[kept].min())
    for bn in ("1", "4"):  # the pruned channels' BatchNorm scale and shift are pruned too: their output is 0
        assert torch.equal(mask[f"{bn}.weight"], mask[f"{bn}.bias"])
    result = compact(model, mask, EXAMPLE)
    assert sum(result.removed.values()) == round(0.5 * 11) and not result.kept_dead
    masked = mask.apply(randomise_bn(bn_net(), 2)).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), masked(x), atol=1e-5, rtol=1e-5)


def test_gamma_init_and_the_refusals_before_training():
    model = bn_net()
    SlimmingL1(SlimmingSettings(gamma_init=0.5)).initialise(model, EXAMPLE)
    assert (model[1].weight == 0.5).all() and (model[4].weight == 0.5).all()
    lenet = build_model("lenet-300-100", input_shape=(1, 8, 8))
    with pytest.raises(
        SpecError, match=r"BatchNorm.*has none: it would need one after fc1 \(a BatchNorm1d of 300"
    ):
        prune(
            lenet, None, PruneSpec(method="slimming", rate=0.5), context=PruneContext(input_shape=(1, 8, 8))
        )
    with pytest.raises(SpecError, match="penalty"):
        build_spec(PruneSpec, method="slimming", slimming={"penalty": 2})
    with pytest.raises(SpecError, match="distance"):
        build_spec(PruneSpec, method="early-bird", early_bird={"distance": 1.5})
    with pytest.raises(SpecError, match="prunes once, at the ticket: use rounds 1"):
        ExperimentRunner(ExperimentSpec(model="conv2-bn", data="synthetic", pruning=PruneSpec(method="early-bird", rounds=2)))  # fmt: skip
    with pytest.raises(SpecError, match="has none"):
        ExperimentRunner(
            ExperimentSpec(model="conv2", data="synthetic", pruning=PruneSpec(method="early-bird"))
        )


def test_the_early_bird_rule_on_hand_made_masks():
    def mask(*off):
        m = torch.ones(20, dtype=torch.bool)
        m[list(off)] = False
        return m

    assert hamming(mask(0, 1), mask(1, 2)) == 0.1
    # epoch: 1        2        3           4        5           6        7
    masks = [mask(0), mask(1), mask(1, 2), mask(2), mask(2, 3), mask(2), mask(2)]
    queue = MaskQueue(5, 0.1)
    found = [queue.push(m) for m in masks]
    # epoch 5 (the first full queue): mask(2,3) vs mask(0) differ at 0, 2, 3: 3/20
    # epoch 6: mask(2) vs mask(1) differ at 1, 2: 2/20 = 0.1, not below 0.1
    # epoch 7: mask(2) vs mask(1,2), mask(2), mask(2,3), mask(2): 1/20, 0, 1/20, 0: the ticket
    assert [f for f, _ in found] == [False] * 6 + [True]
    assert found[0][1] is None
    assert [d for _, d in found[4:]] == pytest.approx([0.15, 0.1, 0.05])
    # the same mask every epoch: not before the queue is full
    queue = MaskQueue(5, 0.1)
    assert [queue.push(mask(3))[0] for _ in range(6)] == [False] * 4 + [True, True]


def test_an_early_bird_search_killed_mid_way_finds_the_same_ticket(data):
    cfg = TrainConfig(epochs=30, batch_size=64, eval_every="7it", optimizer="sgd", lr=0.1, momentum=0.9)
    settings = EarlyBirdSettings(penalty=1e-3)

    def trainer():
        return Trainer(
            randomise_bn(bn_net(), 3), data, cfg, seed=1, hooks=[EarlyBird(settings, fraction=0.5)]
        )

    straight = trainer()
    expected = straight.run()
    ticket = expected.reports["early-bird"]["ticket"]
    assert ticket is not None and 5 <= ticket["epoch"] < 30
    assert expected.stopped_early.startswith(f"early-bird ticket at epoch {ticket['epoch']}")
    assert expected.iterations == ticket["iteration"] == ticket["epoch"] * straight.batches_per_epoch
    assert ticket["saved_fraction"] == pytest.approx(1 - ticket["epoch"] / 30)
    assert ticket["flops_saved"] + ticket["search_flops"] == ticket["dense_flops"]
    distances = expected.reports["early-bird"]["distances"]
    assert distances[ticket["epoch"] - 1] < 0.1 and all(d is None or d >= 0 for d in distances)

    saved = killed_at_epoch_end(trainer(), ticket["epoch"] - 2)
    resumed = trainer()
    resumed.load_state_dict(saved)
    result = resumed.run()
    assert result.reports == expected.reports
    assert [asdict(r) for r in result.history] == [asdict(r) for r in expected.history]


def test_slimming_and_early_bird_from_the_command_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = cli("methods")
    assert code == 0 and "slimming" in out and "early-bird" in out
    assert "--slimming-penalty" in out and "--early-bird-distance" in out and "BatchNorm after pruned" in out
    monkeypatch.delenv("COLUMNS")

    root = tmp_path / "runs"
    common = [
        "--model", "conv2-bn", "--data", "synthetic", "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.05",
        "--momentum", "0.9", "--rate", "0.5", "--treatment", "finetune", "--finetune-epochs", "1",
        "--root", root, "--no-progress", "--threads", "1",
    ]  # fmt: skip
    code, out, err = cli("run", *common, "--method", "slimming", "--epochs", "2", "--slimming-gamma-init", "0.5", "--controls", "random-mask")  # fmt: skip
    assert code == 0, err
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    code, _, err = cli("report", run, "--root", root, "-o", tmp_path / "report", "--no-ensembles", "--no-svg")
    assert code == 0, err
    code, _, err = cli("export", run, "--root", root, "--level", "1", "-o", tmp_path / "compact")
    assert code == 0, err
    from prunelab import load_compact
    from prunelab.experiments import load_level

    level, small = load_level(run, level=1, root=root), load_compact(tmp_path / "compact")
    kept = int(level.mask["conv1.weight"].reshape(64, -1).any(1).sum()) + int(level.mask["conv2.weight"].reshape(64, -1).any(1).sum())  # fmt: skip
    assert kept == 64 and small.conv1.out_channels + small.conv2.out_channels == 64  # half of 128 channels
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), level.model.eval()(x), atol=1e-4, rtol=1e-4)

    code, out, err = cli(
        "run", *common, "--method", "early-bird", "--epochs", "30", "--early-bird-penalty", "1e-3"
    )
    assert code == 0, err
    assert "early-bird: ticket at epoch" in err + out and "of the dense training FLOPs saved" in err + out
    (eb,) = [p.name for p in (root / "experiments").iterdir() if p.name != run]
    code, out, err = cli("show", eb, "--root", root)
    assert code == 0 and "seed 0 dense: early-bird: ticket at epoch" in " ".join(out.split()), err
    dense = load_level(eb, level=0, root=root).metrics
    ticket = dense.plugins["early-bird"]["ticket"]
    assert (
        dense.stopped_early.startswith("early-bird ticket")
        and dense.iterations == ticket["iteration"] < 30 * 7
    )

    for args, needle in [
        (("--method", "slimming", "--model", "lenet-300-100"), "BatchNorm"),
        (("--method", "slimming", "--slimming-penalty", "2"), "penalty"),
        (("--method", "early-bird", "--rounds", "2"), "rounds 1"),
    ]:
        code, _, err = cli("run", "--data", "synthetic", "--root", root, *args)
        assert code == 2 and needle in " ".join(err.split()), err
        assert "Traceback" not in err


def test_multi_pass_slimming_keeps_the_push_on_while_each_level_retrains(tmp_path, monkeypatch):
    built = []
    original = Trainer.__init__

    def records(self, model, data, cfg, **kw):
        built.append([type(h).__name__ for h in kw.get("hooks") or ()])
        original(self, model, data, cfg, **kw)

    monkeypatch.setattr(Trainer, "__init__", records)

    def run(multi_pass: bool, root):
        spec = ExperimentSpec(
            model="conv2-bn", data="synthetic", seeds=(0,), controls=("random-mask",),
            train=TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.05),
            pruning=PruneSpec(method="slimming", rate=0.25, rounds=2, slimming={"penalty": 0.05, "multi_pass": multi_pass}),
            treatment={"kind": "finetune", "finetune_epochs": 1},
        )  # fmt: skip
        built.clear()
        ExperimentRunner(spec, root).run()
        return spec, [list(b) for b in built]

    single, hooks = run(False, tmp_path / "single")
    assert hooks == [["SlimmingL1"]] + [[]] * 4  # the dense training only; 2 levels + 2 controls plain
    multi, hooks = run(True, tmp_path / "multi")
    assert hooks == [["SlimmingL1"]] * 5  # every level and control retrains under the push
    assert single.trunk_id() == multi.trunk_id()  # the dense training is the same: shared
    from prunelab.experiments import load_level

    def gamma_l1(spec, root, level):
        state = load_level(spec.experiment_id(), level=level, root=root).model.state_dict()
        return sum(float(state[k].abs().sum()) for k in ("bn1.weight", "bn2.weight"))

    # the push shrinks the kept scales while level 1 retrains (same start, same mask, same batches)
    assert gamma_l1(multi, tmp_path / "multi", 1) < gamma_l1(single, tmp_path / "single", 1) - 1e-3
    # and the next round's threshold ranks those pushed scales: another quarter of the channels goes
    level2 = load_level(multi.experiment_id(), level=2, root=tmp_path / "multi")
    alive = sum(int(level2.mask[k].reshape(64, -1).any(1).sum()) for k in ("conv1.weight", "conv2.weight"))
    assert alive == 128 - 32 - 24


def test_the_readme_commands_are_valid_specs(monkeypatch):
    """The README's examples of these methods parse into the specs they describe (nothing trains)."""
    import re
    import shlex
    from pathlib import Path

    import prunelab.cli.experiments as cli_experiments
    from prunelab.cli import main

    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"### Methods that act during training.*?```bash\n(.*?)```", text, re.S).group(1)
    commands = [shlex.split(c.split("#")[0]) for c in block.replace("\\\n", " ").strip().splitlines()]
    seen = []
    monkeypatch.setattr(cli_experiments, "_start", lambda *a, **k: None)
    monkeypatch.setattr(cli_experiments, "_run_experiment", lambda spec, **kw: seen.append(spec))
    for command in commands:
        assert command[:2] == ["prunelab", "run"]
        assert main(command[1:]) == 0
    assert [s.pruning.method for s in seen] == [
        "slimming",
        "early-bird",
        "sparse-vd",
        "bayesian-compression",
        "structure-selection",
    ]
    assert seen[2].pruning.sparse_vd.kl_warmup == "2ep"
    assert seen[0].pruning.slimming.gamma_init == 0.5 and seen[1].treatment.kind == "finetune"
    assert (
        seen[0].trunk_id()
        != seen[1].trunk_id()
        != seen[1].model_copy(update={"pruning": PruneSpec()}).trunk_id()
    )


def test_the_early_bird_search_under_bf16_autocast_on_a_cpu(data):
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9)
    plugin = EarlyBird(EarlyBirdSettings(bf16=True), fraction=0.5)
    trainer = Trainer(randomise_bn(bn_net(), 3), data, cfg, hooks=[plugin])
    assert trainer.step_kind == "autograd" and trainer.step.bf16 and plugin.wants_bf16
    seen = []
    trainer.model[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype) if m.training else None)
    result = trainer.run()
    assert set(seen) == {torch.bfloat16} and result.final.train_loss > 0
    assert len(result.reports["early-bird"]["distances"]) == 2
    assert not EarlyBird(EarlyBirdSettings(), fraction=0.5).wants_bf16
