import math
from dataclasses import asdict

import pytest
import torch
from helpers import killed_at_epoch_end
from torch import nn

from prunelab.data import load_dataset
from prunelab.errors import CheckpointError, PrunelabError, SpecError
from prunelab.models import build_model
from prunelab.pruning import Mask
from prunelab.spec import build_spec
from prunelab.training import TrainConfig, Trainer, build_schedule, evaluate, train


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


@pytest.fixture(scope="module")
def noisy(data):
    """Synthetic data with 60% of the training labels redrawn at random: fitting them makes the
    validation loss rise again, so its minimum is an early point, not the last one."""
    from prunelab.data import Dataset, Split

    g = torch.Generator().manual_seed(5)
    labels = data.train.y.clone()
    noise = torch.rand(len(labels), generator=g) < 0.6
    labels[noise] = torch.randint(0, data.info.num_classes, (int(noise.sum()),), generator=g)
    return Dataset(data.info, Split(data.train.x, labels), data.val, data.test, "noisy synthetic")


def small_model(data, seed=0, dropout=False) -> nn.Module:
    torch.manual_seed(seed)
    c, h, w = data.info.input_shape
    layers = [nn.Flatten(), nn.Linear(c * h * w, 32), nn.ReLU()]
    layers += [nn.Dropout(0.3)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(32, data.info.num_classes))


def random_mask(model, density=0.3, seed=0) -> Mask:
    g = torch.Generator().manual_seed(seed)
    full = Mask.ones(model)
    return Mask({n: torch.rand(m.shape, generator=g) < density for n, m in full.items()})


def test_learns_above_chance(data):
    model = small_model(data)
    result = train(model, data, TrainConfig(epochs=5, lr=3e-3, batch_size=32))
    assert result.final.test_acc > 0.6
    assert result.iterations == 5 * -(-len(data.train) // 32)
    assert result.history[0].iteration == 0  # evaluated at initialisation too
    assert result.history[-1].val_loss is not None
    assert result.history[0].test_acc is None  # the test split only at the end


def without_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "wall_time"}


OPTIMIZERS = [
    dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4),
    dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(optimizer="adam", lr=3e-3, weight_decay=1e-4),
    dict(optimizer="adamw", lr=3e-3, weight_decay=1e-2),
]


@pytest.mark.parametrize(
    "opt", OPTIMIZERS, ids=lambda o: o["optimizer"] + ("-nesterov" if o.get("nesterov") else "")
)
def test_pruned_weights_stay_exactly_zero_and_accumulate_no_state(data, opt):
    model = small_model(data)
    mask = random_mask(model)
    cfg = TrainConfig(epochs=2, batch_size=64, eval_every="3it", **opt)
    trainer = Trainer(model, data, cfg, mask=mask)
    seen = []

    def check(done, total):  # called during the epoch, between steps
        for name, p in model.named_parameters():
            if name in mask:
                seen.append(bool((p.detach()[~mask[name]] == 0).all()))

    trainer.run(on_progress=check)
    assert seen and all(seen)
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert (params[name].detach()[~keep] == 0).all()
        assert (params[name].detach()[keep] != 0).float().mean() > 0.99  # kept weights do train
        for value in trainer.optimizer.state[params[name]].values():
            if isinstance(value, torch.Tensor) and value.shape == keep.shape:
                assert (value[~keep] == 0).all()


def test_every_step_keeps_the_mask(data):
    """Step by step, not only at evaluation points."""
    model = small_model(data)
    mask = random_mask(model, 0.5)
    trainer = Trainer(
        model,
        data,
        TrainConfig(
            iterations=12,
            batch_size=16,
            optimizer="sgd",
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-3,
            eval_every="1it",
        ),
        mask=mask,
    )
    trainer.run()
    assert len(trainer.history) == 13


# with dropout the trainer takes the autograd step; without, the Linear-ReLU step (C where it builds)
STEPS = pytest.mark.parametrize("dropout", [True, False], ids=["autograd", "mlp-step"])


@STEPS
def test_same_seed_same_numbers_different_seed_different(data, dropout):
    def run(seed):
        model = small_model(data, dropout=dropout)
        return train(model, data, TrainConfig(epochs=2, batch_size=32, eval_every="5it"), seed=seed), model

    (a, ma), (b, mb), (c, _) = run(0), run(0), run(1)
    assert [asdict(r) for r in a.history] == [asdict(r) for r in b.history]
    assert without_time(a.summary()) == without_time(b.summary())
    assert all(
        torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values(), strict=True)
    )
    assert [r.val_loss for r in a.history] != [r.val_loss for r in c.history]


