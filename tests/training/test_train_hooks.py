"""Training hooks: each hook point against a hand computation, with every step kind, and resumed exactly."""

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from helpers import killed_at_epoch_end, through_disk
from torch import nn

from prunelab.data import load_dataset
from prunelab.errors import CheckpointError, SpecError
from prunelab.pruning import Mask
from prunelab.training import TrainConfig, Trainer, TrainHook, train


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def mlp(data, dropout: bool = False) -> nn.Sequential:
    """A Linear-ReLU chain (the hand-written steps), or with an identity dropout the same maths by autograd."""
    torch.manual_seed(0)
    c, h, w = data.info.input_shape
    middle = [nn.Dropout(0.0)] if dropout else []
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), *middle, nn.Linear(16, 4))


def full_batch(data, **kw) -> TrainConfig:
    """One batch holds the whole training split: a step's gradient is that of the mean over all of it,
    whatever the order the permutation gives (up to float rounding)."""
    return TrainConfig(batch_size=len(data.train), optimizer="sgd", lr=0.1, **kw)


def weights(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith("weight")]


class L1(TrainHook):
    """strength * sum |w| over the weight matrices: a loss term."""

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def loss(self, model, logits, targets):
        return self.strength * sum(p.abs().sum() for p in weights(model))


class Record(TrainHook):
    """Keeps a copy of every gradient as the optimizer will see it (after the hooks before it)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def after_backward(self, model):
        self.grads.append({n: p.grad.clone() for n, p in model.named_parameters()})


class AddToGrads(TrainHook):
    """Adds a constant to every weight gradient, in place or as a new tensor."""

    def __init__(self, amount: float, in_place: bool = True) -> None:
        self.amount, self.in_place = amount, in_place

    def after_backward(self, model):
        for p in weights(model):
            if self.in_place:
                p.grad.add_(self.amount)
            else:
                p.grad = p.grad + self.amount


def test_base_hook_does_nothing_and_declares_nothing():
    hook = TrainHook()
    assert not hook.adds_loss and not hook.changes_grads
    assert hook.loss(None, None, None) is None and hook.on_epoch_end(None) is None
    assert hook.state_dict() == {}
    assert L1(0.1).adds_loss and not L1(0.1).changes_grads
    assert Record().changes_grads and not Record().adds_loss


def test_loss_hook_gradients_equal_autograd_of_loss_plus_penalty(data):
    model, strength = mlp(data), 1e-3
    reference = mlp(data)  # the same initial weights
    record = Record()
    trainer = Trainer(model, data, full_batch(data, iterations=1), hooks=[L1(strength), record])
    assert trainer.step_kind == "autograd"  # a loss term needs autograd, even for a Linear-ReLU chain
    result = trainer.run()

    logits = reference(data.train.x)
    ce = F.cross_entropy(logits, data.train.y)
    (ce + strength * sum(p.abs().sum() for p in weights(reference))).backward()
    (grads,) = record.grads
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # the recorded training loss is the cross-entropy alone, comparable with and without the hook
    assert result.final.train_loss == pytest.approx(float(ce.detach()), rel=1e-5)


@pytest.mark.parametrize("kind", ["native", "relu-mlp", "autograd"])
@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "new-tensor"])
def test_after_backward_hook_works_with_every_step_and_masks_still_hold(data, monkeypatch, kind, in_place):
    if kind == "relu-mlp":
        monkeypatch.setenv("PRUNELAB_NO_NATIVE", "1")
    model = mlp(data, dropout=kind == "autograd")
    g = torch.Generator().manual_seed(1)
    mask = Mask({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in Mask.ones(model).items()})
    amount, lr, steps = 0.01, 0.1, 3
    record = Record()
    trainer = Trainer(
        model,
        data,
        full_batch(data, iterations=steps),
        mask=mask,
        hooks=[AddToGrads(amount, in_place), record],
    )
    if kind == "native" and trainer.step_kind != "native":
        pytest.skip("no C compiler or no MKL here")
    assert trainer.step_kind == kind

    reference = mlp(data, dropout=kind == "autograd")
    mask.apply(reference)
    keep = {n: m.float() for n, m in mask.items()}
    trainer.run()
    # by hand: plain SGD on the full batch with (gradient + amount on weights) * mask, three times
    for i in range(steps):
        reference.zero_grad(set_to_none=True)
        F.cross_entropy(reference(data.train.x), data.train.y).backward()
        with torch.no_grad():
            for name, p in reference.named_parameters():
                m = keep.get(name, torch.ones_like(p))
                added = amount if name.endswith("weight") else 0.0
                # what the hooks see: the step's masked gradient, plus what the hook before added
                torch.testing.assert_close(record.grads[i][name], p.grad * m + added, rtol=1e-4, atol=1e-6)
                p -= lr * (p.grad + added) * m  # what the optimizer gets: masked again
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), reference.get_parameter(name).detach(), rtol=1e-4, atol=1e-6)
        if name in mask:
            assert (p.detach()[~mask[name]] == 0).all()  # exactly, though the hook added to every entry


@pytest.mark.parametrize("kind", ["native", "relu-mlp", "autograd"])
def test_a_hook_that_replaces_gradients_gives_the_numbers_of_one_that_adds_in_place(data, monkeypatch, kind):
    """Many steps an epoch: the hand-written steps write into the buffers bound at the epoch start, so a
    gradient tensor a hook put in their place is copied back into them."""
    if kind == "relu-mlp":
        monkeypatch.setenv("PRUNELAB_NO_NATIVE", "1")
    cfg = TrainConfig(epochs=2, batch_size=32, eval_every="10it")

    def run(in_place: bool):
        model = mlp(data, dropout=kind == "autograd")
        trainer = Trainer(model, data, cfg, hooks=[AddToGrads(0.01, in_place)])
        if kind == "native" and trainer.step_kind != "native":
            pytest.skip("no C compiler or no MKL here")
        assert trainer.step_kind == kind
        return trainer.run(), model

    (a, model_a), (b, model_b) = run(True), run(False)
    assert [asdict(r) for r in a.history] == [asdict(r) for r in b.history]
    for x, y in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(x, y)


class StopAfter(TrainHook):
    """Stops after ``epochs`` epoch ends; keeps a count and a tensor summed over them (hook state)."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.seen, self.norms = epochs, 0, torch.zeros(())

    def on_epoch_end(self, trainer):
        self.seen += 1
        self.norms = self.norms + sum(p.detach().norm() for p in trainer.model.parameters())
        return f"stopped after {self.seen} epochs" if self.seen >= self.epochs else None

    def state_dict(self):
        return {"seen": self.seen, "norms": self.norms.clone()}

    def load_state_dict(self, state):
        self.seen, self.norms = int(state["seen"]), state["norms"].clone()


