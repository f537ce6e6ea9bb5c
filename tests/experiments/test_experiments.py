"""The experiment engine: identity, treatments, controls, resume after a kill, locking, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from prunelab.cli import main
from prunelab.errors import PrunelabError, SpecError
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec, parse_seeds
from prunelab.experiments.store import find_experiment
from prunelab.experiments.summary import level_rows, winning_ticket
from prunelab.experiments.treatments import TREATMENTS, LevelInputs
from prunelab.locks import ExperimentLocked, locked
from prunelab.pruning import Mask
from prunelab.spec import build_spec
from prunelab.training import TrainConfig, Trainer


def tiny_spec(**overrides) -> ExperimentSpec:
    values = dict(
        model="lenet-300-100",
        data="synthetic",
        train=TrainConfig(epochs=2, batch_size=64),
        pruning=PruneSpec(rate=0.5, rounds=2),
        seeds=(0,),
    )
    values.update(overrides)
    return ExperimentSpec(**values)


def without_times(value):
    """Everything but wall-clock times, which legitimately differ between runs."""
    if hasattr(value, "to_json"):
        value = value.to_json()
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k != "wall_time"}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def level_metrics(result, seed=0):
    return [(m.level, m.density, m.final.test_acc, m.final.test_loss) for m in result.levels[seed]]


# identity ---------------------------------------------------------------------------------------
def test_pinned_hashes():
    """Changing these breaks every user's stored results: only ever add pins."""
    lt = ExperimentSpec(
        model="lenet-300-100",
        data="fashion-mnist",
        train=TrainConfig(epochs=3),
        pruning=PruneSpec(rounds=15, output_rate_factor=0.5),
    )
    assert lt.experiment_id() == "7a7511008893"
    assert lt.trunk_id() == "83014c98037d"
    assert tiny_spec().experiment_id() == "b9df66149c74"


PINS = [  # (experiment id, trunk id, the spec's fields beside the tiny ones): only ever add pins
    ("4257a4838654", "701e24418f28", {"pruning": {"method": "snip", "rate": 0.5, "scope": "global"}}),
    ("ba4cf326a4ef", "701e24418f28", {"pruning": {"method": "grasp", "grasp": {"temperature": 100.0}}}),
    ("bd67fec6ab0d", "701e24418f28", {"pruning": {"method": "synflow", "synflow": {"rounds": 10}}}),
    ("1673797ab9cc", "701e24418f28", {"pruning": {"method": "l1-structured", "structure": "structured-output"}}),
    ("2b06d0a3e229", "534305b9f39f", {"model": "conv2", "pruning": {"method": "l1-filter"}}),
    ("6194463b63e6", "534305b9f39f", {"model": "conv2", "treatment": "finetune", "pruning": {
        "method": "thinet", "layers": "conv-only", "exclude": ("conv1",), "reconstruct": True,
        "calibration_images": 64, "calibration_positions": 5}}),
    ("2c06b93bedeb", "ee4c61e56e08", {"model": "conv2-bn", "pruning": {
        "method": "slimming", "slimming": {"penalty": 0.05, "gamma_init": 0.5}}}),
    ("46f629d30f70", "e84224e75fec", {"model": "conv2-bn", "pruning": {
        "method": "slimming", "rounds": 2, "slimming": {"multi_pass": True}}}),
    ("c3d92e991d23", "7d822195eda6", {"model": "conv2-bn", "pruning": {
        "method": "early-bird", "early_bird": {"queue": 3, "distance": 0.2, "bf16": True}}}),
    ("1e846d7d138f", "b4dd5a930b99", {"treatment": "finetune", "pruning": {
        "method": "sparse-vd", "sparse_vd": {"kl_warmup": "2ep", "threshold": 2.0}}}),
    ("7d84915d239f", "623d7ab684f1", {"treatment": "finetune", "pruning": {
        "method": "bayesian-compression", "bayesian_compression": {"kl_warmup": "2ep"}, "layers": "fc-only",
        "exclude": ("fc3",)}}),
    ("b1c132bd9b3f", "1e0b43b4ead8", {"model": "resnet20", "pruning": {
        "method": "structure-selection", "structure_selection": {"penalty": 0.05}}}),
    ("c10dcc45c7fe", "e680b553728f", {"model": "resnet20", "pruning": {
        "method": "structure-selection", "structure_selection": {"unit": "groups"}}}),
    ("e3e48b56e0c3", "701e24418f28", {"treatment": "scratch-b", "controls": ("reinit", "random-mask"),
        "pruning": {"method": "l1-structured", "structure": "structured-output"}}),
    ("f2b80908b5f6", "701e24418f28", {"pruning": {"method": "magnitude", "structure": "2:4"}}),
    ("1f06cb4fe455", "701e24418f28", {"pruning": {"method": "magnitude-row"}}),
    ("aa0c5cb23c90", "701e24418f28", {"treatment": "rewind:5it", "controls": ("reinit",), "seeds": (0, 1, 2)}),
    ("200da2c06bb0", "701e24418f28", {"pruning": {"layer_rates": {"fc3": 0.1}}}),
]  # fmt: skip


