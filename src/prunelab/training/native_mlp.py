"""The whole training step of a Linear-ReLU chain as one C call (prunelab/native/mlp_step.c), and its
forward-only evaluation of a whole split.

:class:`~prunelab.training.relu_mlp.ReluChain` already skips autograd, but still issues ~30 small
tensor ops per step from Python at ~5 us each: at LeNet-300-100 sizes on a CPU that is a third of
the GEMM time again. :class:`NativeMLPStep` runs the same step (batch gather, forward, softmax
cross-entropy, backward, mask multiply) in C around the sgemm of the MKL that torch itself uses,
leaving the gradients in the same ``.grad`` buffers for the unchanged optimizer. It exists only on a
CPU where the kernel builds and torch's MKL exports sgemm, and only after it has reproduced the
torch step's loss and gradients on real data; anything else keeps the torch step.

:class:`NativeMLPEval` is the evaluation counterpart: summed loss and correct predictions over a
split in chunks of thousands of rows, with no logits, log-softmax or argmax tensors made in between.
Evaluating 5,000 validation images every 100 iterations (as the lottery-ticket papers do) would
otherwise cost about a third of LeNet-300-100's training time.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunelab import native
from prunelab.data import Split
from prunelab.training.relu_mlp import ReluChain, relu_chain

__all__ = ["NativeMLPEval", "NativeMLPStep"]


class _Layer(ctypes.Structure):
    """``mlp_layer`` in mlp_step.c."""

    _fields_ = [("in_features", ctypes.c_int64), ("out_features", ctypes.c_int64)] + [
        (name, ctypes.c_void_p) for name in ("w", "b", "gw", "gb", "mw", "mb", "act", "grad")
    ]


@functools.cache
def _library() -> ctypes.CDLL | None:
    return native.load("mlp_step")


@functools.cache
def _kernel() -> ctypes._CFuncPtr | None:
    """``prunelab_mlp_step``: one training step."""
    lib = _library()
    if lib is None:
        return None
    fn = lib.prunelab_mlp_step
    fn.argtypes = (
        [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
    )
    fn.restype = None
    return fn


@functools.cache
def _eval_kernel() -> ctypes._CFuncPtr | None:
    """``prunelab_mlp_eval``: summed loss and correct predictions over rows, in chunks."""
    lib = _library()
    if lib is None:
        return None
    fn = lib.prunelab_mlp_eval
    fn.argtypes = (
        [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p]
    )
    fn.restype = None
    return fn


@functools.cache
def _mkl_sgemm() -> int | None:
    """Address of the Fortran-interface ``sgemm_`` of the MKL linked into torch, if it exports one."""
    if not torch.backends.mkl.is_available():
        return None
    for path in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*")):
        try:
            return ctypes.cast(ctypes.CDLL(str(path)).sgemm_, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _fits(layers: list[nn.Linear], split: Split, masks: dict[int, torch.Tensor] | None = None) -> bool:
    """Whether the kernel can read ``split`` and ``layers``: contiguous float32 CPU tensors, int64 labels
    that index the logits (the kernel does not check them), inputs of the first layer's width."""
    x, y = split.x, split.y
    tensors = [p for m in layers for p in m.parameters()] + list((masks or {}).values()) + [x]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() for t in tensors):
        return False
    if y.dtype != torch.int64 or not y.is_contiguous() or len(x) == 0:
        return False
    if x[0].numel() != layers[0].in_features:
        return False
    classes = layers[-1].out_features
    return bool(y.min() >= 0) and bool(y.max() < classes)


