"""The trainer's plug-in interface: registered plug-ins, layer swaps converted back to plain layers and a
mask, the step kind they leave, their reports, and a kill mid-training resumed with identical numbers."""

import copy
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from helpers import killed_at_epoch_end
from torch import nn

from prunelab.data import load_dataset
from prunelab.pruning import Mask
from prunelab.training import TrainConfig, Trainer
from prunelab.training.plugins import PLUGINS, TrainPlugin, register_plugin

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def mlp(data) -> nn.Sequential:
    torch.manual_seed(0)
    c, h, w = data.info.input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, 4))


class GatedLinear(nn.Module):
    """A Linear whose output units each have a learned gate; in eval mode a gate under 0.5 is off."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())
        self.gate = nn.Parameter(torch.linspace(0.2, 1.2, linear.out_features))

    def gates(self) -> torch.Tensor:
        return self.gate if self.training else self.gate * (self.gate >= 0.5)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) * self.gates()


class Gates(TrainPlugin):
    """Swaps the hidden Linear for a GatedLinear; back to a Linear with the gates folded in, and a mask."""

    description = "test plug-in: gates on hidden units"

    def swap(self, model):
        model = copy.deepcopy(model)
        model[1] = GatedLinear(model[1])
        return model

    def restore(self, model):
        gated = model[1]
        plain = nn.Linear(gated.weight.shape[1], gated.weight.shape[0])
        with torch.no_grad():
            g = gated.gate * (gated.gate >= 0.5)
            plain.weight.copy_(gated.weight * g[:, None])
            plain.bias.copy_(gated.bias * g)
        model[1] = plain
        keep = (gated.gate >= 0.5).detach()[:, None].expand_as(plain.weight)
        return model, Mask({"1.weight": keep.clone()})

    def report(self):
        return {"gates_off": 1}


class Nudge(TrainPlugin):
    """Only changes gradients: the hand-written steps stay on."""

    def after_backward(self, model):
        for p in model.parameters():
            p.grad.add_(1e-3)


def test_registration_names_the_plugin_and_refuses_other_classes():
    for name, cls in PLUGINS.items():
        assert cls.plugin_name == name and cls().name == name
    with pytest.raises(TypeError, match="must be a TrainPlugin subclass"):
        register_plugin("not-a-plugin")(dict)


def test_a_plugin_that_swaps_layers_falls_back_to_autograd_and_is_converted_back(data):
    plain = Trainer(mlp(data), data, TrainConfig(iterations=1))
    assert plain.step_kind in ("native", "relu-mlp")
    assert Trainer(mlp(data), data, TrainConfig(iterations=1), hooks=[Nudge()]).step_kind == plain.step_kind
    assert Gates().needs_autograd and Gates().swaps_layers and not Nudge().needs_autograd

    trainer = Trainer(mlp(data), data, TrainConfig(epochs=2, batch_size=64), hooks=[Gates()])
    assert trainer.step_kind == "autograd"
    assert isinstance(trainer.model[1], GatedLinear)
    trained = {}
    result = trainer.run(on_epoch_end=lambda t: trained.update(model=copy.deepcopy(t.model)))
    model = trainer.model
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert result.environment["step"] == "autograd"
    assert result.reports == {"Gates": {"gates_off": 1}}
    assert result.summary()["reports"] == result.reports
    keep = result.mask["1.weight"]
    assert 0 < int(keep[:, 0].sum()) < 16  # some gates are off
    assert (model[1].weight.detach()[~keep] == 0).all()
    x = data.test.x[:32]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), trained["model"].eval()(x))
    with pytest.raises(RuntimeError, match="converted its layers back"):
        trainer.run()


def test_a_swapped_run_killed_mid_training_resumes_with_identical_numbers(data):
    cfg = TrainConfig(epochs=3, batch_size=64, eval_every="4it", optimizer="sgd", lr=0.05, momentum=0.9)
    straight = Trainer(mlp(data), data, cfg, seed=3, hooks=[Gates()])
    expected = straight.run()
    saved = killed_at_epoch_end(Trainer(mlp(data), data, cfg, seed=3, hooks=[Gates()]))
    assert "1.gate" in saved["model"]  # the variant's parameters are checkpointed with the model's
    resumed = Trainer(mlp(data), data, cfg, seed=3, hooks=[Gates()])
    resumed.load_state_dict(saved)
    result = resumed.run()
    assert [asdict(r) for r in result.history] == [asdict(r) for r in expected.history]
    assert result.mask == expected.mask
    for (n, a), b in zip(
        resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), n


@pytest.mark.parametrize(
    "model, pruning, optimizer",
    [
        ("small-bn", {"method": "early-bird", "rate": 0.5, "early_bird": {"penalty": 1e-3}}, "sgd"),
        (
            "lenet-300-100",
            {"method": "sparse-vd", "sparse_vd": {"kl_weight": 20.0, "kl_warmup": "1ep"}},
            "adam",
        ),
    ],
    ids=["early-bird", "sparse-vd"],
)
def test_a_method_killed_mid_dense_training_resumes_with_identical_numbers(
    tmp_path, monkeypatch, model, pruning, optimizer
):
    from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec
    from prunelab.experiments.artifact import Artifact

    if model == "small-bn":  # a conv net with BatchNorm much smaller than the zoo's
        factory = tmp_path / "small_bn.py"
        factory.write_text(
            "from torch import nn\n\n"
            "def make(num_classes, input_shape):\n"
            "    return nn.Sequential(\n"
            "        nn.Conv2d(input_shape[0], 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
            "        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
            "        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes))\n"
        )
        model = f"{factory}:make"
    spec = ExperimentSpec(
        model=model,
        data="synthetic",
        train=TrainConfig(
            epochs=6 if optimizer == "sgd" else 4,
            batch_size=64,
            optimizer=optimizer,
            lr=0.05 if optimizer == "sgd" else 1e-2,
        ),
        pruning=PruneSpec(**pruning),
        treatment=TreatmentSpec(kind="finetune", finetune_epochs=1),
    )
    straight = ExperimentRunner(spec, tmp_path / "straight").run()
    saves, original = {"n": 0}, Artifact.save_checkpoint

    def dies_at_the_second_checkpoint(self, state):
        original(self, state)
        saves["n"] += 1
        if saves["n"] == 2:  # mid-way through the dense training (and the early-bird search)
            raise KeyboardInterrupt

    monkeypatch.setattr(Artifact, "save_checkpoint", dies_at_the_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        ExperimentRunner(spec, tmp_path / "killed").run()
    monkeypatch.setattr(Artifact, "save_checkpoint", original)
    resumed = ExperimentRunner(spec, tmp_path / "killed").run()

    def numbers(result):
        return [
            (m.density, m.iterations, m.history, m.stopped_early, m.plugins, m.layer_density)
            for m in result.levels[0]
        ]

    assert numbers(resumed) == numbers(straight)
    dense = straight.levels[0][0]
    assert dense.plugins if pruning["method"] == "early-bird" else dense.density < 1
