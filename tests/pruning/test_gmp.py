"""Gradual magnitude pruning against Zhu & Gupta's schedule: the sparsity of every pruning step is
their formula's, each step removes the smallest alive weights (checked with numpy on the weights the
step saw), the method runs from the command line, and a run killed mid-way resumes identically."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from helpers import killed_at_epoch_end
from torch import nn

from prunelab.data import load_dataset
from prunelab.errors import SpecError
from prunelab.experiments import ExperimentRunner, ExperimentSpec, load_level
from prunelab.pruning.gmp import GMP, GMPSettings, cubic_sparsity
from prunelab.spec import build_spec
from prunelab.training import TrainConfig, Trainer, TrainHook

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 4))


def zhu_gupta(t: int, s_i: float, s_f: float, t0: int, dt: int, n: int) -> float:
    """Their equation (1), for t in {t0, t0 + dt, ..., t0 + n dt}."""
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


def test_the_schedule_is_the_cubic_of_zhu_and_gupta():
    # by hand: s_f = 0.8, s_i = 0, t0 = 10, dt = 5, n = 4 -> 0, 0.8 - 0.8 * 0.75^3, 0.8 - 0.8 * 0.5^3, ...
    assert [cubic_sparsity(t, 0.0, 0.8, 10, 5, 4) for t in (10, 15, 20, 25, 30)] == pytest.approx(
        [0.0, 0.4625, 0.7, 0.7875, 0.8]
    )
    for t in range(0, 60, 5):
        expected = 0.1 if t <= 10 else 0.9 if t >= 50 else zhu_gupta(t, 0.1, 0.9, 10, 5, 8)
        assert cubic_sparsity(t, 0.1, 0.9, 10, 5, 8) == pytest.approx(expected)


class Seen(TrainHook):
    """Records, at every step, each layer's reparametrised weight and mask (before or after GMP's turn)."""

    def __init__(self) -> None:
        self.trainer, self.steps = None, []

    def start(self, trainer) -> None:
        self.trainer = trainer

    def after_backward(self, model) -> None:
        self.steps.append(
            (
                self.trainer.iteration,
                {
                    i: (model[i].weight_orig.detach().clone(), model[i].weight_mask.detach().clone())
                    for i in (1, 3)
                },
            )
        )


def test_every_step_prunes_the_smallest_alive_weights_to_the_schedules_sparsity(data):
    settings = GMPSettings(start="3it", every="4it", steps=5, initial_sparsity=0.1)
    before, after = Seen(), Seen()
    cfg = TrainConfig(epochs=4, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9)
    gmp = GMP(settings, sparsity=0.8)
    trainer = Trainer(mlp(), data, cfg, hooks=[before, gmp, after])
    result = trainer.run()
    schedule = {3 + 4 * k: zhu_gupta(3 + 4 * k, 0.1, 0.8, 3, 4, 5) for k in range(6)}
    assert [t for t, _ in gmp.done] == list(schedule) and [s for _, s in gmp.done] == pytest.approx(
        list(schedule.values())
    )
    for (t, was), (_, now) in zip(before.steps, after.steps, strict=True):
        for i, (weight, old) in was.items():
            new = now[i][1]
            pruned = int((new == 0).sum())
            if t not in schedule:
                assert torch.equal(new, old), (t, i)  # the mask moves at pruning steps only
                continue
            assert pruned == round(schedule[t] * new.numel()), (t, i)
            w, alive = weight.numpy().ravel(), old.numpy().ravel() == 1
            gone = np.flatnonzero(alive & (new.numpy().ravel() == 0))
            candidates = np.flatnonzero(alive)
            smallest = candidates[np.argsort(np.abs(w[candidates]), kind="stable")[: len(gone)]]
            assert sorted(gone) == sorted(smallest), (t, i)
            assert not ((old.numpy() == 0) & (new.numpy() == 1)).any()  # none comes back
    # the plain layers at the end: pruned weights exactly 0, the mask what was kept, at s_f
    assert [type(m) for m in trainer.model] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    for name in ("1.weight", "3.weight"):
        kept = result.mask[name]
        assert int((~kept).sum()) == round(0.8 * kept.numel())
        assert torch.equal(dict(trainer.model.named_parameters())[name] != 0, kept)
    assert result.reports["gmp"]["steps"][-1] == [23, pytest.approx(0.8)]


def test_a_gradual_pruning_killed_mid_way_resumes_with_identical_numbers(data):
    cfg = TrainConfig(epochs=3, batch_size=64, eval_every="5it", optimizer="adam", lr=1e-2)
    settings = GMPSettings(every="3it", steps=6)
    straight = Trainer(mlp(), data, cfg, seed=4, hooks=[GMP(settings, sparsity=0.7)])
    expected = straight.run()
    saved = killed_at_epoch_end(Trainer(mlp(), data, cfg, seed=4, hooks=[GMP(settings, sparsity=0.7)]))
    assert "1.weight_mask" in saved["model"] and saved["hooks"][0]["done"]
    resumed = Trainer(mlp(), data, cfg, seed=4, hooks=[GMP(settings, sparsity=0.7)])
    resumed.load_state_dict(saved)
    result = resumed.run()
    assert [asdict(r) for r in result.history] == [asdict(r) for r in expected.history]
    assert result.mask == expected.mask and result.reports == expected.reports
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_gmp_is_a_method_of_its_own_from_the_command_line(cli, tmp_path):
    root = tmp_path / "runs"
    args = [
        "--model", "lenet-300-100", "--data", "synthetic", "--epochs", "2", "--batch-size", "64",
        "--method", "gmp", "--rate", "0.75", "--gmp-every", "2it", "--gmp-steps", "5",
        "--treatment", "finetune", "--finetune-epochs", "1",
    ]  # fmt: skip
    code, out, err = cli("run", *args, "--root", root, "--no-progress", "--threads", "1")
    assert code == 0, err
    text = " ".join((out + err).split())
    assert "gmp: pruned by magnitude to 75.0% in 6 steps of the cubic schedule, iterations 0 to 10" in text
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    dense, level = load_level(run, level=0, root=root), load_level(run, level=1, root=root)
    assert dense.metrics.density == pytest.approx(0.25, abs=1e-3)  # every layer at 75%, exactly rounded
    assert level.mask == dense.mask.and_nonzero(dense.model, dense.mask.names())
    spec = build_spec(
        ExperimentSpec, model="lenet-300-100", data="synthetic", pruning={"method": "gmp", "rounds": 2}
    )
    with pytest.raises(SpecError, match="gmp' prunes gradually during one dense training: use rounds 1"):
        ExperimentRunner(spec, root)
    code, _, err = cli("run", "--data", "synthetic", "--method", "gmp", "--gmp-steps", "1000", "--root", root)
    assert code == 2 and "after the end of the dense training" in err and "Traceback" not in err