class NativeMLPStep:
    """The ``"native"`` :class:`~prunelab.training.step.Step`: ``run(perm, start, n)`` trains on rows
    ``perm[start:start+n]`` of the bound split, gradients into ``.grad`` (overwritten: ``owns_grads``).

    Loss sum, correct predictions and examples seen accumulate in a float64 tensor of 3 values that
    :meth:`take_totals` reads and zeroes. Gradients of masked parameters are multiplied by their
    masks, as the torch steps do after backward.
    """

    kind = "native"
    owns_grads = True

    def __init__(
        self, layers: list[nn.Linear], train: Split, masks: dict[int, torch.Tensor], batch_size: int
    ) -> None:
        self.layers = layers
        # the kernel reads masks as bytes: a quarter of the memory traffic of float masks
        self._mask_bytes = {k: (m != 0).to(torch.uint8) for k, m in masks.items()}
        self.x, self.y = train.x, train.y
        self._totals = torch.zeros(3, dtype=torch.float64)
        self.batch_size = batch_size
        self._xbuf = torch.empty(batch_size, layers[0].in_features)
        self._ybuf = torch.empty(batch_size, dtype=torch.int64)
        # per layer: its output (ReLU'd or logits) and d loss / d its pre-activation
        self._scratch = [
            (torch.empty(batch_size, m.out_features), torch.empty(batch_size, m.out_features)) for m in layers
        ]
        self._table = (_Layer * len(layers))()
        self._fn, self._sgemm = _kernel(), _mkl_sgemm()
        self._point()

    @classmethod
    def build(
        cls,
        model: nn.Module,
        train: Split,
        masks: dict[int, torch.Tensor],
        batch_size: int,
        reference: ReluChain,
    ) -> NativeMLPStep | None:
        """The step, or None where the torch chain ``reference`` (already checked against ``model``) must be used.

        ``masks`` maps ``id(parameter)`` to a float 0/1 tensor of its shape.
        """
        if not native.enabled() or _kernel() is None or _mkl_sgemm() is None:
            return None
        if not _fits(reference.layers, train, masks):
            return None
        step = cls(reference.layers, train, masks, batch_size)
        agrees = step._agrees_with(reference, min(batch_size, len(train)))
        for p in model.parameters():  # no trace of the check: bind() recreates the buffers it needs
            p.grad = None
        return step if agrees else None

    def bind(self, model: nn.Module, train: Split) -> None:
        """Point the C layer table at ``model``'s current weights, gradient buffers and masks, and at ``train``.

        Called at every epoch start, so a parameter, gradient or split replaced in between is picked up.
        """
        layers = relu_chain(model)
        if layers is None or [(m.in_features, m.out_features) for m in layers] != [
            (m.in_features, m.out_features) for m in self.layers
        ]:
            raise ValueError("NativeMLPStep was bound to a model that is not its Linear-ReLU chain")
        if (train.x is not self.x or train.y is not self.y) and not _fits(layers, train):
            raise ValueError("NativeMLPStep was bound to a split the kernel cannot read")
        self.layers, self.x, self.y = layers, train.x, train.y
        self._point()

    def _point(self) -> None:
        for entry, layer, (act, grad) in zip(self._table, self.layers, self._scratch, strict=True):
            for p in layer.parameters():
                if p.grad is None or p.grad.shape != p.shape or not p.grad.is_contiguous():
                    p.grad = torch.zeros_like(p)
            bias = layer.bias
            entry.in_features, entry.out_features = layer.in_features, layer.out_features
            entry.w, entry.gw = layer.weight.data_ptr(), layer.weight.grad.data_ptr()
            entry.b, entry.gb = _ptr(bias), _ptr(None if bias is None else bias.grad)
            entry.mw = _ptr(self._mask_bytes.get(id(layer.weight)))
            entry.mb = _ptr(None if bias is None else self._mask_bytes.get(id(bias)))
            entry.act, entry.grad = act.data_ptr(), grad.data_ptr()
        # the arguments that stay fixed between binds, resolved once rather than at every step
        self._fixed = (
            self._sgemm,
            len(self.layers),
            ctypes.addressof(self._table),
            self.x.data_ptr(),
            self.y.data_ptr(),
        )
        self._buffers = (self._xbuf.data_ptr(), self._ybuf.data_ptr(), self._totals.data_ptr())

    def run(self, perm: torch.Tensor, start: int, n: int) -> None:
        """One step on ``perm[start:start+n]`` (``perm``: contiguous int64 row indices, ``n`` <= batch size)."""
        if not (0 < n <= self.batch_size and start >= 0 and start + n <= len(perm)):
            raise ValueError(
                f"rows {start}:{start + n} of {len(perm)} do not fit a batch of {self.batch_size}"
            )
        self._fn(*self._fixed, perm.data_ptr() + start * perm.element_size(), n, *self._buffers)

    def take_totals(self) -> tuple[float, float, int]:
        loss_sum, correct, seen = self._totals.tolist()
        self._totals.zero_()
        return loss_sum, correct, int(seen)

    def _agrees_with(self, reference: ReluChain, n: int) -> bool:
        """Loss and (masked) gradients of one step on the first ``n`` rows equal the torch chain's."""
        self.run(torch.arange(n), 0, n)
        params = [p for m in self.layers for p in m.parameters()]
        ours = [p.grad.clone() for p in params]
        loss = self.take_totals()[0] / n
        ref_loss, _ = reference(self.x[:n], self.y[:n])
        for p, g in zip(params, ours, strict=True):
            mask = self._mask_bytes.get(id(p))
            expected = p.grad if mask is None else p.grad * mask
            if not torch.allclose(g, expected, rtol=1e-4, atol=1e-6):
                return False
        return abs(loss - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))


