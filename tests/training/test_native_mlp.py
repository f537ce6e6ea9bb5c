"""The C training step of Linear-ReLU chains against the torch step, and the trainer's choice of step."""

import pytest
import torch
from torch import nn

from prunelab.data import Split, load_dataset
from prunelab.models import build_model
from prunelab.pruning import random_mask
from prunelab.training import TrainConfig, Trainer
from prunelab.training.evaluation import choose_evaluator, evaluate
from prunelab.training.native_mlp import NativeMLPEval, NativeMLPStep, _kernel, _mkl_sgemm
from prunelab.training.relu_mlp import ReluChain

needs_native = pytest.mark.skipif(
    _kernel() is None or _mkl_sgemm() is None,
    reason="no C compiler or no MKL in this torch: training uses the torch step (tested in test_relu_mlp)",
)


def mlp(first_bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(49, 20, bias=first_bias),
        nn.ReLU(),
        nn.Linear(20, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    )


def split(n: int = 90, seed: int = 1) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 7, 7, generator=g), torch.randint(0, 5, (n,), generator=g))


@needs_native
@pytest.mark.parametrize("first_bias", [True, False])
def test_loss_gradients_and_counts_equal_the_torch_step(first_bias):
    model, train = mlp(first_bias), split()
    g = torch.Generator().manual_seed(2)
    masks = {  # a weight and a bias mask, as the trainer passes them: float 0/1 by id(parameter)
        id(model[3].weight): (torch.rand(12, 20, generator=g) < 0.4).float(),
        id(model[5].bias): torch.tensor([1.0, 0, 1, 1, 0]),
    }
    reference = ReluChain.build(model, train.x[:4])
    step = NativeMLPStep.build(model, train, masks, batch_size=40, reference=reference)
    assert step is not None and step.kind == "native" and step.owns_grads
    perm = torch.randperm(len(train), generator=g)
    for start, n in ((0, 40), (40, 40), (80, 10)):  # the last batch is shorter than the buffers
        step.bind(model, train)
        step.run(perm, start, n)
        ours = {name: p.grad.clone() for name, p in model.named_parameters()}
        loss_sum, correct, seen = step.take_totals()
        assert step.take_totals() == (0.0, 0.0, 0)  # read and reset

        idx = perm[start : start + n]
        x, y = train.x[idx], train.y[idx]
        loss, logits = reference(x, y)
        assert seen == n
        assert loss_sum / n == pytest.approx(float(loss), rel=1e-6)
        assert correct == int((logits.argmax(1) == y).sum())
        for name, p in model.named_parameters():
            expected = p.grad * masks[id(p)] if id(p) in masks else p.grad
            torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-7, msg=name)
        assert (ours["3.weight"][masks[id(model[3].weight)] == 0] == 0).all()
        assert ours["5.bias"][1] == 0 and ours["5.bias"][4] == 0
    for start, n in ((80, 20), (0, 41), (-1, 10)):  # past the data, past the buffers: refused, not a crash
        with pytest.raises(ValueError, match="do not fit"):
            step.run(perm, start, n)


@needs_native
def test_data_the_kernel_cannot_take_is_left_to_the_torch_step():
    model, train = mlp(), split()
    reference = ReluChain.build(model, train.x[:4])
    assert NativeMLPStep.build(model, train, {}, 16, reference) is not None
    bad_label = Split(train.x, torch.where(train.y == 0, 5, train.y))  # 5 classes: labels 0..4
    transposed = Split(train.x.transpose(2, 3), train.y)  # not contiguous
    as_double = Split(train.x.double(), train.y)
    for data in (bad_label, transposed, as_double):
        assert NativeMLPStep.build(model, data, {}, 16, reference) is None
    assert all(p.grad is None for p in model.parameters())  # building leaves no gradients behind


