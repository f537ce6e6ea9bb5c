"""The step interface: which step choose_step picks, and that the trainer drives any Step the same way."""

import pytest
import torch
from torch import nn

from prunelab.data import load_dataset
from prunelab.models import build_model
from prunelab.training import STEP_KINDS, AutogradStep, Step, TrainConfig, Trainer, TrainHook, choose_step
from prunelab.training.native_mlp import NativeMLPStep, _kernel, _mkl_sgemm
from prunelab.training.relu_mlp import ReluMLPStep

NATIVE = _kernel() is not None and _mkl_sgemm() is not None


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


def lenet(data):
    return build_model("lenet-300-100", num_classes=10, input_shape=data.info.input_shape, seed=0)


class Penalty(TrainHook):
    def loss(self, model, logits, targets):
        return 1e-4 * sum(p.square().sum() for p in model.parameters())


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # bf16 autocast asked for on a CPU machine
def test_choose_step_picks_the_fastest_step_that_applies(data, monkeypatch):
    generator = torch.Generator().manual_seed(0)

    def kind(model, hooks=(), **cfg):
        step = choose_step(model, data, TrainConfig(**cfg), hooks=hooks, generator=generator)
        assert isinstance(step, Step) and step.kind in STEP_KINDS
        assert step.owns_grads == (step.kind != "autograd")
        return step.kind

    assert kind(lenet(data)) == ("native" if NATIVE else "relu-mlp")
    assert kind(lenet(data), augment=True) == "relu-mlp"  # the C step has no augmentation
    assert kind(lenet(data), bf16=True) == "autograd"
    assert kind(lenet(data), hooks=[Penalty()]) == "autograd"  # a loss term needs autograd
    assert kind(lenet(data), hooks=[TrainHook()]) == kind(lenet(data))  # a hook that adds nothing
    dropout = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    assert kind(dropout) == "autograd"
    monkeypatch.setenv("PRUNELAB_NO_NATIVE", "1")
    assert kind(lenet(data)) == "relu-mlp"


@pytest.mark.skipif(not NATIVE, reason="no C compiler or no MKL in this torch")
def test_a_c_step_that_disagrees_with_torch_is_not_used(data, monkeypatch):
    monkeypatch.setattr(NativeMLPStep, "_agrees_with", lambda self, reference, n: False)
    step = choose_step(lenet(data), data, TrainConfig())
    assert isinstance(step, ReluMLPStep)


class Counting:
    """A Step of its own: wraps the autograd step and counts what the trainer calls."""

    kind, owns_grads = "counting", False

    def __init__(self, inner: AutogradStep) -> None:
        self.inner, self.binds, self.runs = inner, 0, 0

    def bind(self, model, train):
        self.binds += 1
        self.inner.bind(model, train)

    def run(self, perm, start, n):
        self.runs += 1
        self.inner.run(perm, start, n)

    def take_totals(self):
        return self.inner.take_totals()


def test_the_trainer_drives_any_step_through_the_interface(data):
    model = lenet(data)
    cfg = TrainConfig(epochs=2, batch_size=100, eval_every="5it")
    trainer = Trainer(model, data, cfg)
    trainer.step = Counting(AutogradStep(model, trainer._masked))
    result = trainer.run()
    assert trainer.step_kind == "counting" and result.environment["step"] == "counting"
    assert trainer.step.binds == 2 and trainer.step.runs == result.iterations == 2 * trainer.batches_per_epoch
    assert all(r.train_loss is not None for r in result.history[1:])
    assert result.final.test_acc > 0.5