class NativeMLPEval:
    """``loss_sum, correct = evaluate(split)`` for a Linear-ReLU chain on a CPU, through ``prunelab_mlp_eval``.

    Rows go through the chain in chunks of at most ``chunk`` (its activation buffers hold one chunk:
    at LeNet-300-100 sizes ~4 MB for 2,500 rows), so the GEMMs are large and the per-op overhead
    is paid once per chunk, not once per thousand rows and op. Only the weights are read; the model
    may be in any mode (a pure chain has nothing that differs between train and eval).
    """

    kind = "native"

    def __init__(self, layers: list[nn.Linear], chunk: int) -> None:
        self.layers, self.chunk = layers, chunk
        self._acts = [torch.empty(chunk, m.out_features) for m in layers]
        self._table = (_Layer * len(layers))()
        self._totals = torch.zeros(3, dtype=torch.float64)
        self._fn, self._sgemm = _eval_kernel(), _mkl_sgemm()

    @classmethod
    def build(cls, model: nn.Module, probe: Split, chunk: int) -> NativeMLPEval | None:
        """The evaluator, or None where torch must evaluate: no kernel or MKL here, not a Linear-ReLU
        chain, data the kernel cannot read, or results on ``probe`` that differ from the model's own
        (logits within float rounding, the same summed loss, correct predictions of those logits)."""
        if not native.enabled() or _eval_kernel() is None or _mkl_sgemm() is None:
            return None
        layers = relu_chain(model)
        if layers is None or len(probe) == 0 or not _fits(layers, probe):
            return None
        params = list(model.parameters())
        if {id(p) for p in params} != {id(p) for m in layers for p in m.parameters()}:
            return None  # parameters outside the chain: its forward would not be the model's
        n = min(len(probe), chunk, 256)
        head = Split(probe.x[:n], probe.y[:n])
        step = cls(layers, chunk)
        ours = step.sums(head)
        if ours is None:
            return None
        ours_loss, ours_correct = ours
        logits = step._acts[-1][:n]
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                expected = model(head.x).float()
        finally:
            model.train(was_training)
        ref_loss = float(F.cross_entropy(expected, head.y, reduction="sum"))
        if expected.shape != logits.shape or not torch.allclose(logits, expected, rtol=1e-4, atol=1e-5):
            return None
        if ours_correct != int((logits.argmax(1) == head.y).sum()):
            return None
        return step if abs(ours_loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)) else None

    def sums(self, split: Split) -> tuple[float, int] | None:
        """(summed cross-entropy, correct predictions) over ``split``, or None where the kernel cannot read it."""
        if len(split) == 0:
            return 0.0, 0
        if not _fits(self.layers, split):
            return None
        x = split.x.reshape(len(split), -1)
        for entry, layer, act in zip(self._table, self.layers, self._acts, strict=True):
            # read at every call: parameters replaced since the last one are picked up
            entry.in_features, entry.out_features = layer.in_features, layer.out_features
            entry.w, entry.b = layer.weight.data_ptr(), _ptr(layer.bias)
            entry.act = act.data_ptr()
        self._totals.zero_()
        self._fn(
            self._sgemm,
            len(self.layers),
            ctypes.addressof(self._table),
            x.data_ptr(),
            split.y.data_ptr(),
            len(split),
            self.chunk,
            self._totals.data_ptr(),
        )
        loss_sum, correct, _ = self._totals.tolist()
        return loss_sum, int(correct)
