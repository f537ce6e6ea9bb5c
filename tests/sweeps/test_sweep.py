"""Sweeps: grid files expanded and checked, the plan, local runs that share trunks, resume and failures.

Every sweep here is LeNet-300-100 on the synthetic task with a few dozen iterations per level.
The Ray executor's tests are in test_sweep_ray.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import prunelab
from prunelab.errors import SpecError
from prunelab.experiments.artifact import Artifact
from prunelab.experiments.store import Store
from prunelab.sweeps import expand, read_sweep_file
from prunelab.training import Trainer

BASE = {
    "model": "lenet-300-100",
    "data": "synthetic",
    "seeds": "0-1",
    "train": {"iterations": 20, "batch_size": 64, "eval_every": "10it"},
    "pruning": {"rate": 0.5, "rounds": 2},
}

GRID_FILE = """
[base]
model = "lenet-300-100"
data = "synthetic"
seeds = "{seeds}"
[base.train]
iterations = 20
batch_size = 64
eval_every = "10it"
[base.pruning]
rate = 0.5
rounds = {rounds}
[grid]
{grid}
"""

BAD_MODEL = '''
import torch
from torch import nn


class Fails(nn.Module):
    """Accepts one example (the checks before training), fails as soon as it trains."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        if self.training:
            raise RuntimeError("boom: this model cannot train")
        return self.fc(x.flatten(1))


def make(num_classes):
    return Fails(num_classes)