@needs_native
def test_trainer_native_step_matches_torch_step_and_keeps_the_mask(monkeypatch):
    data = load_dataset("digits")
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=50, iterations=40, eval_every="20it")

    def run(kind: str):
        if kind == "relu-mlp":
            monkeypatch.setenv("PRUNELAB_NO_NATIVE", "1")
        model = build_model("lenet-300-100", num_classes=10, input_shape=data.info.input_shape, seed=0)
        mask = random_mask(model, 0.2, "uniform", torch.Generator().manual_seed(0))
        trainer = Trainer(model, data, cfg, mask=mask, seed=0)
        monkeypatch.delenv("PRUNELAB_NO_NATIVE", raising=False)
        assert trainer.step_kind == kind
        return trainer.run(), model, mask

    (native, native_model, mask), (torch_step, torch_model, _) = run("native"), run("relu-mlp")
    assert len(native.history) == len(torch_step.history) == 3
    for a, b in zip(native.history[1:], torch_step.history[1:], strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.train_acc == b.train_acc
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)
    assert native.final.test_loss == pytest.approx(torch_step.final.test_loss, rel=1e-4)
    assert native.environment["step"] == "native" and torch_step.environment["step"] == "relu-mlp"
    params = dict(native_model.named_parameters())
    for (name, a), b in zip(params.items(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
        if name in mask:
            assert (a.detach()[~mask[name]] == 0).all()


def test_the_trainer_names_the_step_it_runs(monkeypatch):
    data = load_dataset("digits")
    cfg = TrainConfig(iterations=1)
    tanh_mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    assert Trainer(tanh_mlp, data, cfg).step_kind == "autograd"
    monkeypatch.setenv("PRUNELAB_NO_NATIVE", "1")
    mlp_model = build_model("lenet-300-100", num_classes=10, input_shape=data.info.input_shape)
    assert Trainer(mlp_model, data, cfg).step_kind == "relu-mlp"
    monkeypatch.delenv("PRUNELAB_NO_NATIVE")
    expected = "native" if _kernel() is not None and _mkl_sgemm() is not None else "relu-mlp"
    assert Trainer(mlp_model, data, cfg).step_kind == expected


@needs_native
@pytest.mark.parametrize("first_bias", [True, False])
def test_forward_only_evaluation_equals_torch_in_chunks(first_bias):
    model, probe = mlp(first_bias), split(20)
    evaluator = NativeMLPEval.build(model, probe, chunk=7)  # several chunks, the last one short
    assert evaluator is not None
    for data in (split(50, seed=3), split(7, seed=4), split(1, seed=5)):
        loss_sum, correct = evaluator.sums(data)
        with torch.no_grad():
            logits = model(data.x)
        expected = float(torch.nn.functional.cross_entropy(logits, data.y, reduction="sum"))
        assert loss_sum == pytest.approx(expected, rel=1e-5)
        assert correct == int((logits.argmax(1) == data.y).sum())
    assert evaluator.sums(Split(torch.empty(0, 1, 7, 7), torch.empty(0, dtype=torch.int64))) == (0.0, 0)
    assert evaluator.sums(Split(probe.x.double(), probe.y)) is None  # not readable: the caller uses torch
    with torch.no_grad():  # weights changed in place are read at the next call
        model[5].bias.add_(1.0)
    torch_loss, _ = evaluate(model, probe)
    assert evaluator.sums(probe)[0] / len(probe) == pytest.approx(torch_loss, rel=1e-5)


@needs_native
def test_trainer_evaluates_chains_through_the_c_forward_and_others_through_torch(monkeypatch):
    data = load_dataset("digits")
    lenet = build_model("lenet-300-100", num_classes=10, input_shape=data.info.input_shape, seed=0)
    evaluator = choose_evaluator(lenet, data)
    assert evaluator.kind == "native"
    for part in (data.val, data.test):
        loss, acc = evaluator(part)
        ref_loss, ref_acc = evaluate(lenet, part)
        assert loss == pytest.approx(ref_loss, rel=1e-5) and acc == ref_acc
    tanh_mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    assert choose_evaluator(tanh_mlp, data).kind == "torch"
    assert NativeMLPEval.build(tanh_mlp, data.val, 100) is None

    class Odd(nn.Module):  # declares a Linear-ReLU chain but is not one: the check catches it
        relu_mlp = ("a", "b")

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 10)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x.flatten(1))))

    assert NativeMLPEval.build(Odd(), data.val, 100) is None
    monkeypatch.setenv("PRUNELAB_NO_NATIVE", "1")
    assert choose_evaluator(lenet, data).kind == "torch"
    assert Trainer(lenet, data, TrainConfig(iterations=1)).environment()["eval"] == "torch"