@pytest.mark.parametrize(("experiment", "trunk", "values"), PINS, ids=[p[0] for p in PINS])
def test_pinned_hashes_of_the_methods_treatments_and_settings(experiment, trunk, values):
    """Every method, its settings table and the trunk a training-time method trains apart keep their ids."""
    base = {"model": "lenet-300-100", "data": "synthetic", "train": {"epochs": 1, "batch_size": 64}}
    pruning = values.get("pruning", {"rate": 0.5, "rounds": 1})
    spec = build_spec(ExperimentSpec, **(base | values | {"pruning": pruning}))
    assert (spec.experiment_id(), spec.trunk_id()) == (experiment, trunk)


def test_coupled_structures_name_experiments_apart_from_the_per_layer_ones():
    """l1-filter once pruned each layer's rows on their own; pruned by coupled groups now, it gives
    other results: a new id, never mixed with stored ones. The trunk stays shared."""
    base = tiny_spec(model="conv2", pruning=PruneSpec(method="l1-filter", rate=0.5))
    per_layer = tiny_spec(
        model="conv2", pruning=PruneSpec(method="l1-filter", structure="structured-output", rate=0.5)
    )
    assert base.identity()["coupling"] == 1 and "coupling" not in per_layer.identity()
    assert base.experiment_id() != per_layer.experiment_id() and base.trunk_id() == per_layer.trunk_id()
    assert "coupling" not in tiny_spec().identity()  # unstructured ids are as they were (pinned above)


def test_defaults_seeds_device_and_label_do_not_enter_the_hash():
    base = tiny_spec()
    explicit = tiny_spec(
        pruning=PruneSpec(rate=0.5, rounds=2, scope="layerwise", method="magnitude"),
        treatment=TreatmentSpec(kind="rewind", rewind_to="0it"),
    )
    assert explicit.experiment_id() == base.experiment_id()
    assert tiny_spec(seeds=(0, 1, 2), name="x").experiment_id() == base.experiment_id()
    assert (
        tiny_spec(train=TrainConfig(epochs=2, batch_size=64, device="cpu")).experiment_id()
        == base.experiment_id()
    )
    assert tiny_spec(pruning=PruneSpec(rate=0.4, rounds=2)).experiment_id() != base.experiment_id()
    # the dense trunk is shared across methods and treatments, not across training changes
    assert tiny_spec(pruning=PruneSpec(method="random", rounds=2)).trunk_id() == base.trunk_id()
    assert tiny_spec(treatment=TreatmentSpec(kind="finetune")).trunk_id() == base.trunk_id()
    assert tiny_spec(train=TrainConfig(epochs=3, batch_size=64)).trunk_id() != base.trunk_id()


def test_parse_seeds_and_treatments():
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("0,3,7") == (0, 3, 7)
    with pytest.raises(SpecError, match="'a-b'"):
        parse_seeds("a-b")
    assert TreatmentSpec.parse("rewind:500it").rewind_to == "500it"
    with pytest.raises(SpecError, match="only rewind takes an argument"):
        TreatmentSpec.parse("finetune:3ep")
    with pytest.raises(SpecError, match=r"unknown treatment 'rewnd'\. Did you mean 'rewind'"):
        TreatmentSpec.parse("rewnd")


