"""Run an experiment: dense trunk (shared), then pruning levels with a weight treatment, and controls.

Every artifact is finished atomically (weights, then metrics.json), and training checkpoints at each
epoch end, so a run killed at any moment resumes at its last finished epoch and gives the numbers an
uninterrupted run gives. Every random draw derives from the replicate seed and its purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from prunelab.data import Dataset, load_dataset
from prunelab.errors import SpecError
from prunelab.experiments.spec import ExperimentSpec
from prunelab.experiments.store import Artifact, locked, results_root
from prunelab.experiments.treatments import LevelInputs, State, treatment_for
from prunelab.io import atomic_write_json
from prunelab.models import build_model
from prunelab.pruning import Mask, PruneContext, masked_macs, prune
from prunelab.seeding import derive_seed
from prunelab.training import TrainConfig, Trainer
from prunelab.training.config import parse_duration

ProgressFactory = Callable[[str], Callable[[int, int], None]]


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    directory: Path
    levels: dict[int, list[dict]] = field(default_factory=dict)  # seed -> per-level metrics
    controls: dict[int, dict[str, list[dict]]] = field(default_factory=dict)  # seed -> name -> levels


def _state(model: nn.Module) -> State:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class ExperimentRunner:
    """Runs one :class:`ExperimentSpec` under a results root."""

    def __init__(
        self,
        spec: ExperimentSpec,
        root: str | Path | None = None,
        *,
        data_dir: str | Path | None = None,
        progress: Callable[[str], object] | None = None,
        log: Callable[[str], None] = lambda msg: None,
    ) -> None:
        self.spec = spec
        self.root = results_root(root)
        self.data_dir = data_dir
        self.progress = progress
        self.log = log
        self.directory = self.root / "experiments" / spec.experiment_id()
        self._data: Dataset | None = None
        self._check_before_training()

    # set-up -------------------------------------------------------------------------------------
    def _check_before_training(self) -> None:
        """Refuse invalid combinations before any training: one trial round on the initial model."""
        treatment_for(self.spec).check(self.spec)
        model = self._new_model(0, "init")
        self.rate = self.spec.pruning.rate_per_round()
        self._prune(
            model,
            None,
            context=PruneContext(
                initial_state=_state(model),
                batches=self._probe_batches(),
                input_shape=self.spec.data_info.input_shape,
                synflow_rounds=1,  # this trial only validates; one scoring round is enough
            ),
        )

    def _probe_batches(self) -> tuple:
        """SNIP and GraSP need data; the check uses a random batch of the right shape."""
        info = self.spec.data_info
        g = torch.Generator().manual_seed(0)
        return (
            (
                torch.randn(8, *info.input_shape, generator=g),
                torch.randint(0, info.num_classes, (8,), generator=g),
            ),
        )

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = load_dataset(self.spec.data, data_dir=self.data_dir, val_size=self.spec.val_size)
        return self._data

    def _new_model(self, seed: int, purpose: str) -> nn.Module:
        info = self.spec.data_info
        return build_model(
            self.spec.model,
            num_classes=info.num_classes,
            input_shape=info.input_shape,
            init=self.spec.init,
            seed=derive_seed(seed, purpose),
        )

    def _prune(self, model: nn.Module, mask: Mask | None, *, context: PruneContext, generator=None) -> Mask:
        p = self.spec.pruning
        return prune(
            model,
            mask,
            fraction=self.rate,
            method=p.method,
            scope=p.scope,
            structure=p.structure,
            layers=p.layers,
            exclude=p.exclude,
            layer_rates=p.layer_rates or None,
            output_rate_factor=p.output_rate_factor,
            generator=generator,
            context=context,
        )

    def iterations_per_epoch(self) -> int:
        return -(-len(self.data.train) // self.spec.train.batch_size)

    # running ------------------------------------------------------------------------------------
    def run(self) -> ExperimentResult:
        result = ExperimentResult(self.spec, self.directory)
        with locked(self.directory):
            atomic_write_json(
                self.directory / "spec.json",
                {
                    "id": self.spec.experiment_id(),
                    "trunk": self.spec.trunk_id(),
                    "label": self.spec.label(),
                    "spec": self.spec.model_dump(mode="json"),
                },
            )
            for seed in self.spec.seeds:
                levels, controls = self._run_seed(seed)
                result.levels[seed] = levels
                result.controls[seed] = controls
        return result

    def _run_seed(self, seed: int) -> tuple[list[dict], dict[str, list[dict]]]:
        init = _state(self._new_model(seed, "init"))
        dense, rewind = self._trunk(seed, init)
        levels = [dense.metrics()]
        controls: dict[str, list[dict]] = {name: [] for name in self.spec.controls}
        previous, mask = dense.weights(), None
        treatment = treatment_for(self.spec)
        for level in range(1, self.spec.pruning.rounds + 1):
            level_dir = self.directory / f"seed-{seed}" / f"level-{level:02d}"
            mask = self._level_mask(level_dir, seed, level, previous, mask, init)
            inputs = LevelInputs(
                spec=self.spec,
                level=level,
                mask=mask,
                init=init,
                rewind=rewind,
                previous=previous,
                fresh=_state(self._new_model(seed, f"reinit-{level}")),
                iterations_per_epoch=self.iterations_per_epoch(),
                flops_ratio=self._flops_ratio(mask),
            )
            start = treatment.weights(inputs)
            cfg, start_it = treatment.config(inputs), treatment.start_iteration(inputs)
            art = Artifact(level_dir)
            metrics = self._train(art, f"seed {seed} level {level}", start, mask, cfg, seed, start_it, level)
            levels.append(metrics)
            for name in self.spec.controls:
                branch = Artifact(level_dir / "controls" / name)
                if name == "reinit":
                    c_start, c_mask, c_it = inputs.fresh, mask, 0
                else:  # random-mask: same per-layer densities, random positions, the ticket's start
                    g = torch.Generator().manual_seed(derive_seed(seed, f"random-mask-{level}"))
                    c_start, c_mask, c_it = start, mask.shuffled(g), start_it
                label = f"seed {seed} level {level} {name}"
                controls[name].append(self._train(branch, label, c_start, c_mask, cfg, seed, c_it, level))
            previous = art.weights()
        return levels, controls

    @cached_property
    def _dense_macs(self) -> int:
        model = self._new_model(0, "init")
        return masked_macs(model, Mask.ones(model), self.spec.data_info.input_shape)

    def _flops_ratio(self, mask: Mask) -> float:
        """Dense MACs / this mask's MACs (Scratch-B's training budget)."""
        return self._dense_macs / max(
            1, masked_macs(self._new_model(0, "init"), mask, self.spec.data_info.input_shape)
        )

    def _level_mask(
        self, level_dir: Path, seed: int, level: int, previous: State, mask: Mask | None, init: State
    ) -> Mask:
        """Score the previous level's final weights; the mask is saved before training starts."""
        path = level_dir / "mask.safetensors"
        if path.is_file():
            return Mask.load(path)
        model = self._new_model(seed, "init")
        model.load_state_dict(previous)
        g = torch.Generator().manual_seed(derive_seed(seed, f"prune-{level}"))
        context = PruneContext(
            initial_state=init,
            batches=self._scoring_batches(seed, level),
            input_shape=self.data.info.input_shape,
        )
        new = self._prune(model, mask, context=context, generator=g)
        new.save(path)
        return new

    def _scoring_batches(self, seed: int, level: int) -> tuple:
        """Ten training batches for data-driven criteria (SNIP, GraSP); others ignore them."""
        train, bs = self.data.train, self.spec.train.batch_size
        g = torch.Generator().manual_seed(derive_seed(seed, f"score-batches-{level}"))
        idx = torch.randperm(len(train), generator=g)[: 10 * bs]
        return tuple((train.x[idx[i : i + bs]], train.y[idx[i : i + bs]]) for i in range(0, len(idx), bs))

    def _trunk(self, seed: int, init: State) -> tuple[Artifact, State]:
        """Dense level 0 and the rewind point, computed once per model/data/training/seed."""
        trunk_dir = self.root / "trunks" / self.spec.trunk_id() / f"seed-{seed}"
        with locked(trunk_dir):
            dense = Artifact(trunk_dir / "dense")
            self._train(dense, f"seed {seed} dense", init, None, self.spec.train, seed, 0, 0)
            k = 0
            if self.spec.treatment.kind == "rewind":
                k = parse_duration(self.spec.treatment.rewind_to, self.iterations_per_epoch())
            if k == 0:
                return dense, init
            point = Artifact(trunk_dir / f"rewind-{k}it")
            if not point.done:
                if k > self.spec.train.total_iterations(self.iterations_per_epoch()):
                    raise SpecError(f"rewind point {k} iterations is past the end of training")
                self._train(
                    point, f"seed {seed} rewind point", init, None, self.spec.train, seed, 0, 0, until=k
                )
            return dense, point.weights()

    def _train(
        self,
        art: Artifact,
        label: str,
        start: State,
        mask: Mask | None,
        cfg: TrainConfig,
        seed: int,
        start_iteration: int,
        level: int,
        until: int | None = None,
    ) -> dict:
        if art.done:
            return art.metrics()
        model = self._new_model(seed, "init")
        model.load_state_dict(start)
        trainer = Trainer(model, self.data, cfg, mask=mask, seed=seed)
        checkpoint = art.load_checkpoint()
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint)
            self.log(f"{label}: resuming at iteration {trainer.iteration}")
        else:
            trainer.iteration = start_iteration
        art.dir.mkdir(parents=True, exist_ok=True)
        if mask is not None and not (art.dir / "mask.safetensors").is_file():
            mask.save(art.dir / "mask.safetensors")
        with self.progress(label) if self.progress else nullcontext() as update:
            result = trainer.run(
                on_epoch_end=lambda t: art.save_checkpoint(t.state_dict()), on_progress=update, until=until
            )
        full = mask if mask is not None else Mask.ones(trainer.model)
        metrics = {
            "level": level,
            "seed": seed,
            "density": full.density(),
            "layer_density": full.layer_density(),
            **result.summary(),
            "history": [asdict(r) for r in result.history],
        }
        art.finish(_state(trainer.model), metrics)
        return metrics