def test_epoch_end_hook_stops_training_and_the_reason_is_recorded(data):
    # 14 iterations an epoch, evaluations every 5: the stop (iteration 28) is between evaluation points
    cfg = TrainConfig(epochs=10, batch_size=32, eval_every="5it")
    result = train(mlp(data), data, cfg, hooks=[StopAfter(2)])
    assert result.stopped_early == "stopped after 2 epochs"
    assert result.summary()["stopped_early"] == "stopped after 2 epochs"
    assert result.iterations == 28
    assert [r.iteration for r in result.history][-3:] == [20, 25, 28]  # a final record where it stopped
    assert result.final.test_loss is not None and result.final.train_loss is not None
    shorter = train(mlp(data), data, cfg.model_copy(update={"epochs": 1}), hooks=[StopAfter(2)])
    assert shorter.stopped_early is None and shorter.summary()["stopped_early"] is None


@pytest.mark.parametrize("kill_after", [1, 2], ids=["before-the-stop", "after-the-stop"])
def test_stop_and_hook_state_survive_a_resume(data, kill_after):
    cfg = TrainConfig(epochs=10, batch_size=32, eval_every="5it", optimizer="sgd", lr=0.05, momentum=0.9)
    straight_hook = StopAfter(3)
    straight = Trainer(mlp(data), data, cfg, seed=2, hooks=[straight_hook]).run()

    saved = killed_at_epoch_end(Trainer(mlp(data), data, cfg, seed=2, hooks=[StopAfter(3)]), kill_after)
    hook = StopAfter(3)
    resumed = Trainer(mlp(data), data, cfg, seed=2, hooks=[hook])
    resumed.load_state_dict(saved)
    assert hook.seen == kill_after
    result = resumed.run()
    assert result.stopped_early == straight.stopped_early == "stopped after 3 epochs"
    assert [asdict(r) for r in result.history] == [asdict(r) for r in straight.history]
    assert hook.seen == straight_hook.seen and torch.equal(hook.norms, straight_hook.norms)


def test_a_run_stopped_by_a_hook_stays_stopped_when_resumed(data):
    cfg = TrainConfig(epochs=10, batch_size=32, eval_every="5it")
    saved = {}
    trainer = Trainer(mlp(data), data, cfg, hooks=[StopAfter(1)])
    result = trainer.run(on_epoch_end=lambda t: saved.update(through_disk(t.state_dict())))
    assert saved["stopped_early"] == "stopped after 1 epochs"
    again = Trainer(mlp(data), data, cfg, hooks=[StopAfter(1)])
    again.load_state_dict(saved)
    resumed = again.run()
    assert resumed.iterations == result.iterations == 14
    assert [asdict(r) for r in resumed.history] == [asdict(r) for r in result.history]


def test_hooks_are_checked(data):
    with pytest.raises(SpecError, match=r"is not a prunelab\.training\.TrainHook"):
        Trainer(mlp(data), data, TrainConfig(iterations=1), hooks=[lambda model: None])
    trainer = Trainer(mlp(data), data, TrainConfig(iterations=1), hooks=[StopAfter(1)])
    with pytest.raises(CheckpointError, match="state of 1 training hooks but this run has 0"):
        Trainer(mlp(data), data, TrainConfig(iterations=1)).load_state_dict(trainer.state_dict())
