"""Nothing lost, nothing silent: one test per class of defect found by fault injection (issue 11).

Every user-facing failure is one message and exit status 2, never a traceback; no command replaces
or hides results; damaged files are named with how to recompute them.
"""

import errno
import json
import os
import time
from pathlib import Path

import pytest
import torch
from helpers import lock_held_elsewhere

from prunelab.cli import main
from prunelab.data import write_idx
from prunelab.experiments import Store
from prunelab.io import atomic_write_json
from prunelab.locks import locked
from prunelab.pruning import Mask

RUN = ["run", "--data", "digits", "--rounds", "2", "--rate", "0.5", "--iterations", "30", "--no-progress"]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.out, " ".join(out.err.split())


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A finished experiment (2 levels, seed 0, reinit control) to damage copies of."""
    root = tmp_path_factory.mktemp("stored")
    assert main([*RUN, "--controls", "reinit", "--root", str(root)]) == 0
    (exp,) = Store(root).experiments()
    return root, exp.id


@pytest.fixture
def copy(stored, tmp_path):
    """A fresh copy of the stored experiment's root, and its id."""
    import shutil

    root, ident = stored
    shutil.copytree(root, tmp_path / "root")
    return tmp_path / "root", ident


def level_dir(root: Path, ident: str, level: int) -> Path:
    return root / "experiments" / ident / "seed-0" / f"level-{level:02d}"


def dense_dir(root: Path) -> Path:
    return next((root / "trunks").glob("*/seed-0/dense"))


# 1. data loss -----------------------------------------------------------------------------------
def test_export_never_replaces_results_the_cwd_or_its_parents(copy, capsys, monkeypatch, tmp_path):
    root, ident = copy
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    for target in (root, root / "experiments" / ident, root / "experiments", level_dir(root, ident, 1)):
        code, _, err = cli(capsys, "export", ident, "-o", target, "--root", root, "--force")
        assert code == 2 and ("results folder" in err or "results store" in err or "not an earlier" in err), (
            err
        )
    monkeypatch.chdir(root / "experiments")
    for target in (".", ".."):
        code, _, err = cli(capsys, "export", ident, "-o", target, "--root", root, "--force")
        assert code == 2 and ("current folder" in err or "results" in err), err
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before  # nothing touched


def test_train_out_needs_force_and_replaces_only_a_training_output(capsys, tmp_path):
    out = tmp_path / "o"
    args = ["train", "--data", "digits", "--iterations", "5", "--no-progress", "--out", out]
    assert cli(capsys, *args)[0] == 0
    first = (out / "model.safetensors").read_bytes()
    code, _, err = cli(capsys, *args, "--seed", "1")
    assert code == 2 and "pass --force" in err and (out / "model.safetensors").read_bytes() == first
    assert cli(capsys, *args, "--seed", "1", "--force")[0] == 0
    assert (out / "model.safetensors").read_bytes() != first
    (out / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, *args, "--force")
    assert code == 2 and "not an earlier training output (notes.txt)" in err


def test_a_report_that_fails_half_way_leaves_nothing(copy, capsys, tmp_path, monkeypatch):
    root, ident = copy
    from prunelab.analysis import report

    def full_disk(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "images" / "x.png"))

    monkeypatch.setattr(report._Report, "masks", full_disk)
    code, _, err = cli(capsys, "report", ident, "-o", tmp_path / "r", "--root", root, "--no-ensembles")
    assert code == 2 and "the disk is full" in err
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*"))


def test_orphan_temporary_files_are_removed_on_the_next_run(copy, capsys):
    root, ident = copy
    orphans = [
        level_dir(root, ident, 2) / ".checkpoint.pt.a1b2c3.tmp",
        level_dir(root, ident, 1) / "controls" / "reinit" / ".metrics.json.x9.tmp",
        dense_dir(root).parent / "dense" / ".mask.safetensors.q.tmp",
    ]
    for orphan in orphans:
        orphan.write_bytes(b"\0" * 1000)
    (level_dir(root, ident, 2) / "metrics.json").unlink()  # so the run has something to do
    code, _, err = cli(capsys, *RUN, "--controls", "reinit", "--root", root)
    assert code == 0 and "removed 2 temporary file(s)" in err
    assert not any(o.exists() for o in orphans)


