"""The masked trainer: whole datasets as tensors, fused optimizers, masks enforced exactly.

Pruned weights are zero before training starts and their gradients are zeroed before every
optimizer step. With zero gradients from the start, SGD (momentum, Nesterov, weight decay), Adam and
AdamW all leave those weights at exactly zero and their optimizer state at exactly zero, so the forward
pass needs no mask multiply and a masked epoch costs the same as a dense one.

The gradients come from one of three steps (``Trainer.step_kind``): a Linear-ReLU chain such as
LeNet-300-100 takes a hand-written step, in C on a CPU (:mod:`~prunelab.training.native_mlp`) or as
torch ops elsewhere (:mod:`~prunelab.training.relu_mlp`); every other model takes autograd.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import Dataset, Split, cifar_augment
from prunelab.errors import CheckpointError, SpecError
from prunelab.pruning.mask import Mask
from prunelab.seeding import derive_seed
from prunelab.training.config import TrainConfig
from prunelab.training.device import resolve_device
from prunelab.training.fused import LeanStepper
from prunelab.training.native_mlp import NativeMLPStep
from prunelab.training.optim import build_optimizer
from prunelab.training.relu_mlp import ReluMLPStep
from prunelab.training.schedule import build_schedule

EVAL_BATCH = 1000


@dataclass(frozen=True)
class EvalRecord:
    """Metrics at one evaluation point; train metrics average the iterations since the last one."""

    iteration: int
    epoch: float
    lr: float
    train_loss: float | None
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None
    test_loss: float
    test_acc: float


@dataclass
class TrainResult:
    history: list[EvalRecord]
    iterations: int
    wall_time: float
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def final(self) -> EvalRecord:
        return self.history[-1]

    @property
    def early_stop(self) -> EvalRecord:
        """The evaluation with minimum validation loss: the lottery-ticket papers' learning-speed measure."""
        with_val = [r for r in self.history if r.val_loss is not None]
        return min(with_val, key=lambda r: r.val_loss) if with_val else self.final

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
        }


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
    for i in range(0, len(split), batch_size):
        xb, yb = split.x[i : i + batch_size], split.y[i : i + batch_size]
        out = model(xb).float()
        loss += F.cross_entropy(out, yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(1, len(split))
    return float(loss) / n, float(correct) / n


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
    if out.dim() != 2 or out.shape[1] != data.info.num_classes:
        raise SpecError(
            f"the model outputs shape {tuple(out.shape[1:])} per example but {data.info.name} has "
            f"{data.info.num_classes} classes; build it with num_classes={data.info.num_classes}"
        )


class _Window:
    """Training loss and accuracy since the last evaluation, reduced only when read.

    Keeping references costs nothing per step; one batched reduction per evaluation replaces
    several tiny tensor ops per step.
    """

    def __init__(self, totals: torch.Tensor | None = None) -> None:
        self.losses: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        # (loss sum, correct, examples) accumulated by the native step, read and zeroed here
        self.totals = totals
        if totals is not None:
            totals.zero_()

    def add(self, loss: torch.Tensor, out: torch.Tensor, target: torch.Tensor) -> None:
        self.losses.append(loss.detach())
        self.outputs.append(out.detach())
        self.targets.append(target)

    def flush(self) -> tuple[float, float, int]:
        """(summed loss, correct predictions, examples) since the last flush."""
        loss_sum, correct, seen = 0.0, 0.0, 0
        if self.totals is not None:
            loss_sum, correct, seen = self.totals.tolist()
            seen = int(seen)
        if self.losses:
            sizes = torch.tensor([len(t) for t in self.targets], dtype=torch.float64)
            loss_sum += float(torch.stack(self.losses).double().cpu() @ sizes)
            correct += float((torch.cat(self.outputs).argmax(1) == torch.cat(self.targets)).sum())
            seen += int(sizes.sum())
        self.__init__(self.totals)
        return loss_sum, correct, seen


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
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.bf16 and self.device.type != "cuda":
            raise SpecError(
                "bf16 autocast is a GPU option; it needs --device cuda (or auto on a GPU machine)"
            )
        self.data = data.to(self.device)
        self.model = model.to(self.device)
        _check_fits_data(self.model, self.data)
        self.mask = mask
        if mask is not None:
            mask.apply(self.model)  # checks that the mask fits
        self.seed = seed
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "data-order"))
        self.rng_state = torch.Generator().manual_seed(derive_seed(seed, "dropout")).get_state()
        self.optimizer = build_optimizer(self.model.parameters(), cfg, self.device)
        self.stepper = LeanStepper(self.optimizer)
        self.batches_per_epoch = -(-len(self.data.train) // cfg.batch_size)
        self.total = cfg.total_iterations(self.batches_per_epoch)
        self.eval_interval = cfg.eval_interval(self.batches_per_epoch)
        self.schedule = build_schedule(cfg, self.batches_per_epoch)
        self.augment = data.info.augment if cfg.augment is None else cfg.augment
        self.iteration = 0
        self.history: list[EvalRecord] = []
        self.wall_time = 0.0
        self.until = self.total
        self._masked = self._mask_pairs()
        self._params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # a plain Linear-ReLU chain trains without autograd's bookkeeping (same gradients, see relu_mlp)
        self._fast = None if cfg.bf16 else ReluMLPStep.build(self.model, self.data.train.x[:16])
        # on a CPU, the same step as one C call around MKL's sgemm (see native_mlp)
        self._native = None
        if self._fast is not None and not self.augment:
            masks = {id(p): m for p, m in self._masked}
            self._native = NativeMLPStep.build(self.model, self.data.train, masks, cfg.batch_size, self._fast)

    @property
    def step_kind(self) -> str:
        """Which training step runs: "native" (C), "relu-mlp" (torch ops, no autograd) or "autograd"."""
        return "native" if self._native else "relu-mlp" if self._fast else "autograd"

    # ---------------------------------------------------------------------------------------
    def _mask_pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        if self.mask is None:
            return []
        params = dict(self.model.named_parameters())
        return [
            (params[n], m.to(self.device, params[n].dtype)) for n, m in self.mask.items() if not bool(m.all())
        ]

    def _set_lr(self, it: int) -> float:
        lr = self.cfg.lr * self.schedule.factor(it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, optimizer, RNG states, history."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "generator": self.generator.get_state(),
            "rng": self.rng_state,
            "history": [asdict(r) for r in self.history],
            "wall_time": self.wall_time,
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.stepper.invalidate()
            self.iteration = int(state["iteration"])
            self.generator.set_state(state["generator"])
            self.rng_state = state["rng"]
            self.history = [EvalRecord(**r) for r in state["history"]]
            self.wall_time = float(state["wall_time"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"training checkpoint does not fit this run: {exc}") from None

    # ---------------------------------------------------------------------------------------
    def _record(self, lr: float, train_loss: float, correct: float, seen: int) -> None:
        val_loss = val_acc = None
        if len(self.data.val):
            val_loss, val_acc = evaluate(self.model, self.data.val)
        test_loss, test_acc = evaluate(self.model, self.data.test)
        self.history.append(
            EvalRecord(
                iteration=self.iteration,
                epoch=self.iteration / self.batches_per_epoch,
                lr=lr,
                train_loss=float(train_loss) / seen if seen else None,
                train_acc=float(correct) / seen if seen else None,
                val_loss=val_loss,
                val_acc=val_acc,
                test_loss=test_loss,
                test_acc=test_acc,
            )
        )

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
        the LR schedule is read at that iteration and the first epoch is the rest of one.
        """
        snapshot_at = set(snapshot_at)
        self.until = self.total if until is None else min(until, self.total)
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
            while self.iteration < self.until:
                start = time.perf_counter()
                self._epoch(snapshots, snapshot_at, on_progress)
                self.rng_state = torch.get_rng_state()
                self.wall_time += time.perf_counter() - start
                if on_epoch_end is not None:
                    on_epoch_end(self)
        return TrainResult(self.history, self.iteration, self.wall_time, snapshots)

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
        train, bs, device = self.data.train, self.cfg.batch_size, self.device
        perm = torch.randperm(len(train), generator=self.generator).to(device)
        step, fast, native, params = self.stepper.step, self._fast, self._native, self._params
        if native is not None:
            native.bind()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cfg.bf16 else nullcontext()
        constant_lr = self.cfg.schedule == "constant" and self.schedule.warmup == 0
        lr = self._set_lr(self.iteration)
        window = _Window(None if native is None else native.totals)
        offset = self.iteration % self.batches_per_epoch if evaluate else 0
        steps = self.batches_per_epoch - offset
        if evaluate:
            steps = min(steps, self.until - self.iteration)
        for b in range(steps):
            start = (offset + b) * bs
            if not constant_lr:
                lr = self._set_lr(self.iteration)
            if native is not None:  # gathers the batch, masks the gradients, counts into the window
                native(perm, start, min(bs, len(train) - start))
            else:
                self._torch_step(perm[start : start + bs], window, autocast)
            step()
            if fast is None and native is None:  # the fast paths overwrite their gradient buffers instead
                for p in params:
                    p.grad = None
            self.iteration += 1
            if snapshot_at:
                self._snapshot(snapshots, snapshot_at)
            if evaluate and (
                self.iteration % self.eval_interval == 0 or self.iteration in (self.total, self.until)
            ):
                self._record(lr, *window.flush())
                self._check_mask()
            if on_progress is not None and (b % 50 == 49 or b == steps - 1):
                on_progress(self.iteration, self.total)

    def _torch_step(self, idx: torch.Tensor, window: _Window, autocast) -> None:
        """Gradients of the batch ``idx`` into ``.grad`` through torch (the ReLU-chain step or autograd), masked."""
        train = self.data.train
        xb, yb = train.x.index_select(0, idx), train.y.index_select(0, idx)
        if self.augment:
            xb = cifar_augment(xb, self.generator)
        if self._fast is not None:
            loss, out = self._fast(xb, yb)
        else:
            with autocast:
                out = self.model(xb)
                loss = F.cross_entropy(out.float(), yb)
            loss.backward()
        if self._masked:
            pairs = [(p.grad, m) for p, m in self._masked if p.grad is not None]
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])
        window.add(loss, out, yb)

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
) -> TrainResult:
    """Train ``model`` (in place) and return its metrics history."""
    trainer = Trainer(model, data, cfg or TrainConfig(epochs=1), mask=mask, seed=seed)
    return trainer.run(on_progress=on_progress, snapshot_at=snapshot_at)
