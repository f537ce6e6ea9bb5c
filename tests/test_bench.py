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


@pytest.mark.slow
def test_lm_bench_runs_on_text_the_test_writes(tmp_path):
    """bench/lm_prune.py at tiny settings, on generated text (the bench's own corpus is Debian's fortunes)."""
    import random

    rng = random.Random(0)
    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "in", "park", "and", "tree", "bird", "sang"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) for _ in range(800))
    (tmp_path / "text.txt").write_text(text)
    args = ["--corpus", "text.txt", "--work", "work", "--layers", "1", "--width", "32", "--heads", "2", "--vocab",
            "300", "--tokens", "32", "--iterations", "4", "--calibration", "4", "--opt-layers", "1", "--opt-width",
            "64", "--opt-tokens", "32", "--opt-sequences", "4", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(BENCH / "lm_prune.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wanda vs sparsegpt" in proc.stdout and "goal <= 300 s" in proc.stdout