# running ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("treatment", ["rewind", "rewind:5it", "finetune", "reinit", "sign", "sigma-sign"])
def test_every_treatment_runs_and_masks_only_shrink(tmp_path, treatment):
    spec = tiny_spec(treatment=TreatmentSpec.parse(treatment))
    result = ExperimentRunner(spec, tmp_path).run()
    densities = [m.density for m in result.levels[0]]
    assert densities[0] == 1.0
    assert densities[1] == pytest.approx(0.5, abs=1e-3) and densities[2] == pytest.approx(0.25, abs=1e-3)
    masks = [Mask.load(result.directory / "seed-0" / f"level-0{k}" / "mask.safetensors") for k in (1, 2)]
    for name in masks[0]:
        assert not (masks[1][name] & ~masks[0][name]).any()  # never revived
    assert all(m.final.test_acc > 0.5 for m in result.levels[0])


def test_treatment_start_weights_by_hand():
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(4, 5, generator=g), "b": torch.randn(4, generator=g)}
    fresh = {"w": torch.randn(4, 5, generator=g), "b": torch.randn(4, generator=g)}
    previous = {"w": torch.randn(4, 5, generator=g), "b": torch.randn(4, generator=g)}
    mask = Mask({"w": torch.ones(4, 5, dtype=torch.bool)})
    inputs = LevelInputs(
        spec=tiny_spec(),
        seed=0,
        level=1,
        mask=mask,
        init=init,
        points={0: init},
        previous=previous,
        fresh=fresh,
        iterations_per_epoch=10,
    )
    sign = TREATMENTS.get("sign")().weights(inputs)
    assert torch.equal(sign["w"], fresh["w"].abs() * init["w"].sign()) and torch.equal(sign["b"], init["b"])
    sigma = TREATMENTS.get("sigma-sign")().weights(inputs)
    assert torch.allclose(sigma["w"], init["w"].std() * init["w"].sign())
    assert TREATMENTS.get("finetune")().weights(inputs) is previous
    assert TREATMENTS.get("reinit")().weights(inputs) is fresh
    late = replace(inputs, spec=tiny_spec(treatment=TreatmentSpec.parse("rewind:2ep")), points={20: previous})
    assert TREATMENTS.get("rewind")().start_iteration(late) == 20
    assert TREATMENTS.get("rewind")().weights(late) is previous
    assert TREATMENTS.get("rewind")().trunk_points(late.spec, 10) == (20,)


def test_controls_have_the_ticket_densities(tmp_path):
    result = ExperimentRunner(tiny_spec(controls=("reinit", "random-mask")), tmp_path).run()
    ticket = result.directory / "seed-0" / "level-02"
    mask = Mask.load(ticket / "mask.safetensors")
    random = Mask.load(ticket / "controls" / "random-mask" / "mask.safetensors")
    assert random.layer_density() == mask.layer_density() and random != mask
    assert Mask.load(ticket / "controls" / "reinit" / "mask.safetensors") == mask
    assert len(result.controls[0]["reinit"]) == 2


def test_rerun_is_free_and_trunk_is_shared(tmp_path, monkeypatch):
    first = ExperimentRunner(tiny_spec(), tmp_path).run()
    calls = []
    original = Trainer.run
    monkeypatch.setattr(Trainer, "run", lambda self, **kw: calls.append(1) or original(self, **kw))
    again = ExperimentRunner(tiny_spec(), tmp_path).run()
    assert calls == [] and level_metrics(again) == level_metrics(first)
    other = ExperimentRunner(
        tiny_spec(pruning=PruneSpec(method="random", rate=0.5, rounds=2)), tmp_path
    ).run()
    assert len(calls) == 2  # two pruned levels; dense level 0 came from the shared trunk
    assert other.levels[0][0] == first.levels[0][0]


def test_same_seed_same_results_across_roots(tmp_path):
    a = ExperimentRunner(tiny_spec(), tmp_path / "a").run()
    b = ExperimentRunner(tiny_spec(), tmp_path / "b").run()
    assert level_metrics(a) == level_metrics(b)


