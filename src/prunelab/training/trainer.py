"""The masked trainer: whole datasets as tensors, fused optimizers, masks enforced exactly.

Pruned weights are zero before training starts and their gradients are zeroed before every
optimizer step. With zero gradients from the start, SGD (momentum, Nesterov, weight decay), Adam and
AdamW all leave those weights at exactly zero and their optimizer state at exactly zero, so the forward
pass needs no mask multiply and a masked epoch costs the same as a dense one.

:meth:`Trainer.run` is the loop, to be read top to bottom: epochs of steps, an evaluation every
``eval_every``, the hooks' epoch-end decisions, then the test split. The gradients come from one
:class:`~prunelab.training.step.Step`, chosen once by :func:`~prunelab.training.step.choose_step`
(``Trainer.step_kind``: "native", "relu-mlp" or "autograd"). Training hooks
(:class:`~prunelab.training.hooks.TrainHook`, registered ones are
:class:`~prunelab.training.plugins.TrainPlugin`) add loss terms, change gradients, stop training
early, and swap layers for training-time variants that are converted back at the end; the trainer's
own bookkeeping is hooks too (:mod:`~prunelab.training.callbacks`): the best-validation weights, and
the checkpoint at each epoch end.

Evaluation follows the lottery-ticket papers: the validation split every ``eval_every`` (default 100
iterations), a copy of the weights at the minimum validation loss so far, and the test split only at
the end of training, twice: on the final weights and on that copy. So ``TrainResult.final`` and
``TrainResult.early_stop`` carry test metrics and the other records do not (``None``). The initial
record (iteration 0, or the start of a late-rewound run) has validation metrics only: a test pass
there would cost as much as any other and answer no question the results ask. Without a validation
split there is nothing to select on: the early stop is the final record, tested once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, replace

import torch
from torch import nn

from prunelab.data import Dataset, Split
from prunelab.errors import CheckpointError, SpecError, TrainingDiverged
from prunelab.pruning.mask import Mask
from prunelab.seeding import derive_seed
from prunelab.training.callbacks import BestWeights, EpochEnd
from prunelab.training.config import TrainConfig
from prunelab.training.device import resolve_device
from prunelab.training.evaluation import EVAL_BATCH, choose_evaluator, evaluate
from prunelab.training.fused import LeanStepper
from prunelab.training.hooks import TrainHook
from prunelab.training.inputs import check_accepts
from prunelab.training.optim import build_optimizer
from prunelab.training.results import EvalRecord, TrainResult
from prunelab.training.schedule import build_schedule
from prunelab.training.step import choose_step, mask_gradients

__all__ = ["CHECKPOINT_FORMAT", "EVAL_BATCH", "EvalRecord", "TrainResult", "Trainer", "evaluate", "train"]

#: Version of :meth:`Trainer.state_dict`'s layout. 2: best-validation weights, pending train totals,
#: early-stop reason and hook states; test metrics only at the end.
CHECKPOINT_FORMAT = 2


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
        self.cfg, self.seed, self.mask = cfg, seed, mask
        self.device = _device(cfg)
        self.hooks = [*_checked(hooks), *cfg.plugin_hooks()]
        self.data = data.to(self.device)
        self.model = self._prepared(model.to(self.device))
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "data-order"))
        self.rng_state = torch.Generator().manual_seed(derive_seed(seed, "dropout")).get_state()
        self.optimizer = build_optimizer(self.model.parameters(), cfg, self.device)
        self.stepper = LeanStepper(self.optimizer)
        self.batches_per_epoch = -(-len(self.data.train) // cfg.batch_size)
        self.total = cfg.total_iterations(self.batches_per_epoch)
        self.eval_interval = cfg.eval_interval(self.batches_per_epoch)
        self.schedule = _schedule(cfg, self.batches_per_epoch, self.total)
        self.iteration, self.until, self.wall_time = 0, self.total, 0.0
        self.history: list[EvalRecord] = []
        self.stopped_early: str | None = None  # the reason a hook stopped training (checkpointed)
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
        self.best = BestWeights(self)
        self.callbacks: list[TrainHook] = [self.best]

    def _prepared(self, model: nn.Module) -> nn.Module:
        """The model to train: checked against the data, masked, checked and swapped by the hooks
        (training-time variants, converted back by their ``restore`` after :meth:`run`)."""
        example = self.data.train.x[:1]
        check_accepts(
            model, example, self.data.info, hint=f"; build it with input_shape={self.data.info.input_shape}",
            classes_hint=f"; build it with num_classes={self.data.info.num_classes}",
            targets=tuple(self.data.train.y.shape[1:]),
        )  # fmt: skip
        if self.mask is not None:
            self.mask.apply(model)  # checks that the mask fits
        for hook in self.hooks:
            hook.check(model, example)
        for hook in self.hooks:
            model = hook.swap(model).to(self.device)
        self._swapped, self._restored = any(h.swaps_layers for h in self.hooks), False
        return model

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

    # the loop ------------------------------------------------------------------------------------
    def run(
        self,
        *,
        on_epoch_end: Callable[[Trainer], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        snapshot_at: Iterable[int] = (),
        until: int | None = None,
        callbacks: Iterable[TrainHook] = (),
    ) -> TrainResult:
        """Train to the configured length (or stop at iteration ``until``).

        ``callbacks`` are hooks run after the trainer's own (a
        :class:`~prunelab.training.callbacks.Checkpoint` writes the state at each epoch end);
        ``on_epoch_end(trainer)`` is the shorthand for one. A trainer whose ``iteration`` was set
        before the first run starts there (late rewinding): the LR schedule is read at that iteration
        and the first epoch is the rest of one. Hooks' ``on_epoch_end`` run before the callbacks', so
        a checkpoint written there holds their decision. At the end, hooks that swapped layers
        convert the model back (``self.model`` is then the plain model and ``TrainResult.mask`` what
        they pruned), so such a trainer runs once.
        """
        if self._restored:
            raise RuntimeError("this trainer's hooks converted its layers back after its run; build another")
        extra = [*callbacks, *([EpochEnd(on_epoch_end)] if on_epoch_end is not None else [])]
        listeners = [*self.hooks, *self.callbacks, *extra]
        snapshot_at, snapshots = set(snapshot_at), {}
        self.until = self.total if until is None else min(until, self.total)
        for hook in listeners:
            hook.start(self)
        torch.set_flush_denormal(True)  # subnormal floats make CPU kernels 10-100x slower
        with self._random_state():
            self.model.train()
            if not self.history:  # where training starts: the weights as they are, validated
                self._snapshot(snapshots, snapshot_at)
                self._record(self._set_lr(self.iteration), 0.0, 0.0, 0, listeners)
            while self.iteration < self.until and self.stopped_early is None:
                start = time.perf_counter()
                self._epoch(snapshots, snapshot_at, on_progress, listeners)
                self._check_finite()
                for hook in self.hooks:  # every hook sees every epoch end; the first reason wins
                    reason = hook.on_epoch_end(self)
                    if reason and self.stopped_early is None:
                        self.stopped_early = str(reason)
                self.rng_state = torch.get_rng_state()
                self.wall_time += time.perf_counter() - start
                for callback in [*self.callbacks, *extra]:
                    callback.on_epoch_end(self)
            start = time.perf_counter()
            self._finish(listeners)
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

    def _epoch(
        self, snapshots: dict, snapshot_at: set[int], on_progress, listeners, evaluate: bool = True
    ) -> None:
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
                self._record(lr, *self._train_totals(), listeners)
                self._check_mask()
            if on_progress is not None and (b % 50 == 49 or b == steps - 1):
                on_progress(self.iteration, self.total)
        loss, correct, seen = self.step.take_totals()
        if evaluate:  # carried into the next record, and into a checkpoint taken now
            p_loss, p_correct, p_seen = self._pending
            self._pending = (p_loss + loss, p_correct + correct, p_seen + seen)

    def _record(self, lr: float, train_loss: float, correct: float, seen: int, listeners) -> None:
        """A history record at the current iteration, with validation metrics; the listeners see it."""
        if seen and not math.isfinite(train_loss):
            raise self._diverged("training loss", train_loss / seen)
        val_loss = val_acc = None
        if len(self.data.val):
            val_loss, val_acc = self.evaluator(self.data.val)
            if not math.isfinite(val_loss):
                raise self._diverged("validation loss", val_loss)
        record = EvalRecord(
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
        self.history.append(record)
        for hook in listeners:
            hook.on_record(self, record)

    def _finish(self, listeners) -> None:
        """End of training: a record at the last iteration, the test split on the final weights, and
        the listeners' end (the best-validation copy tested). Repeatable: a resumed run that only
        finishes gets the same numbers."""
        if self.history[-1].iteration != self.iteration:  # stopped by a hook between evaluation points
            self._record(self.optimizer.param_groups[0]["lr"], *self._train_totals(), listeners)
        test_loss, test_acc = self.evaluator(self.data.test)
        self.history[-1] = replace(self.history[-1], test_loss=test_loss, test_acc=test_acc)
        for hook in listeners:
            hook.on_finish(self)
        self._check_mask()

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

    # one step's parts ----------------------------------------------------------------------------
    def _set_lr(self, it: int) -> float:
        lr = self.cfg.lr * self.schedule.factor(it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

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

    def _train_totals(self) -> tuple[float, float, int]:
        """(summed loss, correct, examples) since the last evaluation, across epoch ends."""
        loss, correct, seen = self.step.take_totals()
        p_loss, p_correct, p_seen = self._pending
        self._pending = (0.0, 0.0, 0)
        return p_loss + loss, p_correct + correct, p_seen + seen

    def _snapshot(self, snapshots: dict, wanted: set[int]) -> None:
        if self.iteration in wanted:
            snapshots[self.iteration] = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }

    def train_epoch(self) -> None:
        """One epoch of optimisation only, no evaluation (what the speed benchmark times)."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            self._epoch({}, set(), None, [], evaluate=False)
            self.rng_state = torch.get_rng_state()

    @contextlib.contextmanager
    def _random_state(self) -> Iterator[None]:
        """The global RNG at this trainer's state for the duration (dropout draws from it)."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.rng_state)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(derive_seed(self.seed, "dropout-cuda") + self.iteration)
            yield

    # checks --------------------------------------------------------------------------------------
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

    def _check_mask(self) -> None:
        """Invariant: pruned weights are exactly zero. A failure is a bug in prunelab, not user error."""
        for p, m in self._masked:
            if bool((p.detach()[m == 0] != 0).any()):
                raise AssertionError("a pruned weight became non-zero during training")

    # checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly, taken at an epoch end (a
        :class:`~prunelab.training.callbacks.Checkpoint` writes it): weights, optimizer, RNG states,
        history, the train totals not yet recorded, each keyed callback's state (the best-validation
        weights), the early-stop reason, and each hook's state (in hook order)."""
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
            **{c.key: c.state_dict() for c in self.callbacks if getattr(c, "key", None)},
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
            for callback in self.callbacks:
                if getattr(callback, "key", None):
                    callback.load_state_dict(state[callback.key])
            reason = state["stopped_early"]
            self.stopped_early = None if reason is None else str(reason)
            for hook, hook_state in zip(self.hooks, hooks, strict=True):
                hook.load_state_dict(hook_state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"training checkpoint does not fit this run: {exc}") from None


def _device(cfg: TrainConfig) -> torch.device:
    device = resolve_device(cfg.device)
    if cfg.bf16 and device.type != "cuda":
        raise SpecError("bf16 autocast is a GPU option; it needs --device cuda (or auto on a GPU machine)")
    return device


def _schedule(cfg: TrainConfig, batches_per_epoch: int, total: int):
    schedule = build_schedule(cfg, batches_per_epoch)
    if schedule.warmup > total:
        raise SpecError(
            f"warmup {cfg.warmup} is {schedule.warmup:,} iterations, longer than the training "
            f"({total:,} iterations): the learning rate would never reach {cfg.lr:g}"
        )
    return schedule


def _checked(hooks: Iterable[TrainHook] | None) -> list[TrainHook]:
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
