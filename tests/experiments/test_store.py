"""The results store: one layout, typed level metrics with a format version, one reader."""

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny

from prunelab.cli import main
from prunelab.errors import CheckpointError
from prunelab.experiments import (
    ExperimentRunner,
    ExperimentSpec,
    LevelMetrics,
    Store,
    find_experiment,
    load_level,
)
from prunelab.experiments.metrics import FORMAT
from prunelab.spec import build_spec


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    result = ExperimentRunner(tiny(controls=("reinit",)), root).run()
    return root, result


def test_the_store_owns_every_path(stored):
    root, result = stored
    store, spec = Store(root), result.spec
    exp = store.read(store.experiment_dir(spec.experiment_id()))
    assert (
        store.dense(spec.trunk_id(), 0).done and exp.artifact(0, 0).dir == store.dense(spec.trunk_id(), 0).dir
    )
    assert store.level(exp.id, 0, 1).done and store.level(exp.id, 0, 1).mask_path.is_file()
    assert store.control(exp.id, 0, 1, "reinit").done
    assert store.spec_path(exp.id).is_file()
    assert (
        exp.levels[0][1] == result.levels[0][1]
        and exp.controls["reinit"][0][1] == result.controls[0]["reinit"][0]
    )


def test_level_metrics_record_what_the_numbers_depend_on(stored):
    root, result = stored
    m = result.levels[0][1]
    env = m.environment
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["device"] == "cpu" and env["step"] in ("native", "relu-mlp", "autograd")
    assert "prunelab" in env and "eval_every" in env
    written = json.loads(
        (Store(root).level(result.spec.experiment_id(), 0, 1).dir / "metrics.json").read_text()
    )
    assert written["format"] == FORMAT and written["environment"] == env
    assert LevelMetrics.from_json(written) == m
    assert m.early_stop_iteration == m.early_stop.iteration and m.final.test_acc is not None


def test_format_1_metrics_are_read(stored):
    """What prunelab 0.1 wrote: no format key, no environment, every record with test metrics."""
    _, result = stored
    old = result.levels[0][1].to_json()
    del old["format"], old["environment"], old["stopped_early"]
    m = LevelMetrics.from_json(old)
    assert m.environment == {} and m.final == result.levels[0][1].final


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda v: v.pop("final"), "KeyError"),
        (lambda v: v.update(format=FORMAT + 1), "newer than this prunelab reads"),
        (lambda v: v.update(density="lots"), "ValueError"),
    ],
)
def test_damaged_metrics_name_the_file(stored, tmp_path, damage, needle):
    _, result = stored
    values = result.levels[0][1].to_json()
    damage(values)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(values))
    from prunelab.experiments import Artifact

    with pytest.raises(CheckpointError, match=needle) as err:
        Artifact(tmp_path).metrics()
    assert str(path) in str(err.value)


def test_more_seeds_later_join_the_experiment(tmp_path, capsys):
    """A later --seeds 1 adds to seed 0: spec.json, show and the analyses see both."""
    ExperimentRunner(tiny(seeds=(0,)), tmp_path).run()
    ExperimentRunner(tiny(seeds=(1,)), tmp_path).run()
    exp = find_experiment(tiny().experiment_id(), tmp_path)
    assert exp.spec.seeds == (0, 1) and exp.seeds() == [0, 1] and exp.status() == "done"
    assert main(["show", exp.id, "--root", str(tmp_path)]) == 0
    assert "seeds [0, 1]" in " ".join(capsys.readouterr().out.split())
    assert load_level(exp, 1, seed=1).seed == 1


def test_load_level_names_what_exists(stored):
    root, result = stored
    from prunelab.errors import PrunelabError

    with pytest.raises(PrunelabError, match=r"no finished level 5; finished levels: 0\.\.1"):
        load_level(result.spec.experiment_id(), 5, root=root)
    with pytest.raises(PrunelabError, match=r"no results for seed 3; seeds with results: \[0\]"):
        load_level(result.spec.experiment_id(), 1, seed=3, root=root)
    with pytest.raises(PrunelabError, match="no control 'random-mask'"):
        load_level(result.spec.experiment_id(), 1, control="random-mask", root=root)
    lv = load_level(result.spec.experiment_id(), 1, control="reinit", root=root)
    assert lv.metrics == result.controls[0]["reinit"][0] and lv.mask.density() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("part", ["trunk weights", "level mask", "control weights"])
