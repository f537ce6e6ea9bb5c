"""The whole training step of a Linear-ReLU chain as one C call (prunelab/native/mlp_step.c).

:class:`~prunelab.training.relu_mlp.ReluMLPStep` already skips autograd, but still issues ~30 small
tensor ops per step from Python at ~5 us each: at LeNet-300-100 sizes on a CPU that is a third of
the GEMM time again. :class:`NativeMLPStep` runs the same step (batch gather, forward, softmax
cross-entropy, backward, mask multiply) in C around the sgemm of the MKL that torch itself uses,
leaving the gradients in the same ``.grad`` buffers for the unchanged optimizer. It exists only on a
CPU where the kernel builds and torch's MKL exports sgemm, and only after it has reproduced the
torch step's loss and gradients on real data; anything else keeps the torch step.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import nn

from prunelab import native
from prunelab.data import Split
from prunelab.training.relu_mlp import ReluMLPStep

__all__ = ["NativeMLPStep"]


class _Layer(ctypes.Structure):
    """``mlp_layer`` in mlp_step.c."""

    _fields_ = [("in_features", ctypes.c_int64), ("out_features", ctypes.c_int64)] + [
        (name, ctypes.c_void_p) for name in ("w", "b", "gw", "gb", "mw", "mb", "act", "grad")
    ]


@functools.cache
def _kernel() -> ctypes._CFuncPtr | None:
    lib = native.load("mlp_step")
    if lib is None:
        return None
    fn = lib.prunelab_mlp_step
    fn.argtypes = (
        [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
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


class NativeMLPStep:
    """``step(perm, start, n)`` trains on rows ``perm[start:start+n]`` of ``train``: gradients into ``.grad``.

    Loss sum, correct predictions and examples seen accumulate in ``totals`` (float64, 3 values).
    Gradients of masked parameters are multiplied by their masks, as the torch path does after backward.
    """

    def __init__(
        self, layers: list[nn.Linear], train: Split, masks: dict[int, torch.Tensor], batch_size: int
    ) -> None:
        self.layers = layers
        # the kernel reads masks as bytes: a quarter of the memory traffic of float masks
        self._mask_bytes = {k: (m != 0).to(torch.uint8) for k, m in masks.items()}
        self.x, self.y = train.x, train.y
        self.totals = torch.zeros(3, dtype=torch.float64)
        self.batch_size = batch_size
        self._xbuf = torch.empty(batch_size, layers[0].in_features)
        self._ybuf = torch.empty(batch_size, dtype=torch.int64)
        # per layer: its output (ReLU'd or logits) and d loss / d its pre-activation
        self._scratch = [
            (torch.empty(batch_size, m.out_features), torch.empty(batch_size, m.out_features)) for m in layers
        ]
        self._table = (_Layer * len(layers))()
        self._fn, self._sgemm = _kernel(), _mkl_sgemm()
        self.bind()

    @classmethod
    def build(
        cls,
        model: nn.Module,
        train: Split,
        masks: dict[int, torch.Tensor],
        batch_size: int,
        reference: ReluMLPStep,
    ) -> NativeMLPStep | None:
        """The step, or None where the torch step ``reference`` (already checked against ``model``) must be used.

        ``masks`` maps ``id(parameter)`` to a float 0/1 tensor of its shape.
        """
        if not native.enabled() or _kernel() is None or _mkl_sgemm() is None:
            return None
        if not cls._fits(reference.layers, train, masks):
            return None
        step = cls(reference.layers, train, masks, batch_size)
        agrees = step._agrees_with(reference, min(batch_size, len(train)))
        for p in model.parameters():  # no trace of the check: bind() recreates the buffers it needs
            p.grad = None
        return step if agrees else None

    @staticmethod
    def _fits(layers: list[nn.Linear], train: Split, masks: dict[int, torch.Tensor]) -> bool:
        x, y = train.x, train.y
        tensors = [p for m in layers for p in m.parameters()] + list(masks.values()) + [x]
        if any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() for t in tensors):
            return False
        if y.dtype != torch.int64 or not y.is_contiguous() or len(x) == 0:
            return False
        if x[0].numel() != layers[0].in_features:
            return False
        classes = layers[-1].out_features
        return bool(y.min() >= 0) and bool(y.max() < classes)  # the kernel indexes logits by label

    def bind(self) -> None:
        """Point the C layer table at the current weights, gradient buffers and masks.

        Called at every epoch start, so a parameter or gradient replaced in between is picked up.
        """
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
        self._buffers = (self._xbuf.data_ptr(), self._ybuf.data_ptr(), self.totals.data_ptr())

    def __call__(self, perm: torch.Tensor, start: int, n: int) -> None:
        """One step on ``perm[start:start+n]`` (``perm``: contiguous int64 row indices, ``n`` <= batch size)."""
        if not (0 < n <= self.batch_size and start >= 0 and start + n <= len(perm)):
            raise ValueError(
                f"rows {start}:{start + n} of {len(perm)} do not fit a batch of {self.batch_size}"
            )
        self._fn(*self._fixed, perm.data_ptr() + start * perm.element_size(), n, *self._buffers)

    def _agrees_with(self, reference: ReluMLPStep, n: int) -> bool:
        """Loss and (masked) gradients of one step on the first ``n`` rows equal the torch step's."""
        self(torch.arange(n), 0, n)
        params = [p for m in self.layers for p in m.parameters()]
        ours = [p.grad.clone() for p in params]
        loss = float(self.totals[0]) / n
        self.totals.zero_()
        ref_loss, _ = reference(self.x[:n], self.y[:n])
        for p, g in zip(params, ours, strict=True):
            mask = self._mask_bytes.get(id(p))
            expected = p.grad if mask is None else p.grad * mask
            if not torch.allclose(g, expected, rtol=1e-4, atol=1e-6):
                return False
        return abs(loss - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
