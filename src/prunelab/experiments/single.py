"""One training outside an experiment: what ``prunelab train`` runs (dense, or masked from a file)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from prunelab.data import Dataset
from prunelab.experiments.spec import TrunkSpec
from prunelab.io import OutputKind, atomic_write_json, check_output_folder, output_folder, save_tensors
from prunelab.pruning import Mask, SparsityReport, sparsity_report
from prunelab.seeding import derive_seed
from prunelab.table import Table
from prunelab.training import Trainer, TrainResult

TRAINING = OutputKind("training output", "metrics.json", ("model.safetensors", "metrics.json"))


def check_output(out: Path, *, force: bool = False, protect=()) -> Path:
    """Refuse, before training, an output folder that holds anything but an earlier training output."""
    return check_output_folder(out, TRAINING, force=force, protect=protect)


@dataclass
class SingleTraining:
    """A finished training: its spec, data, trainer (holding the trained model) and result."""

    spec: TrunkSpec
    seed: int
    mask: Mask | None
    dataset: Dataset
    trainer: Trainer
    result: TrainResult

    @property
    def sparsity(self) -> SparsityReport:
        return sparsity_report(self.trainer.model, self.mask)

    def history_table(self) -> Table:
        rows = [
            [f"{r.epoch:.2f}", r.iteration, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.test_acc]
            for r in self.result.history
        ]
        columns = ["epoch", "iteration", "train loss", "train acc", "val loss", "val acc", "test acc"]
        return Table(
            "", columns, rows, note="test accuracy: measured on the final and early-stop weights only"
        )

    def summary_table(self) -> Table:
        result, report = self.result, self.sparsity
        best = result.early_stop
        rows = [
            ["test accuracy (final)", result.final.test_acc],
            ["validation accuracy (final)", result.final.val_acc],
            ["early-stop iteration (min val loss)", best.iteration],
            ["test accuracy at early stop", best.test_acc],
            ["weights kept (prunable)", f"{report.prunable_kept:,} / {report.prunable_params:,}"],
            [
                "sparsity (prunable / all parameters)",
                f"{report.prunable_sparsity:.2%} / {report.sparsity:.2%}",
            ],
            ["training time (s)", result.wall_time],
            ["training step, threads", f"{self.trainer.step_kind}, {result.environment.get('threads')}"],
        ]
        return Table(f"{self.spec.model} on {self.spec.data}, seed {self.seed}", ["metric", "value"], rows)

    def write(self, out: Path, *, force: bool = False, protect=()) -> None:
        """``out/model.safetensors`` (final weights) and ``out/metrics.json``, in a folder written whole
        (``force`` replaces an earlier training output only, see :func:`check_output`)."""
        report = self.sparsity
        with output_folder(out, TRAINING, force=force, protect=protect) as tmp:
            self._write(tmp, report)

    def _write(self, out: Path, report: SparsityReport) -> None:
        save_tensors(out / "model.safetensors", self.trainer.model.state_dict())
        atomic_write_json(
            out / "metrics.json",
            {
                "model": self.spec.model,
                "data": self.spec.data,
                "seed": self.seed,
                "spec": self.spec.model_dump(mode="json"),
                "train": json.loads(self.spec.train.model_dump_json()),
                "summary": self.result.summary(),
                "history": [asdict(r) for r in self.result.history],
                "sparsity": {"prunable": report.prunable_sparsity, "all": report.sparsity},
            },
        )


def train_once(
    spec: TrunkSpec,
    *,
    seed: int = 0,
    mask: Mask | str | Path | None = None,
    data_dir: str | Path | None = None,
    on_start: Callable[[Dataset], None] = lambda data: None,
    on_progress: Callable[[int, int], None] | None = None,
    notes: list[str] | None = None,
) -> SingleTraining:
    """Train ``spec``'s model once, checking every input (mask file included) before loading data."""
    keep = Mask.load(mask) if isinstance(mask, str | Path) else mask
    net = spec.build_model(derive_seed(seed, "init"), notes=notes)
    if keep is not None:
        keep.check_fits(net)
    dataset = spec.load_data(data_dir)
    on_start(dataset)
    trainer = Trainer(net, dataset, spec.train, mask=keep, seed=seed)
    result = trainer.run(on_progress=on_progress)
    return SingleTraining(spec, seed, keep, dataset, trainer, result)
