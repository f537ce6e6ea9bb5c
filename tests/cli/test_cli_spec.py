"""The command line comes from the specs: every spec field is a flag and a config key, help from
the registries, listings from the registries, commands in a newcomer's order."""

import re

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

import prunelab.cli.experiments as cli_experiments
from prunelab.cli import app, main
from prunelab.cli.options import spec_flags
from prunelab.experiments import CONTROLS, TREATMENTS, ExperimentSpec, TrunkSpec, load_spec_file
from prunelab.pruning import METHODS

# A non-default value for every leaf field of ExperimentSpec, as typed on the command line, and the
# value the spec then holds. A field added to a spec must be added here: the test below walks the
# spec's fields itself and fails on any without a flag or a sample.
SAMPLES = {
    "model": ("lenet5", "lenet5"),
    "data": ("digits", "digits"),
    "weights": ("start.safetensors", "start.safetensors"),
    "image_size": ("64", 64),
    "init": ("glorot-uniform", "glorot-uniform"),
    "val_size": ("100", 100),
    "sequence_length": ("256", 256),
    "train.optimizer": ("sgd", "sgd"),
    "train.lr": ("0.05", 0.05),
    "train.momentum": ("0.9", 0.9),
    "train.nesterov": (None, True),  # a switch: --nesterov
    "train.weight_decay": ("0.0005", 0.0005),
    "train.batch_size": ("32", 32),
    "train.epochs": ("4", 4),
    "train.iterations": ("300", 300),
    "train.schedule": ("step", "step"),
    "train.milestones": ("2ep,3ep", ("2ep", "3ep")),
    "train.gamma": ("0.5", 0.5),
    "train.warmup": ("50it", "50it"),
    "train.eval_every": ("1ep", "1ep"),
    "train.augment": (None, True),
    "train.device": ("cpu", "cpu"),
    "train.bf16": (None, True),
    "train.plugins": ("slimming", ("slimming",)),
    "pruning.method": ("random", "random"),
    "pruning.scope": ("global", "global"),
    "pruning.structure": ("structured-output", "structured-output"),
    "pruning.layers": ("fc-only", "fc-only"),
    "pruning.exclude": ("fc1,fc2", ("fc1", "fc2")),
    "pruning.rate": ("0.3", 0.3),
    "pruning.rounds": ("4", 4),
    "pruning.target_sparsity": ("0.9", 0.9),
    "pruning.output_rate_factor": ("0.5", 0.5),
    "pruning.layer_rates": ("fc3=0.1,fc1=0.3", {"fc3": 0.1, "fc1": 0.3}),
    "pruning.reconstruct": (None, True),  # a switch: --reconstruct
    "pruning.calibration_images": ("128", 128),
    "pruning.calibration_sequences": ("64", 64),
    "pruning.sparsegpt.blocksize": ("64", 64),
    "pruning.sparsegpt.dampening": ("0.05", 0.05),
    "pruning.owl.outlier_factor": ("7", 7.0),
    "pruning.owl.spread": ("0.1", 0.1),
    "pruning.calibration_positions": ("5", 5),
    "pruning.grasp.temperature": ("100", 100.0),
    "pruning.synflow.rounds": ("10", 10),
    "pruning.slimming.penalty": ("0.001", 0.001),
    "pruning.slimming.gamma_init": ("0.5", 0.5),
    "pruning.slimming.min_channels": ("2", 2),
    "pruning.slimming.multi_pass": (None, True),  # a switch: --slimming-multi-pass
    "pruning.early_bird.penalty": ("0.001", 0.001),
    "pruning.early_bird.queue": ("4", 4),
    "pruning.early_bird.distance": ("0.05", 0.05),
    "pruning.early_bird.min_channels": ("2", 2),
    "pruning.early_bird.bf16": (None, True),  # a switch: --early-bird-bf16
    "pruning.structure_selection.penalty": ("0.001", 0.001),
    "pruning.structure_selection.unit": ("groups", "groups"),
    "pruning.bayesian_compression.kl_weight": ("0.5", 0.5),
    "pruning.bayesian_compression.kl_warmup": ("2ep", "2ep"),
    "pruning.bayesian_compression.threshold": ("-2", -2.0),
    "pruning.bayesian_compression.log_sigma2_init": ("-8", -8.0),
    "pruning.sparse_vd.kl_weight": ("0.5", 0.5),
    "pruning.sparse_vd.kl_warmup": ("2ep", "2ep"),
    "pruning.sparse_vd.threshold": ("2", 2.0),
    "pruning.sparse_vd.log_sigma2_init": ("-8", -8.0),
    "treatment.kind": ("finetune", "finetune"),
    "treatment.rewind_to": ("2ep", "2ep"),
    "treatment.finetune_lr": ("0.01", 0.01),
    "treatment.finetune_epochs": ("2", 2),
    "controls": ("reinit,random-mask", ("reinit", "random-mask")),
    "seeds": ("0-2", (0, 1, 2)),
    "name": ("mine", "mine"),
}


