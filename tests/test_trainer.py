import math

import pytest
import torch
from torch import nn

from prunelab.data import load_dataset
from prunelab.errors import SpecError
from prunelab.models import build_model
from prunelab.pruning import Mask
from prunelab.spec import build_spec
from prunelab.training import TrainConfig, Trainer, build_schedule, train


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


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
    assert [r.test_loss for r in a.history] == [r.test_loss for r in b.history]
    assert all(
        torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values(), strict=True)
    )
    assert [r.test_loss for r in a.history] != [r.test_loss for r in c.history]


@STEPS
def test_resume_from_epoch_checkpoint_gives_identical_results(data, dropout):
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9)
    straight_model = small_model(data, dropout=dropout)
    straight = Trainer(straight_model, data, cfg, seed=3).run()

    saved = {}

    def stop_after_first_epoch(trainer):
        saved.update(trainer.state_dict())
        raise KeyboardInterrupt

    first = Trainer(small_model(data, dropout=dropout), data, cfg, seed=3)
    with pytest.raises(KeyboardInterrupt):
        first.run(on_epoch_end=stop_after_first_epoch)
    resumed_model = small_model(data, seed=99, dropout=dropout)  # weights come from the checkpoint
    resumed = Trainer(resumed_model, data, cfg, seed=3)
    resumed.load_state_dict(saved)
    result = resumed.run()
    assert [r.test_loss for r in result.history] == [r.test_loss for r in straight.history]
    for x, y in zip(resumed_model.state_dict().values(), straight_model.state_dict().values(), strict=True):
        assert torch.equal(x, y)


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
        (dict(optimizer="adam", nesterov=True, momentum=0.9), "nesterov applies to the sgd optimizer only"),
    ],
)
def test_bad_config_is_refused_clearly(values, needle):
    with pytest.raises(SpecError) as err:
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