# 2. damaged results ------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "empty-list", "final-null"])
def test_a_damaged_level_is_named_not_skipped(copy, capsys, damage):
    root, ident = copy
    path = level_dir(root, ident, 2) / "metrics.json"
    text = path.read_text()
    path.write_text(
        {"truncate": text[: len(text) // 2], "empty-list": "[]"}.get(damage)
        or text.replace('"final": {', '"final": null, "was": {')
    )
    for command in (
        ["show", ident],
        ["export", ident, "-o", root.parent / "x"],
        ["count", ident],
        ["compare", ident],
    ):
        code, _, err = cli(capsys, *command, "--root", root)
        assert code == 2, command
        assert str(path) in err and "remove" in err and "rerun" in err, err
    assert not (root.parent / "x").exists()  # export did not quietly use level 1
    code, out, err = cli(capsys, "ls", "--root", root)
    assert code == 0 and "damaged" in out and str(path) in err
    assert cli(capsys, "export", ident, "--level", "1", "-o", root.parent / "l1", "--root", root)[0] == 0


def test_a_damaged_dense_level_is_named(copy, capsys):
    root, ident = copy
    (dense_dir(root) / "metrics.json").write_text("{")
    code, _, err = cli(capsys, "export", ident, "-o", root.parent / "x", "--root", root)
    assert code == 2 and "dense" in err and "metrics.json" in err and "no finished level" not in err


@pytest.mark.parametrize(
    "edit",
    [
        lambda meta: meta["spec"].update(model="no-such-model"),
        lambda meta: meta.pop("trunk"),
        lambda meta: meta["spec"]["pruning"].update(rate="half"),
    ],
)
def test_a_damaged_spec_is_named_and_spares_the_others(copy, capsys, edit):
    root, ident = copy
    assert main([*RUN, "--seeds", "1", "--rate", "0.3", "--root", str(root)]) == 0
    other = next(e.id for e in Store(root).experiments() if e.id != ident)
    spec_path = root / "experiments" / ident / "spec.json"
    meta = json.loads(spec_path.read_text())
    edit(meta)
    spec_path.write_text(json.dumps(meta))
    code, out, err = cli(capsys, "ls", "--root", root)
    assert code == 0 and other in out and ident in out and "damaged" in out
    assert cli(capsys, "show", other, "--root", root)[0] == 0
    for command in (
        ["show", ident],
        ["report", ident, "-o", root.parent / "r"],
        ["export", ident, "-o", root.parent / "e"],
    ):
        code, _, err = cli(capsys, *command, "--root", root)
        assert code == 2 and "spec.json" in err, (command, err)


def test_damaged_weights_and_masks_stop_the_command(copy, capsys):
    root, ident = copy
    mask = level_dir(root, ident, 2) / "mask.safetensors"
    mask.write_bytes(mask.read_bytes()[:50])
    code, _, err = cli(capsys, "report", ident, "-o", root.parent / "r", "--root", root, "--no-ensembles")
    assert code == 2 and str(mask) in err and not (root.parent / "r").exists()
    weights = dense_dir(root) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    code, _, err = cli(capsys, "bench", ident, "--level", "0", "--no-plot", "--repeats", "1", "--root", root)
    assert code == 2 and str(weights) in err


# 3. config files and values ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, needle",
    [
        ('[pruning]\nrate = "0.5"\n', "rate must be a number"),
        ("[pruning]\nrounds = true\n", "rounds must be a number"),
        ("[train]\nepochs = true\n", "epochs must be a number"),
        ("seeds = [-1]\n", "seeds must be in 0..2147483647"),
        ("seeds = [18446744073709551615]\n", "seeds must be in 0..2147483647"),
        ('[train]\nnesterov = "yes"\n', "nesterov must be true or false"),
        ("[train]\nlr = inf\n", "finite number"),
        ("[train]\nlr = nan\n", "finite number"),
    ],
)
def test_config_files_are_validated_as_strictly_as_flags(capsys, tmp_path, text, needle):
    config = tmp_path / "c.toml"
    config.write_text('data = "digits"\n' + text)
    code, _, err = cli(capsys, "run", "--config", config, "--root", tmp_path / "runs")
    assert code == 2 and needle in err
    assert not (tmp_path / "runs" / "experiments").exists()


def test_flag_values_are_refused_like_file_values(capsys, tmp_path):
    for args, needle in [
        (["--lr", "inf"], "finite number"),
        (["--seeds", "0-100000000"], "at most 10000 seeds"),
        (["--seeds", "-1"], "seeds"),
        (["--batch-size", "1000000000"], "less than or equal to 65536"),
        (["--eval-every", "0it"], "at least every iteration"),
        (["--warmup", "99999999999ep"], "at most 9 digits"),
        (["--layer-rates", "fc3=lots"], "'lots' is not a number"),
    ]:
        start = time.perf_counter()
        code, _, err = cli(capsys, *RUN, *args, "--root", tmp_path)
        assert code == 2 and needle in err, (args, err)
        assert time.perf_counter() - start < 10
    code, _, err = cli(capsys, *RUN, "--warmup", "5000it", "--root", tmp_path)
    assert code == 2 and "longer than the training" in err


def test_a_config_file_that_is_not_utf8_is_named_with_the_byte(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"data: digits\nname: caf\xe9\n")
    code, _, err = cli(capsys, "run", "--config", config)
    assert code == 2 and str(config) in err and "not UTF-8" in err and "byte 22 is 0xe9" in err


def test_yaml_aliases_are_refused_fast(capsys, tmp_path):
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=False)
    )
    config = tmp_path / "bomb.yaml"
    config.write_text(bomb + "name: *h\n")
    start = time.perf_counter()
    code, _, err = cli(capsys, "run", "--config", config)
    assert code == 2 and "aliases" in err and len(err) < 600
    assert time.perf_counter() - start < 5


