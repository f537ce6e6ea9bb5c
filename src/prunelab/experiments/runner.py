"""Run an experiment: dense trunk (shared), then pruning levels with a weight treatment, and controls.

Every artifact is finished atomically (weights, then metrics.json), and training checkpoints at each
epoch end, so a run killed at any moment resumes at its last finished epoch and gives the numbers an
uninterrupted run gives. Every random draw derives from the replicate seed and its purpose.

The runner never looks at names: the treatment and the controls say which trunk points they start
from and what each branch starts with (:mod:`~prunelab.experiments.branches`); the pruning method
(:class:`~prunelab.pruning.methods.PruningMethod`) says which inputs it needs, how many training
examples it reads, and which training plug-ins the dense trunk and the levels train with, whose
reports are kept in the dense level's metrics and said in their own words
(:func:`~prunelab.training.plugins.report_lines`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunelab.data import Dataset
from prunelab.errors import CheckpointError, PrunelabError, SpecError
from prunelab.experiments.artifact import Artifact, DamagedResults, state_shapes
from prunelab.experiments.branches import Branch, LevelInputs, Start, State
from prunelab.experiments.controls import CONTROLS
from prunelab.experiments.metrics import LevelMetrics, weight_entries
from prunelab.experiments.paths import branch_lock
from prunelab.experiments.store import Store
from prunelab.experiments.treatments import TREATMENTS, treatment_for
from prunelab.io import remove_orphans
from prunelab.locks import locked
from prunelab.profiling import measured
from prunelab.pruning import Mask, PruneContext, prunable_names, prune
from prunelab.pruning.calibration import reconstruct
from prunelab.seeding import derive_seed
from prunelab.training import Checkpoint, Trainer
from prunelab.training.inputs import check_accepts, made_up_example
from prunelab.training.plugins import report_lines

if TYPE_CHECKING:
    from prunelab.experiments.spec import ExperimentSpec

#: What each level records of its environment and a resumed level is compared on (see Trainer.environment).
RECORDED = ("torch", "prunelab", "device", "threads", "step")

#: The branch of the treatment's pruned levels (each control's branch is named by the control).
LEVELS = "levels"


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    directory: Path
    levels: dict[int, list[LevelMetrics]] = field(default_factory=dict)  # seed -> per-level metrics
    controls: dict[int, dict[str, list[LevelMetrics]]] = field(default_factory=dict)  # seed -> name -> levels


def _state(model: nn.Module) -> State:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class ExperimentRunner:
    """Runs one :class:`ExperimentSpec` under a results root."""

    def __init__(
        self,
        spec: ExperimentSpec,
        root: str | Path | Store | None = None,
        *,
        data_dir: str | Path | None = None,
        progress: Callable[[str], object] | None = None,
        log: Callable[[str], None] = lambda msg: None,
        wait: bool = True,
        data: Dataset | Callable[[], Dataset] | None = None,
    ) -> None:
        """``wait``: when another process is training a dense trunk this experiment shares, wait for
        it (saying so through ``log``) rather than refuse. Two writers of one branch are refused.
        ``data``: the dataset already loaded for this spec (experiments sharing a trunk share it), or
        a function that gives it when it is first needed."""
        self.spec = spec
        self.wait = wait
        self.store = root if isinstance(root, Store) else Store(root)
        self.root = self.store.root
        self.data_dir = data_dir
        self.progress = progress
        self.log = log
        self.directory = self.store.experiment_dir(spec.experiment_id())
        self.treatment = treatment_for(spec)
        self.controls = {name: CONTROLS.get(name)() for name in spec.controls}
        self.rate = spec.pruning.rate_per_round()
        self.dense_hooks = spec.dense_hooks  # fresh plug-ins for each dense training
        self.level_hooks = spec.level_hooks  # and for each pruned level's and control's
        self._data = data
        self._warned: set[tuple[str, str]] = set()
        self._updates: dict[str, torch.Tensor] = {}
        self._check_before_training()

    # set-up -------------------------------------------------------------------------------------
    def _branches(self) -> list[Branch]:
        return [self.treatment, *self.controls.values()]

    def _check_before_training(self) -> None:
        """Refuse invalid combinations before any training: one trial round on the initial model."""
        for branch in self._branches():
            branch.check(self.spec)
        pruning = self.spec.pruning
        method = pruning.method_entry()
        method.check(pruning)
        if pruning.reconstruct and not self.treatment.starts_from_previous:
            able = [n for n, t in TREATMENTS.items() if t.starts_from_previous]
            raise SpecError(
                f"reconstruct refits the trained weights of each level, which only treatment "
                f"{' or '.join(map(repr, able))} trains on; treatment {self.spec.treatment.kind!r} starts elsewhere"
            )
        if method.updates_weights and not self.treatment.starts_from_previous:
            able = [n for n, t in TREATMENTS.items() if t.starts_from_previous]
            raise SpecError(
                f"method {pruning.method!r} updates the kept weights as it prunes, and only treatment "
                f"{' or '.join(map(repr, able))} starts from them; treatment {self.spec.treatment.kind!r} starts elsewhere"
            )
        field = pruning.calibration_field() or ("calibration_images" if pruning.reconstruct else None)
        if field is not None:
            self._check_calibration(field, getattr(pruning, field))
        notes: list[str] = []
        model = self.spec.build_model(derive_seed(0, "init"), notes=notes)
        for note in notes:
            self.log(note)
        info = self.spec.data_info
        example = made_up_example(info.input_shape, 1, torch.Generator().manual_seed(0))
        larger = (
            "" if self.spec.image_size else "; models made for larger images need --image-size (e.g. 224)"
        )
        target_shape = check_accepts(model, example, info, who=f"model {self.spec.model!r}", hint=larger)
        for hook in [*self.dense_hooks(), *self.level_hooks(), *self.spec.train.plugin_hooks()]:
            hook.check(model, example)
        g = torch.Generator().manual_seed(0)  # the trial scores a random batch of the right shape
        probe = (
            (
                made_up_example(info.input_shape, 8, g),
                torch.randint(0, info.num_classes, (8, *target_shape), generator=g),
            ),
        )
        context = PruneContext(
            initial_state=_state(model), batches=probe, input_shape=info.input_shape, trial=True
        )
        prune(model, None, self.spec.pruning, context=context)

    def _check_calibration(self, field: str, count: int) -> None:
        """Refuse more calibration examples than the training split holds (in tokens for text windows)."""
        train = self.data.train
        if count <= len(train):
            return
        per = train.x[0].numel() if train.y.dim() > 1 else 0
        if per:
            raise SpecError(
                f"{field}={count} windows of {per} tokens ({count * per:,} tokens) is more than the training "
                f"split of {self.spec.data} holds ({len(train)} windows, {len(train) * per:,} tokens); give "
                f"fewer sequences, a shorter --sequence-length or more text"
            )
        raise SpecError(f"{field}={count} is more than the {len(train)} training examples")

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = self.spec.load_data(self.data_dir)
        elif not isinstance(self._data, Dataset):
            self._data = self._data()
        return self._data

    @property
    def branches(self) -> list[str]:
        """The branches of each seed: the treatment's levels, then each control's."""
        return [LEVELS, *self.controls]

    def _new_model(self, seed: int, purpose: str) -> nn.Module:
        """A model initialised for ``purpose`` (no starting weights: a reinit, or an architecture to
        load weights into)."""
        return self.spec.build_model(derive_seed(seed, purpose), pretrained=False)

    def iterations_per_epoch(self) -> int:
        return -(-len(self.data.train) // self.spec.train.batch_size)

    # running ------------------------------------------------------------------------------------
    def run(self) -> ExperimentResult:
        """Train what is missing; a finished experiment is read back, which needs no write access."""
        finished = self._finished()
        if finished is not None:
            return finished
        _ = self.data  # bad data (an empty or undecodable text) is refused before anything is written
        result = ExperimentResult(self.spec, self.directory)
        with locked(self.directory):
            remove_orphans(self.directory, recursive=False)
            self.store.write_spec(self.spec)
            for seed in self.spec.seeds:
                with self._locked_branches(seed, self.branches):
                    levels, controls = self._run_seed(seed, self.branches)
                result.levels[seed] = levels
                result.controls[seed] = controls
        return result

    def run_seed(self, seed: int, branch: str | None = None) -> ExperimentResult:
        """One replicate, beside other processes running this experiment's other seeds (a sweep's
        tasks): only that seed's branches are locked. ``branch``: only the treatment's levels
        (:data:`LEVELS`) or one control's (its name), beside processes running the seed's other
        branches; a control's branch starts from the levels, which must be finished. Finished: read back."""
        if seed not in self.spec.seeds:
            raise SpecError(f"seed {seed} is not one of this experiment's seeds {list(self.spec.seeds)}")
        if branch is not None and branch not in self.branches:
            raise SpecError(f"branch {branch!r} is not one of this experiment's {self.branches}")
        names = self.branches if branch is None else [branch]
        finished = self._finished((seed,))
        if finished is not None:
            return finished
        if not self._spec_lists(seed):
            with locked(self.directory, wait=True, on_wait=self.log):
                self.store.write_spec(self.spec)
        result = ExperimentResult(self.spec, self.directory)
        with self._locked_branches(seed, names):
            result.levels[seed], result.controls[seed] = self._run_seed(seed, names)
        return result

    @contextmanager
    def _locked_branches(self, seed: int, names: list[str]) -> Iterator[None]:
        """Hold the lock of each branch in ``names`` of ``seed`` and clear what killed writers of
        those branches left (other processes may be writing the seed's other branches)."""
        with ExitStack() as stack:
            removed = 0
            for name in names:
                stack.enter_context(locked(self._seed_dir(seed), name=branch_lock(name)))
                for level in range(1, self.spec.pruning.rounds + 1):
                    removed += remove_orphans(self._artifact(seed, level, name).dir, recursive=False)
            if removed:
                self.log(f"seed {seed}: removed {removed} temporary file(s) left by an interrupted run")
            yield

    def _artifact(self, seed: int, level: int, branch: str) -> Artifact:
        exp = self.spec.experiment_id()
        if branch == LEVELS:
            return self.store.level(exp, seed, level)
        return self.store.control(exp, seed, level, branch)

    def train_trunk(self, seed: int) -> None:
        """Only the dense trunk of ``seed`` and the trunk points this experiment's branches start from
        (a sweep trains each shared trunk once, before the experiments that share it)."""
        self._trunk(seed, self._initial(seed))

    def _seed_dir(self, seed: int) -> Path:
        return self.store.paths.seed(self.spec.experiment_id(), seed)

    def _spec_lists(self, seed: int) -> bool:
        """Whether spec.json is written and lists ``seed``."""
        try:
            exp = self.store.read(self.directory)
        except PrunelabError:
            return False
        return seed in exp.spec.seeds

    def _finished(self, seeds: tuple[int, ...] | None = None) -> ExperimentResult | None:
        """The results, if every seed (of ``seeds``, default the spec's), level and control branch
        this spec asks for is finished; their metrics, weights and masks are checked as ``show`` and
        ``export`` read them, a damaged file named (:class:`DamagedResults`), never reported done."""
        if not self.store.spec_path(self.spec.experiment_id()).is_file():
            return None
        try:
            exp = self.store.read(self.directory)
        except PrunelabError:
            return None  # the run rewrites a damaged spec.json under its lock
        seeds = self.spec.seeds if seeds is None else seeds
        for seed in seeds:
            exp.require_intact(seed)  # damaged results are named, never trained over or skipped
        rounds = self.spec.pruning.rounds
        result = ExperimentResult(self.spec, self.directory)
        for seed in seeds:
            levels = exp.levels.get(seed, {})
            branches = {name: exp.controls.get(name, {}).get(seed, {}) for name in self.controls}
            if len(levels) != rounds + 1 or any(len(b) != rounds for b in branches.values()):
                return None
            result.levels[seed] = [levels[k] for k in range(rounds + 1)]
            result.controls[seed] = {
                name: [b[k] for k in range(1, rounds + 1)] for name, b in branches.items()
            }
        for seed in seeds:  # reported as done only when every file it stands for can be read
            exp.check_files(seed)
        return result

    def _initial(self, seed: int) -> State:
        """theta_0: the model with its starting weights, as the dense plug-ins initialise it."""
        model = self.spec.build_model(derive_seed(seed, "init"))
        example = made_up_example(self.spec.data_info.input_shape, 1, torch.Generator().manual_seed(0))
        for hook in self.dense_hooks():
            hook.initialise(model, example)
        return _state(model)

    def _run_seed(
        self, seed: int, names: list[str]
    ) -> tuple[list[LevelMetrics], dict[str, list[LevelMetrics]]]:
        """Train the branches ``names`` of ``seed`` (the levels are read back where not among them)."""
        rounds = self.spec.pruning.rounds
        missing = [k for k in range(1, rounds + 1) if not self._artifact(seed, k, LEVELS).done]
        if LEVELS not in names and missing:
            raise PrunelabError(
                f"seed {seed} level {missing[0]} of {self.directory} is not trained yet, and the "
                f"{' and '.join(names)} control(s) start from its levels: run the levels first"
            )
        init = self._initial(seed)
        dense, points = self._trunk(seed, init)
        levels = [dense.metrics()]
        controls: dict[str, list[LevelMetrics]] = {name: [] for name in self.controls if name in names}
        previous, mask = self._stored_weights(dense), None
        for level in range(1, rounds + 1):
            art = self._artifact(seed, level, LEVELS)
            before, mask = mask, self._level_mask(art, seed, level, previous, mask, init, levels[0].plugins)
            if self._updates and not art.done:  # a method that refits the kept weights (SparseGPT)
                previous = {**previous, **{k: v.to(previous[k].dtype) for k, v in self._updates.items()}}
            if self.spec.pruning.reconstruct and not art.done:
                previous = self._reconstructed(previous, before, mask, seed, level)
            inputs = LevelInputs(
                spec=self.spec,
                seed=seed,
                level=level,
                mask=mask,
                init=init,
                points=points,
                previous=previous,
                fresh=_state(self._new_model(seed, f"reinit-{level}")),
                iterations_per_epoch=self.iterations_per_epoch(),
            )
            ticket = self.treatment.start(inputs)
            levels.append(
                self._train(art, f"seed {seed} level {level}", ticket, seed, level, hooks=self.level_hooks)
            )
            for name in controls:
                start = self.controls[name].start(replace(inputs, ticket=ticket))
                branch = self._artifact(seed, level, name)
                controls[name].append(
                    self._train(
                        branch,
                        f"seed {seed} level {level} {name}",
                        start,
                        seed,
                        level,
                        hooks=self.level_hooks,
                    )
                )
            previous = self._stored_weights(art)
        return levels, controls

    def _level_mask(
        self,
        art: Artifact,
        seed: int,
        level: int,
        previous: State,
        mask: Mask | None,
        init: State,
        reports: dict | None = None,
    ) -> Mask:
        """Score the previous level's final weights; the mask is saved before training starts.

        A method that also refits the kept weights (SparseGPT) leaves them in ``self._updates``; a
        level whose mask is stored but whose training is not finished prunes again to get them
        (deterministic: the same mask, checked)."""
        self._updates = {}
        updates = self.spec.pruning.method_entry().updates_weights
        stored = None
        if art.mask_path.is_file():
            try:
                stored = Mask.load(art.mask_path)
                stored.check_fits(self._new_model(seed, "init"))
            except PrunelabError as exc:
                raise DamagedResults(art.damage_message(exc)) from None
            if not updates or art.done:
                return stored
        model = self._new_model(seed, "init")
        model.load_state_dict(previous)
        g = torch.Generator().manual_seed(derive_seed(seed, f"prune-{level}"))
        needs = self.spec.pruning.needs()
        notes: list[str] = []
        context = PruneContext(
            initial_state=init,
            batches=self._scoring_batches(seed, level) if "batches" in needs else None,
            input_shape=self.data.info.input_shape,
            positions=self.spec.pruning.calibration_positions,
            notes=notes,
            reports=reports or {},
            updates=self._updates,
            progress=self.progress,
        )
        with measured() as cost:
            new = prune(model, mask, self.spec.pruning, context=context, generator=g)
        self.log(f"seed {seed} level {level}: pruned ({self.spec.pruning.method}) in {cost.text()}")
        for note in notes:
            self.log(f"seed {seed} level {level}: {note}")
        if stored is not None:
            if stored != new:
                raise DamagedResults(art.damage_message(PrunelabError(
                    f"{art.mask_path} is not the mask pruning gives again (the run it came from differed)"
                )))  # fmt: skip
            return stored
        new.save(art.mask_path)
        return new

    def _scoring_batches(self, seed: int, level: int) -> tuple:
        """The training batches a method that ``needs`` data reads: as many examples as it says
        (:meth:`~prunelab.pruning.spec.PruneSpec.scoring_examples`)."""
        count = self.spec.pruning.scoring_examples(self.spec.train.batch_size)
        return self._batches(seed, f"score-batches-{level}", count)

    def _batches(self, seed: int, purpose: str, count: int) -> tuple:
        train, bs = self.data.train, self.spec.train.batch_size
        g = torch.Generator().manual_seed(derive_seed(seed, purpose))
        idx = torch.randperm(len(train), generator=g)[:count]
        return tuple((train.x[idx[i : i + bs]], train.y[idx[i : i + bs]]) for i in range(0, len(idx), bs))

    def _reconstructed(
        self, previous: State, before: Mask | None, mask: Mask, seed: int, level: int
    ) -> State:
        """The previous level's weights with each newly pruned layer refitted by least squares
        (recomputed identically on resume: same seed, batches and positions)."""
        model = self._new_model(seed, "init")
        model.load_state_dict(previous)
        batches = self._batches(seed, f"calibration-{level}", self.spec.pruning.calibration_images)
        spec = self.spec.pruning
        new = reconstruct(
            model,
            before,
            mask,
            batches,
            positions=spec.calibration_positions,
            seed=derive_seed(seed, f"positions-{level}"),
        )
        self.log(f"seed {seed} level {level}: reconstructed {len(new)} layer(s) by least squares")
        return {**previous, **{k: v.to(previous[k].dtype) for k, v in new.items()}}

    def trunk_points(self) -> list[int]:
        """The iterations of the dense training (besides 0) whose weights the branches start from."""
        ipe = self.iterations_per_epoch()
        return sorted({k for b in self._branches() for k in b.trunk_points(self.spec, ipe)} - {0})

    def _trunk(self, seed: int, init: State) -> tuple[Artifact, dict[int, State]]:
        """Dense level 0 and the trunk points the branches start from, once per model/data/training/seed."""
        trunk = self.spec.trunk_id()
        wanted = self.trunk_points()
        total = self.spec.train.total_iterations(self.iterations_per_epoch())
        for k in wanted:
            if k > total:
                raise SpecError(
                    f"rewind point {k} iterations is past the end of training ({total} iterations)"
                )
        with locked(self.store.trunk_dir(trunk, seed), wait=self.wait, on_wait=self.log):
            remove_orphans(self.store.trunk_dir(trunk, seed))
            dense = self.store.dense(trunk, seed)
            start = Start(init, None, self.spec.dense_config(), 0)
            metrics = self._train(dense, f"seed {seed} dense", start, seed, 0, hooks=self.dense_hooks)
            for line in report_lines(metrics.plugins):
                self.log(f"seed {seed} dense: {line}")
            points = {0: init}
            for k in wanted:
                point = self.store.trunk_point(trunk, seed, k)
                self._train(
                    point, f"seed {seed} trunk point {k}", start, seed, 0, until=k, hooks=self.dense_hooks
                )
                points[k] = self._stored_weights(point)
        return dense, points

    @cached_property
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return state_shapes(self._new_model(0, "init"))

    def _stored_weights(self, art: Artifact) -> State:
        """A finished artifact's weights, checked against the architecture (a damaged file is named)."""
        try:
            return art.weights(like=self._shapes)
        except CheckpointError as exc:
            raise DamagedResults(art.damage_message(exc)) from None

    def _check_environment(
        self, label: str, before: object, now: dict, what: str, expected: tuple[str, ...] = ()
    ) -> None:
        """Warn (once per difference and source) when a level resumes or continues under other settings than
        ``what`` ran with: results depend on torch's version, the device, threads and training step.
        ``expected`` differences are not warned about."""
        if not isinstance(before, dict):
            return
        changed = [
            f"{k} {before[k]} -> {now.get(k)}"
            for k in RECORDED
            if k in before and before[k] != now.get(k) and k not in expected
        ]
        message = f"{', '.join(changed)}"
        if changed and (what, message) not in self._warned:
            self._warned.add((what, message))
            warnings.warn(
                f"{label} runs under other settings than {what} ({message}); its numbers may differ "
                "from a run under one setting throughout",
                stacklevel=2,
            )

    def _train(
        self,
        art: Artifact,
        label: str,
        start: Start,
        seed: int,
        level: int,
        until: int | None = None,
        hooks: Callable[[], list] = list,
    ) -> LevelMetrics:
        """Train one artifact; ``hooks`` makes the training plug-ins (fresh ones: they hold state)."""
        if art.done:
            return art.metrics()
        model = self._new_model(seed, "init")
        model.load_state_dict(start.weights)
        trainer = Trainer(model, self.data, start.config, mask=start.mask, seed=seed, hooks=hooks())
        checkpoint = art.load_checkpoint()
        environment = {
            k: v if isinstance(v, int | float) else str(v) for k, v in trainer.environment().items()
        }
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint)
            self.log(f"{label}: resuming at iteration {trainer.iteration}")
            self._check_environment(label, checkpoint.get("environment"), environment, "its first epochs")
        else:
            trainer.iteration = start.iteration
        if level > 0:
            dense = self.store.dense(self.spec.trunk_id(), seed)
            if dense.done:
                # a dense training with plug-ins (slimming, sparse VD) takes its own step kind
                expected = ("step",) if self.dense_hooks() or self.level_hooks() else ()
                self._check_environment(
                    label, dense.metrics().environment, environment, "the dense trunk", expected
                )
        art.dir.mkdir(parents=True, exist_ok=True)
        if start.mask is not None and not art.mask_path.is_file():
            start.mask.save(art.mask_path)
        with self.progress(label) if self.progress else nullcontext() as update:
            result = trainer.run(
                callbacks=[Checkpoint(art.save_checkpoint, environment=environment)],
                on_progress=update,
                until=until,
            )
        full = result.mask if result.mask is not None else Mask.ones(trainer.model)
        weights = weight_entries(full, prunable_names(trainer.model))  # densities count the weights
        metrics = LevelMetrics.from_result(result, level=level, seed=seed, mask=weights)
        art.finish(_state(trainer.model), metrics)
        return metrics
