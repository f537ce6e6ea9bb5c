"""Plug-in contracts: prune takes a PruneSpec; criteria declare needs and settings; treatments and
controls declare their trunk points and starts, and the runner asks them instead of matching names."""

import ast
import importlib
import inspect
import pkgutil

import pytest
import torch
from helpers import tiny
from torch import nn

import prunelab.cli
from prunelab.errors import SpecError
from prunelab.experiments import CONTROLS, TREATMENTS, ExperimentRunner, Store
from prunelab.experiments.branches import register_branch
from prunelab.experiments.controls import Control
from prunelab.experiments.treatments import Treatment
from prunelab.pruning import METHODS, SCORERS, Method, PruneContext, PruneSpec, prune
from prunelab.training.plugins import PLUGINS


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture
def registered():
    """Register test-only entries, removed afterwards."""
    added = []

    def add(registry, name):
        added.append((registry, name))
        return register_branch(registry, name)

    yield add
    for registry, name in added:
        if name in registry.names():  # not there where the test's point was that it was refused
            registry.unregister(name)


def test_prune_takes_a_spec_and_the_keyword_form_is_the_same():
    model = mlp()
    spec = PruneSpec(rate=0.4, scope="global", layer_rates={"1": 0.25})
    a = prune(model, None, spec)
    b = prune(model, None, fraction=0.4, scope="global", layer_rates={"1": 0.25})
    assert a == b
    assert a["1.weight"].sum() == 128 - round(0.25 * 128)
    with pytest.raises(TypeError, match="not both"):
        prune(model, None, spec, fraction=0.2)


def test_target_sparsity_sets_the_per_round_rate_of_a_spec():
    spec = PruneSpec(target_sparsity=0.75, rounds=2)
    mask = prune(mlp(), None, spec)
    assert mask["1.weight"].float().mean() == pytest.approx(0.5, abs=0.01)


def test_a_criterion_declares_what_it_needs():
    assert SCORERS.get("snip").needs == {"batches"} and SCORERS.get("movement").needs == {"initial_state"}
    with pytest.raises(SpecError, match=r"method 'movement' needs the weights at initialisation"):
        prune(mlp(), None, PruneSpec(method="movement"))
    with pytest.raises(SpecError, match=r"method 'snip' needs data"):
        prune(mlp(), None, PruneSpec(method="snip"), context=PruneContext(batches=[]))


def test_criterion_settings_come_from_the_spec(monkeypatch):
    synflow = SCORERS.get("synflow")
    calls = []
    original = synflow.scores
    monkeypatch.setattr(
        synflow, "scores", lambda self, *a: calls.append(self.settings.rounds) or original(self, *a)
    )
    prune(mlp(), None, PruneSpec(method="synflow", rate=0.5, synflow={"rounds": 4}))
    assert calls == [4, 4, 4, 4]
    calls.clear()
    prune(mlp(), None, PruneSpec(method="synflow", rate=0.5), context=PruneContext(trial=True))
    assert calls == [100]  # a trial scores once, with the default settings
    from prunelab.spec import build_spec

    with pytest.raises(SpecError, match=r"synflow\.rounds: Input should be greater than or equal to 1"):
        build_spec(PruneSpec, synflow={"rounds": 0})


def test_the_runner_computes_scoring_batches_only_for_criteria_that_need_them(tmp_path, monkeypatch):
    calls = []
    original = ExperimentRunner._scoring_batches
    monkeypatch.setattr(
        ExperimentRunner, "_scoring_batches", lambda self, *a: calls.append(a) or original(self, *a)
    )
    ExperimentRunner(tiny(), tmp_path).run()
    assert calls == []
    ExperimentRunner(tiny(pruning=PruneSpec(method="snip", rate=0.5, scope="global")), tmp_path).run()
    assert calls == [(0, 1)]


def test_a_treatment_declares_its_trunk_points(tmp_path, registered):
    seen = {}

    @registered(TREATMENTS, "test-rewind-to-seven")
    class RewindToSeven(Treatment):
        description = "rewind to iteration 7 (a test)"

        def trunk_points(self, spec, iterations_per_epoch):
            return (7,)

        def weights(self, inputs):
            seen["points"] = sorted(inputs.points)
            return inputs.points[7]

        def start_iteration(self, inputs):
            return 7

    spec = tiny(treatment="test-rewind-to-seven")
    result = ExperimentRunner(spec, tmp_path).run()
    store = Store(tmp_path)
    point = store.trunk_point(spec.trunk_id(), 0, 7)
    assert point.done and point.metrics().iterations == 7 and seen["points"] == [0, 7]
    assert result.levels[0][1].iterations == result.levels[0][0].iterations  # trained on from 7 to the end
    assert result.levels[0][1].history[0].iteration == 7


def test_a_control_is_one_registered_class(tmp_path, registered):
    @registered(CONTROLS, "test-previous-weights")
    class PreviousWeights(Control):
        description = "the ticket's mask on the previous level's trained weights (a test)"

        def weights(self, inputs):
            assert inputs.ticket is not None and inputs.ticket.mask is inputs.mask
            return inputs.previous

    spec = tiny(controls=("test-previous-weights",))
    result = ExperimentRunner(spec, tmp_path).run()
    branch = result.controls[0]["test-previous-weights"][0]
    assert branch.density == result.levels[0][1].density
    assert Store(tmp_path).control(spec.experiment_id(), 0, 1, "test-previous-weights").done


ENGINE = [  # the modules that must work for any method, treatment and control without naming one
    "prunelab.experiments.runner",
    "prunelab.experiments.store",
    "prunelab.experiments.paths",
    "prunelab.experiments.metrics",
    "prunelab.experiments.artifact",
    "prunelab.locks",
    "prunelab.training.trainer",
    "prunelab.training.callbacks",
    *(f"prunelab.cli.{m.name}" for m in pkgutil.iter_modules(prunelab.cli.__path__)),
]


def _registered():
    """Every registered name, and the modules defining the entries (a method's, a plug-in's file)."""
    names, modules = {}, set()
    for kind, registry in (("treatment", TREATMENTS), ("control", CONTROLS), ("method", METHODS),
                           ("training plug-in", PLUGINS), ("scorer", SCORERS)):  # fmt: skip
        for name, entry in registry.items():
            names[name] = kind
            cls = entry if isinstance(entry, type) else type(entry)
            if cls.__module__.startswith("prunelab.") and not isinstance(entry, Method):
                modules.add(cls.__module__)
    modules |= {"prunelab.pruning.scorers", "prunelab.pruning.channel_selection", "prunelab.pruning.rowwise"}
    return names, modules - {"prunelab.experiments.treatments", "prunelab.experiments.controls"}


@pytest.mark.parametrize("module", ENGINE)
def test_the_runner_store_trainer_and_cli_name_no_method_treatment_or_control(module):
    """Read from the syntax tree: no string in the module is a registered name (an f-string's pieces
    included), and it imports no module that defines a method or plug-in."""
    names, owners = _registered()
    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    named = [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names]
    assert named == [], f"{module} names {[(line, v, names[v]) for line, v in named]}"
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported.isdisjoint(owners), f"{module} imports {sorted(imported & owners)}"