def test_diverging_training_stops_and_stores_nothing(capsys, tmp_path):
    root = tmp_path / "runs"
    args = ["--optimizer", "sgd", "--lr", "1e6", "--root", root]
    code, _, err = cli(capsys, *RUN, *args)
    assert code == 2 and "training diverged" in err and "iteration" in err
    assert not list(root.rglob("metrics.json"))  # no NaN trunk stored to be reused
    code, _, err = cli(
        capsys, "train", "--data", "digits", "--optimizer", "sgd", "--lr", "1e6", "--out", tmp_path / "o"
    )
    assert code == 2 and "training diverged" in err and not (tmp_path / "o").exists()


def test_json_files_stay_valid_json(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"loss": float("nan"), "xs": [float("inf"), 1.0]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "xs": [None, 1.0]}


def test_options_that_would_be_ignored_are_refused(copy, capsys, tmp_path):
    root, ident = copy
    for args, needle in [
        (["show", ident, "--tolerance", "-1"], "tolerance must be in [0, 1]"),
        (["show", ident, "--tolerance", "nan"], "tolerance must be in [0, 1]"),
        (["report", ident, "-o", tmp_path / "r", "--tolerance", "2"], "tolerance must be in [0, 1]"),
        (["stability", ident, "--seed", "1"], "give --plot FILE"),
        (["stability", ident, "--layer", "fc9"], "give --plot FILE"),
        (["bench", ident, "--plot", tmp_path / "p"], "ending in .png"),
        (["bench", ident, "--device", "tpu"], "use auto, cpu, cuda"),
        (["bench", ident, "--device", ""], "use auto, cpu, cuda"),
        (["bench", ident, "--batch-sizes", "0,1000000000"], "batch sizes must be in 1..65,536"),
    ]:
        code, _, err = cli(capsys, *args, "--root", root)
        assert code == 2 and needle in err, (args, err)
    assert not (tmp_path / "r").exists()


def test_empty_inputs_are_refused_naming_the_file(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for name, n in (("train", 200), ("t10k", 0)):
        write_idx(
            data / f"{name}-images-idx3-ubyte",
            torch.randint(0, 255, (n, 28, 28), generator=g, dtype=torch.uint8),
            gzip=False,
        )
        write_idx(
            data / f"{name}-labels-idx1-ubyte",
            torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8),
            gzip=False,
        )
    code, _, err = cli(
        capsys, "train", "--data", "mnist", "--data-dir", data, "--val-size", "10", "--no-progress"
    )
    assert code == 2 and "test data" in err and "holds no examples" in err and str(data) in err
    Mask({}).save(tmp_path / "empty.safetensors")
    code, _, err = cli(capsys, "train", "--data", "digits", "--mask", tmp_path / "empty.safetensors")
    assert code == 2 and "empty.safetensors holds no mask entries" in err