def declared_samples(model: type[BaseModel], prefix: str = "") -> dict:
    """The samples spec fields declare themselves (``Field(examples=[value])``): a method added in one
    file brings its settings' samples with it."""
    out = {}
    for name, info in model.model_fields.items():
        inner = info.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            out |= declared_samples(inner, f"{prefix}{name}.")
        elif info.examples:
            value = info.examples[0]
            out[prefix + name] = (None if value is True else str(value), value)
    return out


SAMPLES |= {path: sample for path, sample in declared_samples(ExperimentSpec).items() if path not in SAMPLES}
# values other fields need for a sample to be valid (epochs and iterations exclude each other, ...)
NEEDS = {
    "train.iterations": {"train.epochs": None},
    "train.nesterov": {"train.optimizer": "sgd", "train.momentum": 0.9},
    "train.bf16": {"train.device": "cpu"},  # valid as a spec; the trainer refuses it on a CPU
}


def leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field of a spec, walked independently of the flag generator."""
    paths = []
    for name, info in model.model_fields.items():
        inner = info.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            paths += leaf_paths(inner, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


def get(spec: BaseModel, path: str):
    value = spec
    for part in path.split("."):
        value = getattr(value, part)
    return value


def captured_run(monkeypatch, args):
    """The ExperimentSpec that `prunelab run ARGS` would run (nothing trains)."""
    seen = {}
    monkeypatch.setattr(cli_experiments, "_start", lambda *a, **k: None)
    monkeypatch.setattr(cli_experiments, "_run_experiment", lambda spec, **kw: seen.setdefault("spec", spec))
    assert main(["run", *args]) == 0
    return seen["spec"]


def test_every_spec_field_has_a_flag_and_a_sample():
    paths = leaf_paths(ExperimentSpec)
    flags = {".".join(f.path): f for f in spec_flags(ExperimentSpec)}
    assert sorted(paths) == sorted(flags), "a spec field without a flag (or a flag without a field)"
    assert sorted(paths) == sorted(SAMPLES), "add a sample value for the new spec field to SAMPLES"
    names = [d for f in flags.values() for decl in f.decls for d in decl.split("/")]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*", n) for n in names)


@pytest.mark.parametrize("path", sorted(SAMPLES))
def test_every_spec_field_is_reachable_from_the_command_line(monkeypatch, path):
    flags = {".".join(f.path): f for f in spec_flags(ExperimentSpec)}
    args = []
    for p, value in {path: SAMPLES[path][1], **NEEDS.get(path, {})}.items():
        flag = flags[p]
        if flag.kind is bool:
            args.append(flag.name if value else flag.decls[0].split("/")[1])
        elif value is not None:
            text = SAMPLES[p][0] if p == path else str(value)
            args += [flag.name, text]
    spec = captured_run(monkeypatch, args)
    assert get(spec, path) == SAMPLES[path][1]


@pytest.mark.parametrize("path", sorted(SAMPLES))
def test_every_spec_field_is_reachable_from_a_config_file(tmp_path, path):
    values = {}
    for p, value in {path: SAMPLES[path][1], **NEEDS.get(path, {})}.items():
        target = values
        *parents, leaf = p.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        if value is not None:
            target[leaf] = list(value) if isinstance(value, tuple) else value
    import yaml

    config = tmp_path / "spec.yaml"
    config.write_text(yaml.safe_dump(values))
    assert get(load_spec_file(config), path) == SAMPLES[path][1]


def test_flags_override_the_config_file(monkeypatch, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('data = "digits"\n[train]\nlr = 0.5\nepochs = 2\n[pruning]\nrate = 0.4\nrounds = 3\n')
    spec = captured_run(monkeypatch, ["--config", str(config), "--rate", "0.1", "--treatment", "rewind:5it"])
    assert spec.pruning.rate == 0.1 and spec.pruning.rounds == 3 and spec.train.lr == 0.5
    assert spec.treatment.kind == "rewind" and spec.treatment.rewind_to == "5it" and spec.data == "digits"


def test_old_spellings_still_work(monkeypatch):
    spec = captured_run(monkeypatch, ["--output-rate", "0.5", "--seeds", "0,3"])
    assert spec.pruning.output_rate_factor == 0.5 and spec.seeds == (0, 3)


def test_no_length_means_one_epoch_and_keeps_the_old_ids(monkeypatch):
    spec = captured_run(monkeypatch, ["--data", "digits"])
    assert spec.train.epochs == 1
    assert spec.experiment_id() == ExperimentSpec(data="digits", train={"epochs": 1}).experiment_id()


def test_train_flags_are_the_trunk_spec_fields():
    flags = {".".join(f.path) for f in spec_flags(TrunkSpec)}
    assert flags == {p for p in SAMPLES if p.split(".")[0] in TrunkSpec.model_fields}
    group = typer.main.get_command(app)
    params = {p.name for p in group.get_command(typer.Context(group), "train").params}
    assert {"seed", "mask", "out", "lr", "val_size", "eval_every", "init"} <= params


def test_help_takes_choices_from_the_registries():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.replace("│", " ").split())  # help wraps inside the box
    for name in [*METHODS.names(), *TREATMENTS.names(), *CONTROLS.names()]:
        assert name in text
    for flag in (
        "--synflow-rounds",
        "--grasp-temperature",
        "--finetune-lr",
        "--eval-every",
        "--val-size",
        "--init",
    ):
        assert flag in text
    assert "see `prunelab methods`" in text


def test_help_lists_commands_in_a_newcomers_order():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    order = [line.split()[1] for line in result.output.splitlines() if re.match(r"^│ [a-z][a-z-]* ", line)]
    assert order[:7] == ["demo", "run", "ls", "show", "report", "compare", "train"]
    assert {"methods", "treatments", "controls", "models", "data", "export", "bench"} <= set(order)


@pytest.mark.parametrize(
    "command, registry", [("methods", METHODS), ("treatments", TREATMENTS), ("controls", CONTROLS)]
)
def test_listings_show_every_entry_with_its_description(command, registry):
    result = CliRunner().invoke(app, [command], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in registry.names():
        assert name in text and registry.describe(name) in text


def test_methods_listing_says_what_each_needs_and_its_settings():
    text = " ".join(CliRunner().invoke(app, ["methods"], env={"COLUMNS": "250"}).output.split())
    assert re.search(r"snip .*? data", text) and re.search(r"movement .*? initial weights", text)
    assert "--synflow-rounds (100)" in text and "--grasp-temperature (200.0)" in text
    treatments = " ".join(CliRunner().invoke(app, ["treatments"], env={"COLUMNS": "250"}).output.split())
    assert re.search(r"scratch-b .*? structured masks", treatments) and "--rewind-to (0it)" in treatments


def test_a_registered_treatment_appears_without_editing_the_cli():
    from prunelab.experiments.branches import register_branch
    from prunelab.experiments.treatments import Reinit

    @register_branch(TREATMENTS, "test-only-treatment")
    class Mine(Reinit):
        description = "a treatment defined in a test"

    try:
        text = " ".join(CliRunner().invoke(app, ["treatments"], env={"COLUMNS": "250"}).output.split())
        assert "test-only-treatment" in text and "a treatment defined in a test" in text
        assert ExperimentSpec(treatment="test-only-treatment").treatment.kind == "test-only-treatment"
    finally:
        TREATMENTS.unregister("test-only-treatment")


def test_every_spec_field_has_a_description_for_its_help():
    flags = spec_flags(ExperimentSpec)
    missing = [".".join(f.path) for f in flags if f.help.strip(". ").split(". One of")[0] == ""]
    assert missing == []