@STEPS
@pytest.mark.parametrize("kill_after", [1, 2])
def test_resume_from_epoch_checkpoint_gives_identical_results(noisy, dropout, kill_after):
    # evaluations every 5 iterations of 14-iteration epochs: train totals cross epoch ends, and on
    # shuffled labels the validation loss rises again, so the best copy is an earlier point
    data = noisy
    cfg = TrainConfig(epochs=4, batch_size=32, optimizer="sgd", lr=0.2, momentum=0.9, eval_every="5it")
    straight_model = small_model(data, dropout=dropout)
    straight = Trainer(straight_model, data, cfg, seed=3).run()

    first = Trainer(small_model(data, dropout=dropout), data, cfg, seed=3)
    saved = killed_at_epoch_end(first, kill_after)
    assert saved["best"] is not None and saved["train_totals"][2] > 0  # both are carried over
    resumed_model = small_model(data, seed=99, dropout=dropout)  # weights come from the checkpoint
    resumed = Trainer(resumed_model, data, cfg, seed=3)
    resumed.load_state_dict(saved)
    result = resumed.run()
    assert [asdict(r) for r in result.history] == [asdict(r) for r in straight.history]
    assert without_time(result.summary()) == without_time(straight.summary())
    assert 0 < result.early_stop_iteration < result.iterations  # the best copy: neither start nor end
    for x, y in zip(resumed_model.state_dict().values(), straight_model.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_an_old_or_foreign_checkpoint_is_refused_clearly(data):
    trainer = Trainer(small_model(data), data, TrainConfig(iterations=3))
    state = trainer.state_dict()
    old = {k: v for k, v in state.items() if k not in ("format", "best", "train_totals", "hooks")}
    with pytest.raises(CheckpointError, match="format 1, this prunelab reads format 2"):
        trainer.load_state_dict(old)
    with pytest.raises(CheckpointError, match="does not fit this run"):
        trainer.load_state_dict({**state, "model": {"nope": torch.zeros(1)}})
    other = Trainer(small_model(data, seed=1), data, TrainConfig(iterations=3))
    other.run()
    state = other.state_dict()
    state["best"]["weights"] = {"other.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="best-validation weights are not this model's"):
        trainer.load_state_dict(state)


def test_global_rng_untouched(data):
    model = small_model(data, dropout=True)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, data, TrainConfig(iterations=5))
    assert torch.equal(torch.rand(3), expected)


def test_snapshots_for_rewinding(data):
    model = small_model(data)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, data, TrainConfig(iterations=10), snapshot_at=[0, 4])
    assert set(result.snapshots) == {0, 4}
    assert all(torch.equal(result.snapshots[0][k], v) for k, v in init.items())
    assert not torch.equal(result.snapshots[4]["1.weight"], init["1.weight"])


def test_early_stop_iteration_is_min_validation_loss(data):
    result = train(small_model(data), data, TrainConfig(epochs=3, eval_every="4it", lr=1e-2))
    best = min(result.history, key=lambda r: r.val_loss)
    assert result.early_stop_iteration == best.iteration
    assert result.summary()["early_stop"]["val_loss"] == best.val_loss


def test_test_split_is_evaluated_on_the_final_and_the_best_validation_weights(noisy):
    data = noisy
    cfg = TrainConfig(epochs=4, batch_size=32, optimizer="sgd", lr=0.2, momentum=0.9, eval_every="3it")
    model = small_model(data)
    result = train(model, data, cfg)
    best = result.early_stop
    assert 0 < best.iteration < result.iterations
    tested = [r.iteration for r in result.history if r.test_loss is not None]
    assert tested == [best.iteration, result.iterations]  # nowhere else
    assert all(r.val_loss is not None for r in result.history)
    assert (best.test_loss, best.test_acc) != (result.final.test_loss, result.final.test_acc)
    # the same run again, with the weights at the early-stop point kept as a snapshot
    again = train(small_model(data), data, cfg, snapshot_at=[best.iteration])
    assert [asdict(r) for r in again.history] == [asdict(r) for r in result.history]
    at_best = small_model(data)
    at_best.load_state_dict(again.snapshots[best.iteration])
    loss, acc = evaluate(at_best, data.test)
    assert best.test_loss == pytest.approx(loss, rel=1e-5) and best.test_acc == acc
    loss, acc = evaluate(model, data.test)  # the model is left with its final weights
    assert result.final.test_loss == pytest.approx(loss, rel=1e-5) and result.final.test_acc == acc


def test_without_a_validation_split_the_early_stop_is_the_final_record():
    data = load_dataset("synthetic", val_size=0)
    result = train(small_model(data), data, TrainConfig(epochs=2, eval_every="5it"))
    assert all(r.val_loss is None for r in result.history)
    assert [r.iteration for r in result.history if r.test_loss is not None] == [result.iterations]
    assert result.early_stop is result.final and result.early_stop_iteration == result.iterations
    assert result.final.train_loss is not None


def test_validation_every_100_iterations_by_default(data):
    assert TrainConfig().eval_every == "100it"
    assert TrainConfig().eval_interval(14) == 100
    assert TrainConfig(eval_every=None).eval_interval(14) == 14  # None: once per epoch
    result = train(small_model(data), data, TrainConfig(iterations=250, batch_size=16))
    assert [r.iteration for r in result.history] == [0, 100, 200, 250]
    per_epoch = train(small_model(data), data, TrainConfig(epochs=2, batch_size=32, eval_every=None))
    assert [r.iteration for r in per_epoch.history] == [0, 14, 28]