# 4. the environment -------------------------------------------------------------------------------
def test_a_results_root_that_is_a_file(capsys, tmp_path):
    root = tmp_path / "file"
    root.write_text("x")
    for command in (RUN, ["ls"], ["show", "abc"]):
        code, _, err = cli(capsys, *command, "--root", root)
        assert code == 2 and "is a file, not a folder" in err, command


def test_finished_results_read_without_write_access(copy, capsys, monkeypatch):
    root, _ = copy
    import prunelab.locks as locks

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(locks, "open", read_only, raising=False)  # what locked() opens
    code, out, _ = cli(capsys, *RUN, "--controls", "reinit", "--root", root)
    assert code == 0 and "winning ticket" in out  # finished: read back, no lock taken
    code, _, err = cli(capsys, *RUN, "--rounds", "3", "--root", root)
    assert code == 2 and "read-only" in err and ".lock" in err


def test_a_full_disk_is_said_and_leaves_nothing_half_written(capsys, tmp_path, monkeypatch):
    import prunelab.io as pio

    real = pio.os.replace
    calls = {"n": 0}

    def fills_up(src, dst):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(pio.os, "replace", fills_up)
    root = tmp_path / "runs"
    code, _, err = cli(capsys, *RUN, "--root", root)
    assert code == 2 and "the disk is full" in err and "cannot write" in err
    assert not list(root.rglob("*.tmp"))
    monkeypatch.setattr(pio.os, "replace", real)
    assert cli(capsys, *RUN, "--root", root)[0] == 0  # the rerun finishes what was left


def test_names_that_are_too_long_or_absurd(copy, capsys, tmp_path):
    root, ident = copy
    code, _, err = cli(capsys, "show", "x" * 5000, "--root", root)
    assert code == 2 and "no experiment" in err and len(err) < 2000
    code, _, err = cli(capsys, "export", ident, "-o", tmp_path / ("n" * 300), "--root", root)
    assert code == 2 and "too long" in err


def test_a_shared_trunk_in_training_is_waited_for(copy, capsys, tmp_path):
    root, _ = copy
    with lock_held_elsewhere(dense_dir(root).parent, seconds=2):
        other = [*RUN, "--rate", "0.3", "--root", root]  # a new experiment on the same trunk
        code, _, err = cli(capsys, *other, "--no-wait")
        assert code == 2 and "is being written by pid" in err
        start = time.perf_counter()
        code, _, err = cli(capsys, *other)
        assert code == 0 and "waiting for pid" in err and time.perf_counter() - start > 0.5


def test_two_writers_of_one_experiment_are_still_refused(copy, capsys):
    root, ident = copy
    (level_dir(root, ident, 2) / "metrics.json").unlink()
    with locked(root / "experiments" / ident):
        code, _, err = cli(capsys, *RUN, "--controls", "reinit", "--root", root)
    assert code == 2 and "is being written by" in err


def test_files_follow_the_umask(copy, capsys, tmp_path):
    from prunelab.io import FILE_MODE

    root, ident = copy
    assert 0o666 & ~_umask() == FILE_MODE
    assert cli(capsys, "export", ident, "-o", tmp_path / "e", "--root", root)[0] == 0
    assert (
        cli(capsys, "report", ident, "-o", tmp_path / "r", "--root", root, "--no-ensembles", "--no-svg")[0]
        == 0
    )
    files = [
        tmp_path / "e" / "plan.json",
        tmp_path / "r" / "report.html",
        level_dir(root, ident, 1) / "metrics.json",
        level_dir(root, ident, 1) / "weights.safetensors",
    ]
    for path in files:
        assert path.stat().st_mode & 0o777 == FILE_MODE, path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_settings_a_combination_never_reads_are_warned_about(capsys, monkeypatch):
    import prunelab.cli.experiments as cli_experiments

    monkeypatch.setattr(cli_experiments, "_run_experiment", lambda spec, **kw: None)
    code, _, err = cli(capsys, *RUN, "--momentum", "0.9", "--finetune-lr", "0.1", "--synflow-rounds", "5")
    assert code == 0
    assert "train.momentum is read only with optimizer sgd, not adam" in err
    assert "treatment.finetune_lr is not read by treatment 'rewind'" in err
    assert "pruning.synflow settings" in err and "no effect" in err
    code, _, err = cli(capsys, *RUN, "--optimizer", "sgd", "--momentum", "0.9", "--treatment", "rewind:5it")
    assert code == 0 and "no effect" not in err
