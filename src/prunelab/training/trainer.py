"""The masked trainer: whole datasets as tensors, fused optimizers, masks enforced exactly.

Pruned weights are zero before training starts and their gradients are zeroed before every
optimizer step. With zero gradients from the start, SGD (momentum, Nesterov, weight decay), Adam and
AdamW all leave those weights at exactly zero and their optimizer state at exactly zero, so the forward
pass needs no mask multiply and a masked epoch costs the same as a dense one.

The gradients come from one :class:`~prunelab.training.step.Step`, chosen once by
:func:`~prunelab.training.step.choose_step` (``Trainer.step_kind``: "native", "relu-mlp" or
"autograd"); the epoch loop calls it the same way whatever it is. Training hooks
(:class:`~prunelab.training.hooks.TrainHook`, registered ones are
:class:`~prunelab.training.plugins.TrainPlugin`) add loss terms, change gradients, stop training
early, and swap layers for training-time variants that are converted back at the end.

Evaluation follows the lottery-ticket papers: the validation split every ``eval_every`` (default 100
iterations), a copy of the weights at the minimum validation loss so far, and the test split only at
the end of training, twice: on the final weights and on that copy. So ``TrainResult.final`` and
``TrainResult.early_stop`` carry test metrics and the other records do not (``None``). The initial
record (iteration 0, or the start of a late-rewound run) has validation metrics only: a test pass
there would cost as much as any other and answer no question the results ask. Without a validation
split there is nothing to select on: the early stop is the final record, tested once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from prunelab.data import Dataset, Split
from prunelab.errors import CheckpointError, SpecError, TrainingDiverged
from prunelab.pruning.mask import Mask
from prunelab.seeding import derive_seed
from prunelab.training.config import TrainConfig
from prunelab.training.device import resolve_device
from prunelab.training.evaluation import EVAL_BATCH, choose_evaluator, evaluate
from prunelab.training.fused import LeanStepper
from prunelab.training.hooks import TrainHook
from prunelab.training.optim import build_optimizer
from prunelab.training.schedule import build_schedule
from prunelab.training.step import choose_step, mask_gradients

__all__ = ["CHECKPOINT_FORMAT", "EVAL_BATCH", "EvalRecord", "TrainResult", "Trainer", "evaluate", "train"]

#: Version of :meth:`Trainer.state_dict`'s layout. 2: best-validation weights, pending train totals,
#: early-stop reason and hook states; test metrics only at the end.
CHECKPOINT_FORMAT = 2


@dataclass(frozen=True)
class EvalRecord:
    """Metrics at one evaluation point; train metrics average the iterations since the last one.

    ``test_loss``/``test_acc`` are None except at the final record and at the early-stop record
    (minimum validation loss), whose test metrics are those of the weights at that iteration.
    """

    iteration: int
    epoch: float
    lr: float
    train_loss: float | None
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None
    test_loss: float | None
    test_acc: float | None


def _best_record(history: list[EvalRecord]) -> EvalRecord | None:
    """The first record with the minimum finite validation loss (the rule the trainer keeps weights by)."""
    with_val = [r for r in history if r.val_loss is not None and math.isfinite(r.val_loss)]
    return min(with_val, key=lambda r: r.val_loss) if with_val else None


@dataclass
class TrainResult:
    """What a training run produced.

    ``stopped_early`` is the reason a hook stopped training, or None. ``environment`` is what the
    numbers depend on beyond the configuration: torch and prunelab versions, device, thread count,
    training step and evaluation kinds, and the evaluation interval in iterations. ``mask`` is the
    mask the trained model carries: the trainer's, combined with what hooks that swap layers pruned
    (None: dense). ``reports`` holds each hook's :meth:`~TrainHook.report`, by hook name.
    """

    history: list[EvalRecord]
    iterations: int
    wall_time: float
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    stopped_early: str | None = None
    environment: dict = field(default_factory=dict)
    mask: Mask | None = None
    reports: dict[str, dict] = field(default_factory=dict)

    @property
    def final(self) -> EvalRecord:
        return self.history[-1]

    @property
    def early_stop(self) -> EvalRecord:
        """The evaluation with minimum validation loss: the lottery-ticket papers' learning-speed measure.

        Its test metrics are those of the weights at that point (the trainer kept a copy of them).
        Without validation metrics it is the final record.
        """
        best = _best_record(self.history)
        return self.final if best is None else best

    @property
    def early_stop_iteration(self) -> int:
        return self.early_stop.iteration

    def summary(self) -> dict:
        best = self.early_stop
        return {
            "iterations": self.iterations,
            "wall_time": self.wall_time,
            "final": asdict(self.final),
            "early_stop_iteration": best.iteration,
            "early_stop": asdict(best),
            "stopped_early": self.stopped_early,
            "environment": dict(self.environment),
            "reports": dict(self.reports),
        }


@torch.no_grad()
def _check_fits_data(model: nn.Module, data: Dataset) -> None:
    """One example through the model, so a shape mismatch is a clear error, not one deep inside torch."""
    x = data.train.x[:1]
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    except RuntimeError as exc:
        raise SpecError(
            f"the model does not accept {data.info.name} inputs of shape {tuple(x.shape[1:])} "
            f"({str(exc).splitlines()[0]}); build it with input_shape={data.info.input_shape}"
        ) from None
    finally:
        model.train(was_training)
    want = (data.info.num_classes, *data.train.y.shape[1:])  # one row of logits per target
    if tuple(out.shape[1:]) != want:
        detail = f" (logits {want} per example, one row per token)" if len(want) > 1 else ""
        raise SpecError(
            f"the model outputs shape {tuple(out.shape[1:])} per example but {data.info.name} has "
            f"{data.info.num_classes} classes{detail}; build it with num_classes={data.info.num_classes}"
        )


def _check_hooks(hooks: Iterable[TrainHook] | None) -> list[TrainHook]:
    hooks = list(hooks or ())
    for hook in hooks:
        if not isinstance(hook, TrainHook):
            raise SpecError(
                f"training hook {hook!r} (a {type(hook).__name__}) is not a prunelab.training.TrainHook; "
                "hooks must be instances of TrainHook subclasses"
            )
    return hooks


def _combine(mask: Mask | None, more: list[Mask]) -> Mask | None:
    """``mask`` and ``more`` together: an entry kept only where every mask that has it keeps it."""
    if not more:
        return mask
    entries = {} if mask is None else {n: m.clone() for n, m in mask.items()}
    for extra in more:
        for n, m in extra.items():
            entries[n] = entries[n] & m.to(entries[n].device) if n in entries else m.clone()
    return Mask(entries)


class Trainer:
    """Trains one model on one dataset; its state can be checkpointed at epoch ends and resumed exactly."""

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        cfg: TrainConfig,
        *,
        mask: Mask | None = None,
        seed: int = 0,
        hooks: Iterable[TrainHook] | None = (),
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.bf16 and self.device.type != "cuda":
            raise SpecError(
                "bf16 autocast is a GPU option; it needs --device cuda (or auto on a GPU machine)"
            )
        self.hooks = _check_hooks(hooks)
        self.data = data.to(self.device)
        self.model = model.to(self.device)
        _check_fits_data(self.model, self.data)
        self.mask = mask
        if mask is not None:
            mask.apply(self.model)  # checks that the mask fits
        for hook in self.hooks:
            hook.check(self.model, self.data.train.x[:1])
        for hook in self.hooks:  # training-time variants; converted back by restore() after run()
            self.model = hook.swap(self.model).to(self.device)
        self._swapped = any(h.swaps_layers for h in self.hooks)
        self._restored = False
        self.seed = seed
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "data-order"))
        self.rng_state = torch.Generator().manual_seed(derive_seed(seed, "dropout")).get_state()
        self.optimizer = build_optimizer(self.model.parameters(), cfg, self.device)
        self.stepper = LeanStepper(self.optimizer)
        self.batches_per_epoch = -(-len(self.data.train) // cfg.batch_size)
        self.total = cfg.total_iterations(self.batches_per_epoch)
        self.eval_interval = cfg.eval_interval(self.batches_per_epoch)
        self.schedule = build_schedule(cfg, self.batches_per_epoch)
        if self.schedule.warmup > self.total:
            raise SpecError(
                f"warmup {cfg.warmup} is {self.schedule.warmup:,} iterations, longer than the training "
                f"({self.total:,} iterations): the learning rate would never reach {cfg.lr:g}"
            )
        self.augment = data.info.augment if cfg.augment is None else cfg.augment
        self.iteration = 0
        self.history: list[EvalRecord] = []
        self.wall_time = 0.0
        self.until = self.total
        #: the reason a hook stopped training (kept in checkpoints), or None
        self.stopped_early: str | None = None
        self._masked = self._mask_pairs()
        self._params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._grad_hooks = [h for h in self.hooks if h.changes_grads]
        self._grad_buffers: list[torch.Tensor | None] = []
        self.step = choose_step(
            self.model, self.data, cfg, masks=self._masked, hooks=self.hooks, generator=self.generator
        )
        self.evaluator = choose_evaluator(self.model, self.data)
        # train totals since the last evaluation that crossed an epoch end (so they are checkpointed)
        self._pending: tuple[float, float, int] = (0.0, 0.0, 0)
        # the weights at the minimum validation loss so far, on the training device
        self._best_loss = math.inf
        self._best_iteration: int | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None

    @property
    def step_kind(self) -> str:
        """Which training step runs: "native" (C), "relu-mlp" (torch ops, no autograd) or "autograd"."""
        return self.step.kind

    def evaluate(self, split: Split) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on ``split`` through this trainer's evaluator (C where checked)."""
        return self.evaluator(split)

    def environment(self) -> dict:
        """What this run's numbers depend on beyond its configuration (recorded in ``TrainResult``)."""
        import prunelab  # the package imports this module; by the time a trainer runs it is loaded

        return {
            "torch": torch.__version__,
            "prunelab": getattr(prunelab, "__version__", "unknown"),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "step": self.step_kind,
            "eval": self.evaluator.kind,
            "eval_every": self.eval_interval,
        }

    # ---------------------------------------------------------------------------------------
    def _mask_pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        if self.mask is None:
            return []
        params = dict(self.model.named_parameters())
        missing = [n for n in self.mask.names() if n not in params]
        if missing:
            raise SpecError(
                f"the mask names {missing[:4]}, which the model trained here lacks (a training hook "
                "swapped those layers for variants without a `weight` parameter)"
            )
        return [
            (params[n], m.to(self.device, params[n].dtype)) for n, m in self.mask.items() if not bool(m.all())
        ]

    def _set_lr(self, it: int) -> float:
        lr = self.cfg.lr * self.schedule.factor(it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        """Everything needed to continue exactly, taken at an epoch end (``run``'s ``on_epoch_end``).

        Weights, optimizer, RNG states, history, the train totals not yet recorded, the copy of the
        best-validation weights with its loss and iteration, the early-stop reason, and each hook's
        state (in hook order).
        """
        best = None
        if self._best_weights is not None:
            best = {
                "val_loss": self._best_loss,
                "iteration": self._best_iteration,
                "weights": {k: v.detach().cpu().clone() for k, v in self._best_weights.items()},
            }
        return {
            "format": CHECKPOINT_FORMAT,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "generator": self.generator.get_state(),
            "rng": self.rng_state,
            "history": [asdict(r) for r in self.history],
            "wall_time": self.wall_time,
            "train_totals": list(self._pending),
            "best": best,
            "stopped_early": self.stopped_early,
            "hooks": [h.state_dict() for h in self.hooks],
        }

    def load_state_dict(self, state: dict) -> None:
        version = state.get("format", 1) if isinstance(state, dict) else None
        if version != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"training checkpoint has format {version}, this prunelab reads format {CHECKPOINT_FORMAT} "
                "(it keeps the best-validation weights); delete the checkpoint to restart this run"
            )
        hooks = state.get("hooks")
        if not isinstance(hooks, list) or len(hooks) != len(self.hooks):
            names = ", ".join(type(h).__name__ for h in self.hooks) or "none"
            count = len(hooks) if isinstance(hooks, list) else "no"
            raise CheckpointError(
                f"training checkpoint holds the state of {count} training hooks but this run has "
                f"{len(self.hooks)} ({names}); resume with the hooks it was trained with"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.stepper.invalidate()
            self.iteration = int(state["iteration"])
            self.generator.set_state(state["generator"])
            self.rng_state = state["rng"]
            self.history = [EvalRecord(**r) for r in state["history"]]
            self.wall_time = float(state["wall_time"])
            loss, correct, seen = state["train_totals"]
            self._pending = (float(loss), float(correct), int(seen))
            best = state["best"]
            if best is None:
                self._best_loss, self._best_iteration, self._best_weights = math.inf, None, None
            else:
                current = self.model.state_dict()
                if set(best["weights"]) != set(current):
                    raise ValueError("its best-validation weights are not this model's")
                self._best_loss, self._best_iteration = float(best["val_loss"]), int(best["iteration"])
                self._best_weights = {
                    k: v.to(self.device, current[k].dtype).clone() for k, v in best["weights"].items()
                }
            reason = state["stopped_early"]
            self.stopped_early = None if reason is None else str(reason)
            for hook, hook_state in zip(self.hooks, hooks, strict=True):
                hook.load_state_dict(hook_state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"training checkpoint does not fit this run: {exc}") from None

    # ---------------------------------------------------------------------------------------
    def _train_totals(self) -> tuple[float, float, int]:
        """(summed loss, correct, examples) since the last evaluation, across epoch ends."""
        loss, correct, seen = self.step.take_totals()
        p_loss, p_correct, p_seen = self._pending
        self._pending = (0.0, 0.0, 0)
        return p_loss + loss, p_correct + correct, p_seen + seen

    def _diverged(self, what: str, value: float) -> TrainingDiverged:
        since = self.history[-1].iteration if self.history else 0
        return TrainingDiverged(
            f"training diverged: the {what} became {value} between iterations {since:,} and {self.iteration:,} "
            f"(optimizer {self.cfg.optimizer}, lr {self.cfg.lr:g}); lower the learning rate. "
            "Nothing of this run is stored as finished."
        )

    def _check_finite(self) -> None:
        """Stop, before a checkpoint could store them, when the training loss since the last record is NaN/inf."""
        loss, _, seen = self._pending
        if seen and not math.isfinite(loss):
            raise self._diverged("training loss", loss / seen)

    def _record(self, lr: float, train_loss: float, correct: float, seen: int) -> None:
        """A history record at the current iteration: validation metrics, and the best copy kept up to date."""
        if seen and not math.isfinite(train_loss):
            raise self._diverged("training loss", train_loss / seen)
        val_loss = val_acc = None
        if len(self.data.val):
            val_loss, val_acc = self.evaluator(self.data.val)
            if not math.isfinite(val_loss):
                raise self._diverged("validation loss", val_loss)
            if math.isfinite(val_loss) and val_loss < self._best_loss:
                self._keep_best(val_loss)
        self.history.append(
            EvalRecord(
                iteration=self.iteration,
                epoch=self.iteration / self.batches_per_epoch,
                lr=lr,
                train_loss=float(train_loss) / seen if seen else None,
                train_acc=float(correct) / seen if seen else None,
                val_loss=val_loss,
                val_acc=val_acc,
                test_loss=None,
                test_acc=None,
            )
        )

    def _keep_best(self, val_loss: float) -> None:
        self._best_loss, self._best_iteration = val_loss, self.iteration
        with torch.no_grad():
            state = self.model.state_dict()
            if self._best_weights is None:
                self._best_weights = {k: v.detach().clone() for k, v in state.items()}
            else:  # copied into the same tensors: no allocation per improvement
                for k, v in state.items():
                    self._best_weights[k].copy_(v)

    def _finish(self) -> None:
        """End of training: a record at the last iteration, and the test split on the final weights and
        on the best-validation copy. Repeatable: a resumed run that only finishes gets the same numbers."""
        if self.history[-1].iteration != self.iteration:  # stopped by a hook between evaluation points
            self._record(self.optimizer.param_groups[0]["lr"], *self._train_totals())
        final = self.history[-1]
        test_loss, test_acc = self.evaluator(self.data.test)
        self.history[-1] = replace(final, test_loss=test_loss, test_acc=test_acc)
        best = _best_record(self.history)
        if self._best_weights is not None and best is not None and best.iteration != final.iteration:
            if best.iteration != self._best_iteration:
                raise AssertionError(
                    "the kept best-validation weights are not those of the early-stop record"
                )
            with torch.no_grad():
                weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.model.load_state_dict(self._best_weights)
                try:
                    test_loss, test_acc = self.evaluator(self.data.test)
                finally:
                    self.model.load_state_dict(weights)
            i = next(i for i, r in enumerate(self.history) if r is best)
            self.history[i] = replace(best, test_loss=test_loss, test_acc=test_acc)
        self._check_mask()

    def run(
        self,
        *,
        on_epoch_end: Callable[[Trainer], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        snapshot_at: Iterable[int] = (),
        until: int | None = None,
    ) -> TrainResult:
        """Train to the configured length (or stop at iteration ``until``); checkpoint in ``on_epoch_end``.

        A trainer whose ``iteration`` was set before the first run starts there (late rewinding):
        the LR schedule is read at that iteration and the first epoch is the rest of one. Hooks'
        ``on_epoch_end`` run before the caller's, so a checkpoint written there holds their decision.
        At the end, hooks that swapped layers convert the model back (``self.model`` is then the plain
        model and ``TrainResult.mask`` what they pruned), so such a trainer runs once.
        """
        if self._restored:
            raise RuntimeError("this trainer's hooks converted its layers back after its run; build another")
        snapshot_at = set(snapshot_at)
        self.until = self.total if until is None else min(until, self.total)
        for hook in self.hooks:
            hook.start(self)
        snapshots: dict[int, dict[str, torch.Tensor]] = {}
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        torch.set_flush_denormal(True)  # subnormal floats make CPU kernels 10-100x slower
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.rng_state)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(derive_seed(self.seed, "dropout-cuda") + self.iteration)
            self.model.train()
            if not self.history:
                self._snapshot(snapshots, snapshot_at)
                self._record(self._set_lr(self.iteration), 0.0, 0.0, 0)
            while self.iteration < self.until and self.stopped_early is None:
                start = time.perf_counter()
                self._epoch(snapshots, snapshot_at, on_progress)
                self._check_finite()
                for hook in self.hooks:  # every hook sees every epoch end; the first reason wins
                    reason = hook.on_epoch_end(self)
                    if reason and self.stopped_early is None:
                        self.stopped_early = str(reason)
                self.rng_state = torch.get_rng_state()
                self.wall_time += time.perf_counter() - start
                if on_epoch_end is not None:
                    on_epoch_end(self)
            start = time.perf_counter()
            self._finish()
            self.wall_time += time.perf_counter() - start
        environment = self.environment()
        mask = self._restore()
        return TrainResult(
            self.history,
            self.iteration,
            self.wall_time,
            snapshots,
            stopped_early=self.stopped_early,
            environment=environment,
            mask=mask,
            reports={h.name: h.report() for h in self.hooks if h.report()},
        )

    def _restore(self) -> Mask | None:
        """Hooks convert their variants back (last swapped, first restored); the combined mask."""
        more: list[Mask] = []
        for hook in reversed(self.hooks):
            self.model, extra = hook.restore(self.model)
            if extra is not None:
                more.append(extra)
        if self._swapped:
            self._restored = True
            self.evaluator = choose_evaluator(self.model, self.data)
        return _combine(self.mask, more)

    def _snapshot(self, snapshots: dict, wanted: set[int]) -> None:
        if self.iteration in wanted:
            snapshots[self.iteration] = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }

    def train_epoch(self) -> None:
        """One epoch of optimisation only, no evaluation (what the speed benchmark times)."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            self._epoch({}, set(), None, evaluate=False)
            self.rng_state = torch.get_rng_state()

    def _epoch(self, snapshots: dict, snapshot_at: set[int], on_progress, evaluate: bool = True) -> None:
        """One pass over a fresh permutation (or fewer iterations at the end of training)."""
        train, bs = self.data.train, self.cfg.batch_size
        perm = torch.randperm(len(train), generator=self.generator).to(self.device)
        self.step.bind(self.model, train)
        run, optimizer_step = self.step.run, self.stepper.step
        # autograd accumulates into .grad, so it is cleared; the other steps overwrite their buffers
        clear = () if self.step.owns_grads else self._params
        after_backward = self._after_backward if self._grad_hooks else None
        if after_backward is not None:
            self._grad_buffers = [p.grad for p in self._params] if self.step.owns_grads else []
        constant_lr = self.cfg.schedule == "constant" and self.schedule.warmup == 0
        lr = self._set_lr(self.iteration)
        offset = self.iteration % self.batches_per_epoch if evaluate else 0
        steps = self.batches_per_epoch - offset
        if evaluate:
            steps = min(steps, self.until - self.iteration)
        for b in range(steps):
            start = (offset + b) * bs
            if not constant_lr:
                lr = self._set_lr(self.iteration)
            run(perm, start, min(bs, len(train) - start))
            if after_backward is not None:
                after_backward()
            optimizer_step()
            for p in clear:
                p.grad = None
            self.iteration += 1
            if snapshot_at:
                self._snapshot(snapshots, snapshot_at)
            if evaluate and (
                self.iteration % self.eval_interval == 0 or self.iteration in (self.total, self.until)
            ):
                self._record(lr, *self._train_totals())
                self._check_mask()
            if on_progress is not None and (b % 50 == 49 or b == steps - 1):
                on_progress(self.iteration, self.total)
        loss, correct, seen = self.step.take_totals()
        if evaluate:  # carried into the next record, and into a checkpoint taken now
            p_loss, p_correct, p_seen = self._pending
            self._pending = (p_loss + loss, p_correct + correct, p_seen + seen)

    def _after_backward(self) -> None:
        """Hooks change the step's gradients; the step's own buffers stay its buffers; masks hold again."""
        for hook in self._grad_hooks:
            hook.after_backward(self.model)
        for p, buffer in zip(self._params, self._grad_buffers, strict=False):
            if p.grad is not buffer:  # a hook assigned a new tensor: the next step writes the old one
                if p.grad is None:
                    buffer.zero_()
                else:
                    buffer.copy_(p.grad)
                p.grad = buffer
        mask_gradients(self._masked)

    def _check_mask(self) -> None:
        """Invariant: pruned weights are exactly zero. A failure is a bug in prunelab, not user error."""
        for p, m in self._masked:
            if bool((p.detach()[m == 0] != 0).any()):
                raise AssertionError("a pruned weight became non-zero during training")


def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig | None = None,
    *,
    mask: Mask | None = None,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    snapshot_at: Iterable[int] = (),
    hooks: Iterable[TrainHook] | None = (),
) -> TrainResult:
    """Train ``model`` (in place) and return its metrics history."""
    trainer = Trainer(model, data, cfg or TrainConfig(epochs=1), mask=mask, seed=seed, hooks=hooks)
    return trainer.run(on_progress=on_progress, snapshot_at=snapshot_at)
