"""The hand-written Linear-ReLU training step against autograd, and the trainer's use of it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import Split, load_dataset
from prunelab.models import build_model
from prunelab.training import TrainConfig, Trainer, TrainHook
from prunelab.training.relu_mlp import ReluChain, ReluMLPStep, relu_chain


def test_chain_is_recognised_only_for_plain_linear_relu_models():
    lenet = build_model("lenet-300-100", num_classes=10, input_shape=(1, 28, 28))
    assert relu_chain(lenet) == [lenet.fc1, lenet.fc2, lenet.fc3]
    seq = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    assert relu_chain(seq) == [seq[1], seq[3]]
    for other in (
        nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3)),
        nn.Sequential(nn.Linear(64, 8), nn.ReLU()),
        nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 3)),
        build_model("lenet5", num_classes=10, input_shape=(1, 28, 28)),
    ):
        assert relu_chain(other) is None
    x = torch.randn(4, 1, 28, 28)
    assert ReluChain.build(build_model("lenet5", num_classes=10, input_shape=(1, 28, 28)), x) is None


@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_gradients_equal_autograd(bias):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(49, 20, bias=bias), nn.ReLU(), nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5)
    )
    x, y = torch.randn(33, 1, 7, 7), torch.randint(0, 5, (33,))
    ref_loss = F.cross_entropy(model(x), y)
    ref_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    chain = ReluChain.build(model, x[:4])
    assert chain is not None
    for _ in range(2):  # the second call reuses (overwrites) the gradient and activation buffers
        loss, logits = chain(x, y)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(logits, model(x).detach())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_model_whose_forward_differs_from_its_declared_chain_is_not_fast_tracked():
    class Odd(nn.Module):
        relu_mlp = ("a", "b")

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x.flatten(1))))  # not what relu_mlp claims

    assert ReluChain.build(Odd(), torch.randn(4, 16)) is None


class NoTerm(TrainHook):
    """Declares a loss term (so the trainer must take autograd) but adds nothing."""

    def loss(self, model, logits, targets):
        return None


def test_trainer_takes_the_fast_path_and_matches_the_autograd_path():
    data = load_dataset("digits")
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=50, iterations=40, eval_every="20it")

    def run(fast: bool):
        model = build_model("lenet-300-100", num_classes=10, input_shape=data.info.input_shape, seed=0)
        trainer = Trainer(model, data, cfg, seed=0, hooks=[] if fast else [NoTerm()])
        assert (trainer.step_kind != "autograd") == fast
        return trainer.run(), model

    (fast, fast_model), (slow, slow_model) = run(True), run(False)
    assert len(fast.history) == len(slow.history) == 3
    for a, b in zip(fast.history[1:], slow.history[1:], strict=True):
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
    assert fast.final.test_loss == pytest.approx(slow.final.test_loss, rel=1e-4)
    for a, b in zip(fast_model.parameters(), slow_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_relu_mlp_step_gathers_masks_and_counts(monkeypatch):
    """The torch-op step as the trainer drives it: rows of a permutation, masked gradients, totals."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(30, 1, 4, 4), torch.randint(0, 3, (30,))
    mask = (torch.rand(8, 16) < 0.5).float()
    step = ReluMLPStep(ReluChain.build(model, x[:4]), [(model[1].weight, mask)])
    step.bind(model, Split(x, y))
    perm = torch.randperm(30)
    step.run(perm, 10, 12)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = [p.grad for p in model.parameters()]
    idx = perm[10:22]
    ref = F.cross_entropy(model(x[idx]), y[idx])
    model.zero_grad(set_to_none=True)
    ref.backward()
    ref = ref.detach()
    torch.testing.assert_close(grads["1.weight"], model[1].weight.grad * mask, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads["3.bias"], model[3].bias.grad, rtol=1e-5, atol=1e-7)
    loss_sum, correct, seen = step.take_totals()
    assert seen == 12 and loss_sum / 12 == pytest.approx(float(ref), rel=1e-6)
    assert correct == int((model(x[idx]).argmax(1) == y[idx]).sum())
    assert step.take_totals() == (0.0, 0.0, 0)  # read and reset
    for p in model.parameters():  # the step owns its buffers: bind recreates them where replaced
        p.grad = None
    step.bind(model, Split(x, y))
    assert step.owns_grads and all(p.grad is not None for p in model.parameters())
    assert all(p.grad is not b for p, b in zip(model.parameters(), buffers, strict=True))