def test_a_finished_run_checks_the_files_it_stands_for(stored, tmp_path, capsys, part):
    """Issue 28: `prunelab run` of a finished experiment whose files are damaged names the damaged
    file and exits 2, as show and export do, instead of reporting it done."""
    import shutil

    root, result = stored
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    store, spec = Store(copy), result.spec
    target = {
        "trunk weights": store.dense(spec.trunk_id(), 0).dir / "weights.safetensors",
        "level mask": store.level(spec.experiment_id(), 0, 1).mask_path,
        "control weights": store.control(spec.experiment_id(), 0, 1, "reinit").dir / "weights.safetensors",
    }[part]
    target.write_bytes(target.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match="is not a readable safetensors file") as err:
        ExperimentRunner(spec, copy).run()
    assert str(target) in str(err.value) and "remove" in str(err.value)
    args = ["run", "--model", "lenet-300-100", "--data", "synthetic", "--epochs", "1", "--batch-size", "64"]
    args += ["--rate", "0.5", "--rounds", "1", "--controls", "reinit", "--no-progress", "--root", str(copy)]
    code = main(args)
    out = capsys.readouterr()
    assert f"experiment {spec.experiment_id()}" in out.out  # the same experiment, from the command line
    assert code == 2 and str(target) in "".join(out.err.split()) and "(done)" not in out.out


# a results root written by an earlier prunelab (tests/data/results_root/make_fixture.py) ---------
FIXTURE = Path(__file__).parents[1] / "data" / "results_root"


@pytest.fixture
def old_root(tmp_path, monkeypatch):
    """A copy of the committed results root, read from its folder (its model file is ``nets.py``)."""
    import shutil

    here = tmp_path / "old"
    shutil.copytree(FIXTURE, here)
    monkeypatch.chdir(here)
    monkeypatch.setenv("COLUMNS", "120")
    return here


def test_results_written_by_an_earlier_prunelab_read_unchanged(old_root, cli):
    """ls and show print what they printed when the files were written; every level loads."""
    ids = json.loads((old_root / "expected" / "ids.json").read_text())
    code, out, _ = cli("ls", "--root", "runs")
    assert code == 0 and out == (old_root / "expected" / "ls.txt").read_text()
    for name, ident in ids.items():
        code, out, _ = cli("show", ident, "--root", "runs")
        assert code == 0 and out == (old_root / "expected" / f"show-{name}.txt").read_text(), name
        exp = Store("runs").find(ident)
        assert exp.status() == "done" and exp.spec.experiment_id() == ident
        for seed in exp.seeds():
            exp.check_files(seed)
            for level in exp.levels[seed]:
                loaded = load_level(exp, level, seed=seed)
                assert loaded.mask.density() == pytest.approx(exp.metrics(seed, level).density, abs=0.2)


def test_an_earlier_prunelabs_finished_experiment_is_done_without_training(old_root, monkeypatch):
    """Running the same specs again finds every file where the layout says: nothing is trained."""
    import sys

    from prunelab.training import Trainer

    sys.path.insert(0, str(FIXTURE))
    try:
        from make_fixture import SPECS
    finally:
        sys.path.remove(str(FIXTURE))
    monkeypatch.setattr(Trainer, "run", lambda *a, **k: pytest.fail("a stored level was trained again"))
    ids = json.loads((old_root / "expected" / "ids.json").read_text())
    for name, values in SPECS.items():
        spec = build_spec(ExperimentSpec, data="synthetic", **values)
        assert spec.experiment_id() == ids[name]
        result = ExperimentRunner(spec, "runs").run()
        stored = Store("runs").find(ids[name])
        for seed in spec.seeds:
            assert result.levels[seed] == [stored.levels[seed][k] for k in range(spec.pruning.rounds + 1)]