def test_late_rewound_start_and_until_with_evaluation_every_100_iterations(data):
    cfg = TrainConfig(iterations=300, batch_size=16)  # 28 iterations an epoch
    trainer = Trainer(small_model(data), data, cfg)
    trainer.iteration = 150  # late rewinding: the run starts here
    result = trainer.run(until=260)
    assert [r.iteration for r in result.history] == [150, 200, 260]
    assert result.history[0].train_loss is None and result.history[0].test_loss is None
    assert result.iterations == 260 and result.final.test_loss is not None
    assert result.early_stop.test_loss is not None


def test_result_records_what_the_numbers_depend_on(data):
    import prunelab

    trainer = Trainer(small_model(data), data, TrainConfig(iterations=7, eval_every="5it"))
    summary = trainer.run().summary()
    assert summary["stopped_early"] is None
    assert summary["environment"] == {
        "torch": torch.__version__,
        "prunelab": prunelab.__version__,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "step": trainer.step_kind,
        "eval": trainer.evaluator.kind,
        "eval_every": 5,
    }
    assert set(summary) == {
        "iterations",
        "wall_time",
        "final",
        "early_stop_iteration",
        "early_stop",
        "stopped_early",
        "environment",
        "reports",
    }
    assert summary["reports"] == {}


def test_schedules():
    cfg = TrainConfig(iterations=100, schedule="step", milestones=("2ep", "80it"), gamma=0.5)
    s = build_schedule(cfg, iterations_per_epoch=25)
    assert [s.factor(i) for i in (0, 49, 50, 79, 80, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    cos = build_schedule(TrainConfig(iterations=110, schedule="cosine", warmup="10it"), 10)
    assert cos.factor(0) == pytest.approx(0.1)
    assert cos.factor(9) == pytest.approx(1.0)
    assert cos.factor(60) == pytest.approx(0.5)
    assert cos.factor(109) == pytest.approx(0.5 * (1 + math.cos(0.99 * math.pi)))


def test_lr_follows_schedule_in_training(data):
    model = small_model(data)
    trainer = Trainer(
        model, data, TrainConfig(iterations=20, schedule="cosine", warmup="5it", eval_every="5it")
    )
    trainer.run()
    lrs = [r.lr for r in trainer.history]
    assert lrs[1] == pytest.approx(1.2e-3)  # end of warmup
    assert lrs[-1] < lrs[2] < lrs[1]


@pytest.mark.parametrize(
    "values, needle",
    [
        (dict(optimizer="sgdd"), "unknown optimizer 'sgdd'. Did you mean 'sgd'?"),
        (dict(lr=-1), "lr: Input should be greater than 0"),
        (dict(epochs=2, iterations=5), "epochs or as iterations, not both"),
        (dict(schedule="linear"), "unknown schedule 'linear'"),
        (dict(milestones=("3 epochs",)), "'3 epochs' is not a duration"),
        (dict(eval_every="100 iterations"), "'100 iterations' is not a duration"),
        (dict(optimizer="adam", nesterov=True, momentum=0.9), "nesterov applies to the sgd optimizer only"),
    ],
)
def test_bad_config_is_refused_clearly(values, needle):
    with pytest.raises(PrunelabError) as err:
        build_spec(TrainConfig, **values)
    assert needle in str(err.value)


def test_bf16_on_cpu_is_refused(data):
    with pytest.raises(SpecError, match="bf16"):
        Trainer(small_model(data), data, TrainConfig(device="cpu", bf16=True))


def test_trains_registered_model_on_digits():
    data = load_dataset("digits")
    model = build_model("lenet-300-100", num_classes=10, input_shape=data.info.input_shape, seed=0)
    result = train(model, data, TrainConfig(epochs=3))
    assert result.final.test_acc > 0.85


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_lean_fused_step_is_bit_identical_to_torch_step(name):
    from prunelab.training.fused import LeanStepper

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(
            model.parameters(), lr=1e-2, weight_decay=1e-3, fused=True
        )
        return model, opt

    (ref, ref_opt), (lean, lean_opt) = make(), make()
    stepper = LeanStepper(lean_opt)
    g = torch.Generator().manual_seed(1)
    for i in range(25):
        x, y = torch.randn(8, 20, generator=g), torch.randint(0, 3, (8,), generator=g)
        for model, opt, step in ((ref, ref_opt, ref_opt.step), (lean, lean_opt, stepper.step)):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if i == 10:
                opt.param_groups[0]["lr"] = 3e-3  # schedules change the LR between steps
            step()
            opt.zero_grad(set_to_none=True)
    assert stepper._plan is not None  # the lean path was really taken
    for a, b in zip(ref.parameters(), lean.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ref_opt.state.values(), lean_opt.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_model_that_does_not_fit_the_data_is_refused_clearly(data):
    wrong_input = build_model("lenet-300-100", num_classes=4, input_shape=(1, 28, 28))
    with pytest.raises(SpecError, match=r"does not accept synthetic inputs of shape \(1, 8, 8\)"):
        Trainer(wrong_input, data, TrainConfig(epochs=1))
    wrong_classes = build_model("lenet-300-100", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(SpecError, match="has 4 classes; build it with num_classes=4"):
        Trainer(wrong_classes, data, TrainConfig(epochs=1))