'''


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny nets: one thread (and the same count in every run compared), whatever a test before set."""
    torch.set_num_threads(1)


def grid_file(tmp_path, grid: str, name: str = "grid.toml", seeds: str = "0-1", rounds: int = 2):
    path = tmp_path / name
    path.write_text(GRID_FILE.format(grid=textwrap.dedent(grid), seeds=seeds, rounds=rounds))
    return path


def numbers(root) -> dict:
    """Every stored level's and control's metrics without wall times: what two runs must agree on."""
    out = {}
    for exp in Store(root).experiments():
        branches = {None: exp.levels} | exp.controls
        for branch, seeds in branches.items():
            for seed, levels in seeds.items():
                for level, m in levels.items():
                    values = m.to_json()
                    values.pop("wall_time")
                    out[(exp.id, seed, level, branch)] = values
    return out


# grid files --------------------------------------------------------------------------------------
def test_dotted_keys_nested_tables_and_lists_of_tables_expand_alike(tmp_path):
    dotted = read_sweep_file(grid_file(tmp_path, '"pruning.method" = ["magnitude", "random"]', "a.toml"))
    nested = read_sweep_file(grid_file(tmp_path, 'pruning.method = ["magnitude", "random"]', "b.toml"))
    a, b = dotted.expand(), nested.expand()
    assert [p.spec for p in a] == [p.spec for p in b]
    assert [p.spec.pruning.method for p in a] == ["magnitude", "random"]
    assert all(p.spec.seeds == (0, 1) and p.spec.pruning.rounds == 2 for p in a)  # the base's
    assert [p.spec.name for p in a] == ["magnitude", "random"]
    # a list of tables varies fields together (Paganini & Forde's fc-only L1); the product multiplies
    points = expand(
        BASE,
        {
            "pruning": [{"method": "magnitude"}, {"method": "magnitude", "layers": "fc-only"}],
            "train.lr": [0.1, 0.05],
        },
    )
    assert [(p.spec.pruning.layers, p.spec.train.lr) for p in points] == [
        ("all", 0.1),
        ("all", 0.05),
        ("fc-only", 0.1),
        ("fc-only", 0.05),
    ]
    assert points[2].label() == "method=magnitude layers=fc-only, 0.1"
    assert len({p.spec.experiment_id() for p in points}) == 4
    assert {p.spec.trunk_id() for p in points} == {points[0].spec.trunk_id(), points[1].spec.trunk_id()}


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, cli):
    path = grid_file(
        tmp_path, 'pruning.method = ["magnitude", "random", "l1-structured"]\ntrain.lr = [0.1, 0.05]'
    )
    code, out, err = cli("sweep", path, "--dry-run", "--root", tmp_path / "runs")
    assert code == 0, err
    text = " ".join(out.split())
    assert "sweep: 6 experiments x 2 seed(s) [0, 1]" in text
    # 2 trunks (one per lr) x 2 seeds, each 1 training; 6 experiments x 2 seeds x 2 levels
    assert "trainings: 28 (0 finished already, 28 to run)" in text
    assert "work: about 560 training iterations (560 to run)" in text
    assert text.count("): shared by #") == 2 and "shared by #1, #3, #5" in text
    assert "#6" in text and "l1-structured, 0.05" in text
    assert not (tmp_path / "runs" / "trunks").exists() and not (tmp_path / "runs" / "experiments").exists()


def test_flags_override_the_base_never_the_grid(tmp_path, cli):
    path = grid_file(tmp_path, 'pruning.method = ["magnitude", "random"]')
    code, out, err = cli("sweep", path, "--dry-run", "--iterations", "5", "--seeds", "3", "--root", tmp_path)
    assert code == 0, err
    text = " ".join(out.split())
    assert (
        "2 experiments x 1 seed(s) [3]" in text and "about 25 training iterations" in text
    )  # 1 x 5 + 2 x 2 x 5
    code, _, err = cli("sweep", path, "--dry-run", "--method", "random")
    assert code == 2 and "pruning.method is varied by the grid" in err
    cases = grid_file(tmp_path, 'cases = [{pruning = {method = "magnitude", rate = 0.3}}]', "cases.toml")
    code, _, err = cli("sweep", cases, "--dry-run", "--rate", "0.4")
    assert code == 2 and "pruning.rate is varied by the grid" in err


def test_example_sweeps_plan(tmp_path, cli):
    examples = Path(__file__).parents[2] / "examples" / "sweeps"
    code, out, err = cli(
        "sweep", examples / "paper001_table2.toml", "--dry-run", "--root", tmp_path, "--threads", "1"
    )
    assert code == 0, err
    text = " ".join(out.split())
    assert "sweep: 8 experiments x 5 seed(s) [0, 1, 2, 3, 4]" in text
    assert "trainings: 805 (0 finished already, 805 to run)" in text  # 5 trunks + 8 x 5 x 20 levels
    assert "shared by #1, #2, #3, #4, #5, #6, #7, #8" in text
    points = read_sweep_file(examples / "paper001_table2.toml").expand()
    assert [p.spec.name for p in points] == [
        "L2 S", "L1 S", "L1 US", "hybrid", "random US", "random S", "L-inf S", "fc-only L1 US"
    ]  # fmt: skip
    assert points[7].spec.pruning.layers == "fc-only" and points[0].spec.train.lr == 0.01
    smoke = read_sweep_file(examples / "smoke.toml").expand()
    assert len(smoke) == 4 and smoke[0].spec.seeds == (0, 1) and smoke[0].spec.pruning.rounds == 3


def test_missing_data_is_shown_by_a_dry_run_and_refused_before_training(tmp_path, cli):
    from prunelab.data import dataset_status

    if dataset_status("mnist", None)[0]:
        pytest.skip("MNIST is on this machine")
    path = grid_file(tmp_path, 'pruning.method = ["magnitude"]\ndata = ["mnist"]')
    code, out, _ = cli("sweep", path, "--dry-run", "--root", tmp_path / "runs")
    assert code == 0 and "data not found here for 1 trunk(s)" in " ".join(out.split())
    code, _, err = cli("sweep", path, "--root", tmp_path / "runs")
    assert code == 2 and "dataset 'mnist' not found" in err
    assert not (tmp_path / "runs" / "trunks").exists()


@pytest.mark.parametrize(
    ("grid", "needle"),
    [
        ('pruning.metod = ["magnitude"]', "pruning has no field 'metod'. Did you mean 'pruning.method'?"),
        ('colour = ["red"]', "'colour' is not an experiment field. Valid fields: model, weights"),
        ("pruning.rate = 0.5", "grid key 'pruning.rate' must be a list of values, got 0.5"),
        ("pruning.method = []", "grid key 'pruning.method' has an empty list"),
        ("", "the grid is empty"),
        (
            "pruning.rate = [0.5, 1.5]",
            "grid combination pruning.rate=1.5: invalid ExperimentSpec: pruning.rate",
        ),
        ('pruning.method = ["magnitude", "nope"]', "grid combination pruning.method=nope: invalid"),
        ('seeds = ["0", "1"]', "seeds are the replicates inside each experiment; set them in [base]"),
        ("train.lr = [0.1, 0.1]", "are the same experiment"),
        ("model.depth = [1]", "model has no fields of its own"),
    ],
)
def test_bad_grids_are_one_line_exit_2(tmp_path, cli, grid, needle):
    code, _out, err = cli("sweep", grid_file(tmp_path, grid), "--dry-run")
    assert code == 2
    assert needle in " ".join(err.split()), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_sweep_files_and_executor_options(tmp_path, cli):
    other = tmp_path / "other.toml"
    other.write_text('[base]\nmodel = "lenet5"\n[sweep]\nx = 1\n')
    code, _, err = cli("sweep", other, "--dry-run")
    assert code == 2 and "unknown table 'sweep'" in err
    no_grid = tmp_path / "nogrid.yaml"
    no_grid.write_text("base:\n  model: lenet5\n")
    code, _, err = cli("sweep", no_grid, "--dry-run")
    assert code == 2 and "has no [grid] table" in err
    path = grid_file(tmp_path, 'pruning.method = ["magnitude"]')
    code, _, err = cli("sweep", path, "--executor", "slurm", "--dry-run")
    assert code == 2 and "unknown executor 'slurm'" in err and "local, ray" in err
    code, _, err = cli("sweep", path, "--workers", "2", "--dry-run")
    assert code == 2 and "--workers does not apply to the local executor" in err


def test_yaml_sweep_file(tmp_path, cli):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "base:\n  model: lenet-300-100\n  data: synthetic\n  train: {iterations: 20}\n"
        "grid:\n  pruning.method: [magnitude, random]\n"
    )
    code, out, err = cli("sweep", path, "--dry-run", "--root", tmp_path / "runs")
    assert code == 0, err
    assert "sweep: 2 experiments x 1 seed(s) [0]" in " ".join(out.split())


# running -------------------------------------------------------------------------------------------
def test_a_trunk_shared_by_three_experiments_is_trained_once_then_reported(tmp_path, cli, monkeypatch):
    calls = []
    original = Trainer.run
    monkeypatch.setattr(Trainer, "run", lambda self, **kw: calls.append(1) or original(self, **kw))
    base = BASE | {"seeds": "0", "pruning": {"rate": 0.5, "rounds": 1}}
    grid = {"pruning.method": ["magnitude", "random", "l1-structured"]}
    root = tmp_path / "runs"
    result = prunelab.sweep(base, grid, root=root)
    assert not result.failed
    assert len(calls) == 1 + 3  # one dense trunk, one pruned level each
    rows = result.table().rows
    assert [r[2] for r in rows] == ["magnitude", "random", "l1-structured"]
    assert all(r[-1] == "done" and r[-2] == 1 for r in rows)
    assert rows[0][3] == pytest.approx(0.5, abs=0.01)  # final density after one round at 50%
    assert [e.status() for e in result.experiments()] == ["done"] * 3
    again = prunelab.sweep(base, grid, root=root)  # all finished: read back, nothing trains
    assert len(calls) == 4 and again.plan.done == again.plan.trainings == 4
    # the same grid as a file: a report over the whole sweep
    path = grid_file(tmp_path, f"pruning.method = {grid['pruning.method']}", seeds="0", rounds=1)
    args = ["report", "--sweep", path, "-o", tmp_path / "report", "--no-ensembles", "--no-svg"]
    code, _, err = cli(*args, "--root", tmp_path / "empty")
    assert code == 2 and "no experiment of sweep" in err
    code, _, err = cli(*args, "--root", root)
    assert code == 0, err
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Sweep: 3 experiments" in page and "l1-structured" in page
    assert (tmp_path / "report" / "tables" / "table-sweep.csv").read_text().count("\n") == 4


def test_each_control_is_a_task_after_the_levels_and_gives_the_numbers_of_one_run(tmp_path, cli):
    from helpers import lock_held_elsewhere

    from prunelab.errors import PrunelabError
    from prunelab.experiments.runner import LEVELS, ExperimentRunner
    from prunelab.locks import ExperimentLocked
    from prunelab.sweeps.plan import task_key

    path = grid_file(tmp_path, 'pruning.method = ["magnitude", "random"]', seeds="0")
    plan = prunelab.sweep(
        *read_sweep_file(path).with_base({"controls": ["reinit", "random-mask"]}), dry_run=True
    ).plan
    trunk, rest = plan.tasks[0], plan.tasks[1:]
    assert len(rest) == 2 * 3 and plan.trainings == 1 + 2 * 3 * 2  # per experiment: levels + 2 controls
    for task in rest:
        levels = task_key(task.specs[0].experiment_id(), 0, LEVELS)
        assert task.after == (trunk.key if task.branch == LEVELS else levels)
    args = ["sweep", path, "--controls", "reinit,random-mask", "--threads", "1"]
    code, out, err = cli(*args, "--root", tmp_path / "sweep")
    assert code == 0, err
    text = " ".join(out.split())
    assert "done: magnitude seed 0 control reinit [5/13 trainings]" in text, text
    assert "done: random seed 0 control random-mask [13/13 trainings]" in text
    for point in plan.points:  # each experiment in one process, its branches interleaved level by level
        ExperimentRunner(point.spec, tmp_path / "one").run()
    assert numbers(tmp_path / "sweep") == numbers(tmp_path / "one")
    assert len(numbers(tmp_path / "one")) == 2 * (3 + 2 * 2)
    runner = ExperimentRunner(plan.points[0].spec, tmp_path / "fresh")
    with pytest.raises(PrunelabError, match=r"level 1 .* not trained yet, and the reinit control"):
        runner.run_seed(0, "reinit")
    assert not (tmp_path / "fresh" / "trunks").exists()  # refused before anything trains
    with pytest.raises(SpecError, match="branch 'nope' is not one of this experiment's"):
        runner.run_seed(0, "nope")
    seed_dir = Store(tmp_path / "fresh").experiment_dir(plan.points[0].spec.experiment_id()) / "seed-0"
    with lock_held_elsewhere(seed_dir, name=".lock-reinit"):  # a control's writer elsewhere
        runner.run_seed(0, LEVELS)  # does not stop the levels
        with pytest.raises(ExperimentLocked, match=r"\(reinit\) is being written by pid"):
            runner.run_seed(0, "reinit")
        with pytest.raises(ExperimentLocked):
            runner.run()  # the whole experiment needs every branch


def test_a_sweep_process_loads_its_data_once(tmp_path, monkeypatch):
    from prunelab.experiments.spec import ExperimentSpec
    from prunelab.sweeps.executors import WORKER_DATA, DataCache, _warm_worker

    loads = []
    original = ExperimentSpec.load_data
    monkeypatch.setattr(
        ExperimentSpec, "load_data", lambda self, d=None: loads.append(1) or original(self, d)
    )
    base = BASE | {"seeds": "0", "pruning": {"rate": 0.5, "rounds": 1}}
    result = prunelab.sweep(base, {"pruning.method": ["magnitude", "random", "l1-structured"]}, root=tmp_path)
    assert not result.failed
    assert len(loads) == 2  # once to plan, once for the four tasks
    spec = result.plan.points[0].spec
    assert _warm_worker([spec], None, 1) > 0 and DataCache.key(spec, None) in WORKER_DATA._items
    assert len(loads) == 3


def test_killed_sweep_resumes_with_the_same_numbers(tmp_path, monkeypatch):
    grid = {"pruning.method": ["magnitude", "random"]}
    prunelab.sweep(BASE, grid, root=tmp_path / "straight")
    saves = {"n": 0}
    original = Artifact.save_checkpoint

    def dies_mid_way(self, state):
        original(self, state)
        saves["n"] += 1
        if saves["n"] == 7:  # after both trunks, inside the first experiment's second seed or so
            raise KeyboardInterrupt

    monkeypatch.setattr(Artifact, "save_checkpoint", dies_mid_way)
    with pytest.raises(KeyboardInterrupt):
        prunelab.sweep(BASE, grid, root=tmp_path / "killed")
    monkeypatch.setattr(Artifact, "save_checkpoint", original)
    assert list((tmp_path / "killed").rglob("checkpoint.pt")), "killed mid-training"
    plan = prunelab.sweep(BASE, grid, root=tmp_path / "killed", dry_run=True).plan
    assert 0 < plan.done < plan.trainings
    resumed = prunelab.sweep(BASE, grid, root=tmp_path / "killed")
    assert not resumed.failed
    assert numbers(tmp_path / "killed") == numbers(tmp_path / "straight")
    assert len(numbers(tmp_path / "straight")) == 2 * 2 * 3  # 2 experiments x 2 seeds x 3 levels
    assert not list((tmp_path / "killed").rglob("checkpoint.pt"))


def test_a_failing_task_is_retried_and_reported_while_the_others_finish(tmp_path, cli):
    (tmp_path / "bad.py").write_text(BAD_MODEL)
    path = grid_file(tmp_path, f'model = ["lenet-300-100", "{tmp_path / "bad.py"}:make"]')
    code, out, err = cli(
        "sweep", path, "--root", tmp_path / "runs", "--no-progress", "--retries", "1", "--threads", "1"
    )
    assert code == 1
    text = " ".join(out.split())
    assert "failed: dense trunk" in " ".join(err.split()) and "after 2 attempt(s)" in err
    assert "RuntimeError: boom: this model cannot train" in err
    assert "skipped" in text and "done" in text
    rows = {e.spec.model: e.status() for e in Store(tmp_path / "runs").experiments()}
    assert rows == {"lenet-300-100": "done"}  # the other never started: its trunk failed


def test_resuming_under_other_settings_warns(tmp_path, monkeypatch):
    from helpers import tiny

    spec = tiny(train=prunelab.TrainConfig(epochs=2, batch_size=64))
    runner = prunelab.experiments.ExperimentRunner(spec, tmp_path)
    runner.train_trunk(0)
    assert Store(tmp_path).dense(spec.trunk_id(), 0).metrics().environment["threads"] == 1
    original = Artifact.save_checkpoint

    def dies(self, state):
        original(self, state)
        raise KeyboardInterrupt  # level 1 killed after its first epoch

    monkeypatch.setattr(Artifact, "save_checkpoint", dies)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    monkeypatch.setattr(Artifact, "save_checkpoint", original)
    environment = Trainer.environment
    monkeypatch.setattr(Trainer, "environment", lambda self: environment(self) | {"threads": 7})
    with pytest.warns(UserWarning) as caught:
        runner.run()
    messages = [" ".join(str(w.message).split()) for w in caught]
    assert "seed 0 level 1 runs under other settings than its first epochs (threads 1 -> 7)" in messages[0]
    assert "seed 0 level 1 runs under other settings than the dense trunk (threads 1 -> 7)" in messages[1]
    assert len(messages) == 2


def test_ray_missing_names_the_extra(tmp_path, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = cli(
        "sweep", grid_file(tmp_path, 'pruning.method = ["magnitude"]'), "--executor", "ray", "--dry-run"
    )
    assert code == 2 and "pip install 'prunelab[ray]'" in err


def test_sweep_with_an_unknown_option_object(tmp_path):
    with pytest.raises(SpecError, match="give the executor's options to its constructor"):
        from prunelab.sweeps import EXECUTORS

        prunelab.sweep(BASE, {"pruning.method": ["magnitude"]}, executor=EXECUTORS.get("local")(), workers=2)


def test_threads_follow_the_tasks_and_oversubscription_is_named(tmp_path):
    from helpers import lock_held_elsewhere

    from prunelab.sweeps.executors import RayExecutor
    from prunelab.threads import available_cpus, other_writers

    assert RayExecutor(workers=2, cpus_per_task=0.5).task_threads == 1  # a CPU share below one: 1 thread
    assert RayExecutor(cpus_per_task=2).task_threads == 2 and RayExecutor(threads=3).task_threads == 3
    assert RayExecutor(workers=1).oversubscription() is None
    message = RayExecutor(workers=available_cpus() + 1).oversubscription()
    assert "oversubscribe" in message and "--workers" in message
    seed = tmp_path / "experiments" / "abc" / "seed-0"  # a sweep task holds one seed's lock only
    with lock_held_elsewhere(seed):
        assert len(other_writers(tmp_path)) == 1
    assert other_writers(tmp_path) == []