def test_resume_after_interruption_gives_identical_numbers(tmp_path, monkeypatch):
    spec = tiny_spec(train=TrainConfig(epochs=3, batch_size=64), controls=("reinit",))
    straight = ExperimentRunner(spec, tmp_path / "straight").run()
    from prunelab.experiments.artifact import Artifact

    saves = {"n": 0}
    original = Artifact.save_checkpoint

    def dies_at_the_seventh_checkpoint(self, state):
        original(self, state)
        saves["n"] += 1
        if saves["n"] == 7:  # level 1 ticket is mid-way (dense took 3)
            raise KeyboardInterrupt

    monkeypatch.setattr(Artifact, "save_checkpoint", dies_at_the_seventh_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        ExperimentRunner(spec, tmp_path / "killed").run()
    monkeypatch.setattr(Artifact, "save_checkpoint", original)
    assert list((tmp_path / "killed").rglob("checkpoint.pt"))
    resumed = ExperimentRunner(spec, tmp_path / "killed").run()
    assert level_metrics(resumed) == level_metrics(straight)
    assert [m.history for m in resumed.controls[0]["reinit"]] == [
        m.history for m in straight.controls[0]["reinit"]
    ]
    assert not list((tmp_path / "killed").rglob("checkpoint.pt"))


def test_sigkill_mid_run_then_rerun_matches_uninterrupted(tmp_path):
    """A real kill -9 of the CLI while it trains, then the same command again."""
    args = ["run", "--data", "digits", "--rounds", "2", "--rate", "0.5", "--epochs", "6", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunelab", *args, "--root", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "experiments").rglob("level-01/checkpoint.pt")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((killed / "experiments").rglob("checkpoint.pt")), "the run finished before it could be killed"
    assert main([*args, "--root", str(killed)]) == 0
    assert main([*args, "--root", str(tmp_path / "straight")]) == 0
    a = find_experiment(next((killed / "experiments").iterdir()).name, killed)
    b = find_experiment(next((tmp_path / "straight" / "experiments").iterdir()).name, tmp_path / "straight")
    assert without_times(a.levels) == without_times(b.levels)
    assert without_times(a.levels)[0][2]["history"]  # the comparison covered full learning curves


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    spec = tiny_spec()
    runner = ExperimentRunner(spec, tmp_path)
    with locked(runner.directory), pytest.raises(ExperimentLocked, match=rf"pid {os.getpid()}"):
        ExperimentRunner(spec, tmp_path).run()


# bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: build_spec(PruneSpec, rate=1.0), "rate: Input should be less than 1"),
        (lambda: build_spec(PruneSpec, rate=-0.1), "rate: Input should be greater than or equal to 0"),
        (lambda: build_spec(PruneSpec, method="magnitud"), "Did you mean 'magnitude'"),
        (lambda: build_spec(ExperimentSpec, model="lenet", data="digits"), "unknown model 'lenet'"),
        (
            lambda: build_spec(ExperimentSpec, model="lenet5", data="digits", controls=("shuffle",)),
            "unknown control",
        ),
        (lambda: ExperimentRunner(tiny_spec(pruning=PruneSpec(exclude=("fc9",)))), "'fc9'"),
        (
            lambda: ExperimentRunner(
                tiny_spec(pruning=PruneSpec(method="l1-structured", structure="unstructured"))
            ),
            "structured",
        ),
    ],
)
def test_invalid_experiments_refused_before_training(tmp_path, make, needle):
    with pytest.raises(PrunelabError) as err:
        make()
    assert needle in str(err.value)
    assert not (tmp_path / "experiments").exists()


# summaries and CLI --------------------------------------------------------------------------------
def test_summary_over_seeds_and_winning_ticket(tmp_path):
    result = ExperimentRunner(tiny_spec(seeds=(0, 1)), tmp_path).run()
    exp = find_experiment(result.directory.name[:6], tmp_path)
    rows = level_rows(exp)
    accs = [result.levels[s][1].final.test_acc for s in (0, 1)]
    assert rows[1]["ticket"][0] == pytest.approx(sum(accs) / 2)
    assert rows[1]["ticket"][1] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    ticket = winning_ticket(exp, tolerance=1.0)
    assert ticket["level"] == 2  # everything is within 100 points: the sparsest level wins
    with pytest.raises(SpecError, match=r"tolerance must be in \[0, 1\]"):
        winning_ticket(exp, tolerance=-1.0)


