"""What several test modules share (``from helpers import tiny``): small specs, a lock held elsewhere,
the check that a compacted model computes what the masked one does, a checkpoint through disk."""

import io
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from prunelab.experiments import ExperimentSpec, PruneSpec
from prunelab.training import TrainConfig


def tiny(**overrides) -> ExperimentSpec:
    """LeNet-300-100 on the synthetic task, one epoch, one round at 50%: seconds to run."""
    values = dict(
        model="lenet-300-100",
        data="synthetic",
        train=TrainConfig(epochs=1, batch_size=64),
        pruning=PruneSpec(rate=0.5, rounds=1),
    )
    return ExperimentSpec(**(values | overrides))


@contextmanager
def lock_held_elsewhere(
    directory: Path, seconds: float = 60, name: str = ".lock"
) -> Iterator[subprocess.Popen]:
    """Another process holding prunelab's lock ``name`` on ``directory`` for up to ``seconds`` (killed on exit)."""
    code = (
        "import time; from pathlib import Path; from prunelab.locks import locked\n"
        f"with locked(Path({str(directory)!r}), name={name!r}):\n"
        f"    print('held', flush=True); time.sleep({seconds})"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def random_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics and affine parameters that are not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


def selection_run(tmp_path: Path, depths: tuple[int, int], rate: float) -> list[str]:
    """``prunelab run`` flags: structure selection for one epoch on the synthetic task, on a tiny
    prunelab ResNet (widths 4 and 8, ``depths`` blocks) from a factory file written to ``tmp_path``."""
    factory = tmp_path / "tiny_resnet.py"
    factory.write_text(
        "from prunelab.models.resnet import ResNet\n\n"
        "def make(num_classes, input_shape):\n"
        f"    return ResNet((4, 8), {depths}, input_shape[0], num_classes)\n"
    )
    return [
        "--model", f"{factory}:make", "--data", "synthetic", "--epochs", "1", "--batch-size", "64",
        "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--method", "structure-selection",
        "--rate", str(rate), "--structure-selection-penalty", "0.05", "--treatment", "finetune",
    ]  # fmt: skip


def assert_same_outputs(small: nn.Module, masked: nn.Module, shape, batch: int = 3) -> None:
    """``small`` computes what ``masked`` does, on inputs where the outputs differ from each other."""
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref, out = masked(x), small(x)
    scale = float(ref.abs().max())
    assert scale > 1e-3 and (ref[0] - ref[1]).abs().max() > 1e-3 * scale, "trivial outputs prove nothing"
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 1e-5 * max(1.0, scale)


def run_example(name: str, *args: object) -> str:
    """Run ``examples/NAME`` as a user would, on one thread; its standard output (it must succeed)."""
    script = Path(__file__).parents[1] / "examples" / name
    done = subprocess.run(
        [sys.executable, str(script), *map(str, args), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def through_disk(state: dict) -> dict:
    """What the experiment runner does with a checkpoint: torch.save, then a weights-only load on the CPU."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def killed_at_epoch_end(trainer, epoch: int = 1) -> dict:
    """Run ``trainer`` to the end of epoch ``epoch``, then kill it (``KeyboardInterrupt``) right
    after checkpointing it through disk: the checkpoint a killed run leaves behind."""
    saved: dict = {}
    ends: list[int] = []

    def kill(t) -> None:
        ends.append(t.iteration)
        if len(ends) == epoch:
            saved.update(through_disk(t.state_dict()))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.run(on_epoch_end=kill)
    return saved
