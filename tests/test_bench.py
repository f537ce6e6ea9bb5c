"""The benchmark scripts run (tiny settings): a change that breaks them fails here, not in `make bench`."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, needle",
    [
        (
            "train_speed.py",
            ["--data", "digits", "--epochs-each", "1"],
            "evaluation / training time per epoch",
        ),
        ("infer_speed.py", ["--repeats", "1"], "compaction goal"),
        (
            "early_bird.py",
            ["--epochs", "2", "--finetune-epochs", "1", "--threads", "1"],
            "iterations early-bird / slimming",
        ),
        (
            "compact_speed.py",
            ["--size", "32", "--batches", "1", "--repeats", "2", "--models", "vgg16_bn,resnet18"],
            "goal: >= 0.7 for VGG-16 at batch 16",
        ),
        (
            "bert_speed.py",
            [
                "--layers",
                "2",
                "--hidden",
                "64",
                "--heads",
                "4",
                "--ffn",
                "128",
                "--batches",
                "1",
                "--repeats",
                "2",
            ],
            "heads 8 -> 4, FFN neurons 256 -> 128",
        ),
        (
            "reconstruct.py",
            [
                "--train-iterations",
                "20",
                "--finetune-iterations",
                "5",
                "--models",
                "conv2",
                "--pca-models",
                "lenet-300-100",
                "--data",
                "digits",
                "--repeats",
                "1",
            ],
            "PCA shrinking (no fine-tuning)",
        ),
        (
            "sweep_speed.py",
            ["--data", "digits", "--iterations", "20"],
            "best ratio this sweep's shape allows on 2 workers",
        ),
        ("cli_speed.py", ["--repeats", "1"], "the goal of 0.5 s"),
        (
            "zoo_compact.py",
            ["--only", "torchvision:resnet18,torchvision:squeezenet1_1", "--size", "64"],
            "compacted exactly, classes kept: 2 of 2 models",
        ),
    ],
)
def test_bench_script_runs(script, args, needle, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert needle in proc.stdout