def test_cli_run_ls_show_and_config_file(tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text(
        'model = "lenet-300-100"\ndata = "synthetic"\nseeds = "0-1"\ntreatment = "finetune"\n'
        "[train]\nepochs = 1\n[pruning]\nrate = 0.5\nrounds = 2\n"
    )
    root = str(tmp_path / "runs")
    assert main(["run", "--config", str(config), "--rounds", "1", "--root", root, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "winning ticket" in out or "no pruned level" in out
    spec_files = list(Path(root).glob("experiments/*/spec.json"))
    spec = json.loads(spec_files[0].read_text())["spec"]
    assert (
        spec["pruning"]["rounds"] == 1 and spec["treatment"]["kind"] == "finetune" and spec["seeds"] == [0, 1]
    )
    assert main(["ls", "--root", root]) == 0
    assert "done" in capsys.readouterr().out
    assert main(["show", spec_files[0].parent.name[:5], "--root", root]) == 0
    assert "50.00%" in capsys.readouterr().out
    assert main(["show", "zzz", "--root", root]) == 2
    assert "no experiment 'zzz'" in capsys.readouterr().err


def test_cli_bad_experiment_flags_exit_2(tmp_path, capsys):
    for args, needle in [
        (["run", "--data", "digits", "--rate", "1.5"], "rate"),
        (["run", "--data", "digits", "--method", "magnitud"], "Did you mean 'magnitude'"),
        (["run", "--data", "digits", "--treatment", "scratch"], "unknown treatment 'scratch'"),
        (["run", "--data", "digits", "--seeds", "3-1"], "is empty"),
        (["run", "--config", str(tmp_path / "nope.toml")], "no such config file"),
    ]:
        assert main([*args, "--root", str(tmp_path)]) == 2
        assert needle in capsys.readouterr().err


def test_masked_macs_by_hand():
    from torch import nn

    from prunelab.pruning import masked_macs

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    dense = Mask.ones(model)
    assert masked_macs(model, dense, (1, 6, 6)) == 18 * 16 + 96  # 2x1x3x3 weights at 4x4 positions
    keep = dense["0.weight"].clone()
    keep[1] = False  # one filter gone
    half = Mask({"0.weight": keep, "3.weight": dense["3.weight"]})
    assert masked_macs(model, half, (1, 6, 6)) == 9 * 16 + 96


def test_scratch_b_trains_longer_by_the_flop_ratio(tmp_path):
    spec = tiny_spec(
        model="conv2",
        pruning=PruneSpec(
            method="l1-structured", structure="structured-output", rate=0.5, rounds=1, exclude=("fc3",)
        ),
        treatment=TreatmentSpec(kind="scratch-b"),
        train=TrainConfig(epochs=1, batch_size=64),
    )
    result = ExperimentRunner(spec, tmp_path).run()
    dense_its, pruned_its = result.levels[0][0].iterations, result.levels[0][1].iterations
    assert pruned_its > 1.5 * dense_its  # half the filters of each conv: far fewer MACs
    e = ExperimentRunner(
        tiny_spec(
            model="conv2",
            pruning=spec.pruning,
            treatment=TreatmentSpec(kind="scratch-e"),
            train=TrainConfig(epochs=1, batch_size=64),
        ),
        tmp_path,
    ).run()
    assert e.levels[0][1].iterations == dense_its


@pytest.mark.parametrize("treatment", ["scratch-e", "scratch-b"])
def test_scratch_needs_structured_masks(tmp_path, treatment):
    for method in ("magnitude", "hybrid"):
        with pytest.raises(SpecError, match="needs a structured mask in every layer"):
            ExperimentRunner(
                tiny_spec(pruning=PruneSpec(method=method), treatment=TreatmentSpec(kind=treatment)), tmp_path
            )


METHOD_RUNS = [
    ("magnitude", "layerwise"),
    ("magnitude", "global"),
    ("magnitude", "by-type"),
    ("random", "layerwise"),
    ("l1-structured", "layerwise"),
    ("l2-structured", "layerwise"),
    ("linf-structured", "layerwise"),
    ("lninf-structured", "layerwise"),
    ("random-structured", "layerwise"),
    ("hybrid", "layerwise"),
    ("snip", "global"),
    ("grasp", "global"),
    ("synflow", "global"),
    ("large_final", "layerwise"),
    ("magnitude_increase", "layerwise"),
    ("movement", "layerwise"),
]


@pytest.mark.parametrize("method, scope", METHOD_RUNS)
def test_every_method_runs_through_the_engine(tmp_path, method, scope):
    spec = tiny_spec(
        model="conv2",
        pruning=PruneSpec(method=method, scope=scope, rate=0.3, rounds=1),
        train=TrainConfig(iterations=4, batch_size=64),
    )
    result = ExperimentRunner(spec, tmp_path).run()
    mask = Mask.load(result.directory / "seed-0" / "level-01" / "mask.safetensors")
    assert 0.6 < mask.density() < 0.8
    assert result.levels[0][1].final.test_acc >= 0
