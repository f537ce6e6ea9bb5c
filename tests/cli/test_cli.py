"""The command line as a user runs it: exit codes, messages, files written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab.cli import main
from prunelab.io import load_tensors
from prunelab.models import build_model
from prunelab.pruning import Mask

FASHION = Path("/usr/share/datasets/fashion-mnist")


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("train", "models", "data"):
        assert command in out


def test_models_lists_every_model_with_counts(capsys):
    code, out, _ = run(capsys, "models", "--data", "fashion-mnist")
    assert code == 0
    assert "lenet-300-100" in out and "266,610" in out
    assert "resnet20" in out


def test_data_list_shows_found_and_missing(capsys):
    code, out, _ = run(capsys, "data", "list")
    assert code == 0
    assert "digits" in out and "found" in out
    assert "mnist" in out


def test_data_get_without_network_fails_fast_with_alternatives(capsys, monkeypatch, tmp_path):
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code, _, err = run(capsys, "data", "get", "mnist", "--dest", str(tmp_path))
    assert code == 2
    assert "--data-dir" in err and "Traceback" not in err
    assert not any(tmp_path.rglob("*.gz"))


def test_train_digits_writes_weights_and_metrics(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "train",
        "--model",
        "lenet-300-100",
        "--data",
        "digits",
        "--epochs",
        "2",
        "--eval-every",
        "1ep",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert code == 0
    assert "test accuracy (final)" in out
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["summary"]["final"]["test_acc"] > 0.8
    assert len(metrics["history"]) == 3  # iteration 0 and each epoch's end
    assert metrics["train"]["eval_every"] == "1ep" and metrics["summary"]["environment"]["threads"] >= 1
    weights = load_tensors(tmp_path / "o" / "model.safetensors")
    assert set(weights) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}


def test_train_with_mask_file_keeps_pruned_weights_zero(capsys, tmp_path):
    model = build_model("lenet-300-100", num_classes=10, input_shape=(1, 8, 8))
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(m.shape, generator=g) < 0.2 for n, m in Mask.ones(model).items()})
    mask.save(tmp_path / "mask.safetensors")
    code, out, _ = run(
        capsys,
        "train",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--mask",
        str(tmp_path / "mask.safetensors"),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert code == 0
    weights = load_tensors(tmp_path / "o" / "model.safetensors")
    for name, keep in mask.items():
        assert (weights[name][~keep] == 0).all()
    assert f"{mask.num_kept():,} / {mask.num_total():,}" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--model", "lenet-301"], "unknown model 'lenet-301'. Did you mean 'lenet-300-100'?"),
        (["train", "--data", "fashion"], "unknown dataset 'fashion'. Did you mean 'fashion-mnist'?"),
        (["train", "--data", "digits", "--optimizer", "adagrad"], "unknown optimizer 'adagrad'"),
        (["train", "--data", "digits", "--lr", "-1"], "lr: Input should be greater than 0"),
        (["train", "--data", "digits", "--mask", "/nonexistent/m.safetensors"], "no such file"),
        (["train", "--data", "mnist", "--data-dir", "/nonexistent"], "prunelab data get mnist"),
        (["models", "--data", "imagenet"], "unknown dataset 'imagenet'"),
        (["data", "get", "svhn"], "unknown dataset 'svhn'"),
    ],
)
def test_bad_input_is_one_clear_message_and_exit_2(capsys, args, needle):
    code, _, err = run(capsys, *args)
    assert code == 2
    assert needle in " ".join(err.split())
    assert "Traceback" not in err


def test_mask_that_does_not_fit_is_refused(capsys, tmp_path):
    Mask({"fc1.weight": torch.ones(3, 3, dtype=torch.bool)}).save(tmp_path / "m.safetensors")
    code, _, err = run(capsys, "train", "--data", "digits", "--mask", str(tmp_path / "m.safetensors"))
    assert code == 2
    assert "fc1.weight" in err and "(3, 3)" in err


def test_corrupt_mask_file_is_refused(capsys, tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"\x00garbage")
    code, _, err = run(capsys, "train", "--data", "digits", "--mask", str(tmp_path / "m.safetensors"))
    assert code == 2 and "m.safetensors" in err


def test_usage_error_exits_2(capsys):
    code, _, _ = run(capsys, "train", "--epochs", "many")
    assert code == 2


def test_console_script_and_python_m(tmp_path):
    env = {**os.environ, "PRUNELAB_HOME": str(tmp_path)}
    for cmd in ([sys.executable, "-m", "prunelab", "train", "--model", "nope"],):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2
        assert "unknown model 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.realdata
@pytest.mark.skipif(
    not FASHION.is_dir(), reason="Fashion-MNIST absent: `apt-get install dataset-fashion-mnist`"
)
def test_train_on_real_fashion_mnist(capsys, tmp_path):
    """End to end on real data: one epoch of LeNet-300-100 reaches the accuracy the papers report."""
    code, _, _ = run(
        capsys,
        "train",
        "--model",
        "lenet-300-100",
        "--data",
        "fashion-mnist",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        "--device",
        "cpu",
    )
    assert code == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["summary"]["final"]["test_acc"] > 0.82
    assert metrics["summary"]["final"]["val_acc"] > 0.82


def test_tables_show_brackets_as_written():
    """Names like 'run [3fa2]' must not be swallowed as rich markup."""
    from rich.console import Console

    from prunelab.table import Table
    from prunelab.ui import render

    console = Console(record=True, width=80)
    console.print(render(Table("runs [all]", ["name [id]", "n"], [("run [3fa2]", 1)])))
    text = console.export_text()
    assert "runs [all]" in text and "name [id]" in text and "run [3fa2]" in text
