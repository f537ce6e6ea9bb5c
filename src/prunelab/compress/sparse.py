"""Sparse execution of unstructured masks: CSR layers, kept only where they beat dense ones.

Zeros in a dense weight cost as much as any other value (paper 004), so unstructured sparsity only
pays with a sparse kernel. :class:`SparseLinear` multiplies a CSR weight by the transposed input
(MKL's sparse x dense product on CPU) and returns a transposed view, so that a chain of sparse
layers passes activations along without copying. :class:`SparseConv2d` does the same on im2col
columns; it rarely wins, so like every swap it is kept only where timing at the requested batch
size says so. 2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``) needs a
CUDA GPU of compute capability 8.0 or newer, fp16, and a mask with at most 2 kept weights in every
4 consecutive inputs.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.compress import native
from prunelab.errors import PrunelabError
from prunelab.pruning.mask import Mask


def _csr(weight: torch.Tensor) -> torch.Tensor:
    """A 2-D weight as CSR with int32 indices (what MKL takes without converting)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        csr = weight.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().int(), csr.col_indices().int(), csr.values(), size=csr.shape
        )


class SparseLinear(nn.Module):
    """``nn.Linear`` for inference with a CSR weight: work proportional to the kept weights.

    On a CPU it runs prunelab's own kernel (:mod:`prunelab.compress.native`) where that could be
    built, else MKL's sparse product on the transposed input, returning a transposed view so that a
    chain of such layers passes activations along without copying. Inputs that need gradients also
    take the MKL path.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", _csr(linear.weight), persistent=False)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.native = native.csr_kernel() is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if self.native and self._native_fits(flat):
            w = self.weight
            out = native.csr_linear(
                w.crow_indices(), w.col_indices(), w.values(), self.bias, flat.contiguous(), self.out_features
            )
        else:
            xt = flat.t()
            if not xt.is_contiguous():
                xt = xt.contiguous()
            out = (
                torch.sparse.mm(self.weight, xt)
                if self.bias is None
                else torch.addmm(self.bias[:, None], self.weight, xt)
            ).t()  # a view: the next SparseLinear gets its transposed input for free
        return out if len(lead) == 1 else out.reshape(*lead, self.out_features)

    def _native_fits(self, x: torch.Tensor) -> bool:
        grad = torch.is_grad_enabled() and x.requires_grad
        return x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.is_cpu and not grad


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (groups 1, zero padding) as CSR weight x im2col columns, for inference."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.register_buffer("weight", _csr(conv.weight.flatten(1)), persistent=False)
        bias = conv.bias.detach().clone()[:, None] if conv.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (n, c*k*k, l)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)
        out = (
            torch.sparse.mm(self.weight, cols)
            if self.bias is None
            else torch.addmm(self.bias, self.weight, cols)
        )
        size = [
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(
                (h, w), self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        ]
        return out.reshape(self.out_channels, n, *size).transpose(0, 1)


def semi_structured_support(device: torch.device | str | None = None) -> str | None:
    """None if 2:4 semi-structured sparsity can run here, else why not."""
    if not torch.cuda.is_available():
        return "2:4 semi-structured sparsity needs a CUDA GPU; none is available"
    index = torch.device(device or "cuda").index or 0
    if torch.cuda.get_device_capability(index) < (8, 0):
        return "2:4 semi-structured sparsity needs a GPU of compute capability 8.0 (Ampere) or newer"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return "this torch build has no torch.sparse.to_sparse_semi_structured"
    return None


def is_2_4(keep: torch.Tensor) -> bool:
    """Whether at most 2 of every 4 consecutive inputs of each row are kept."""
    flat = keep.flatten(1)
    return flat.shape[1] % 4 == 0 and bool((flat.reshape(flat.shape[0], -1, 4).sum(2) <= 2).all())


class SemiStructuredLinear(nn.Module):
    """``nn.Linear`` in fp16 with a 2:4 semi-structured weight (sparse tensor cores); float32 out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().half()
        self.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(weight), requires_grad=False)
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().half(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.half(), self.weight, self.bias).float()


@dataclass(frozen=True)
class LayerChoice:
    """What :func:`sparsify` decided for one layer, with the timings it decided on."""

    layer: str
    kind: str
    sparsity: float
    dense_ms: float | None
    sparse_ms: float | None
    used: bool


@dataclass
class SparseResult:
    model: nn.Module
    choices: list[LayerChoice]
    max_error: float

    @property
    def used(self) -> list[str]:
        return [c.layer for c in self.choices if c.used]


def _time_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def _inputs(
    net: nn.Module, names: list[str], x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``net(x)`` and what each named layer received, in the order the layers ran."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        net.get_submodule(name).register_forward_pre_hook(
            lambda mod, args, name=name: seen.setdefault(name, args[0])
        )
        for name in names
    ]
    try:
        out = net(x)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def _eligible(m: nn.Module, conv: bool) -> bool:
    if isinstance(m, nn.Linear):
        return True
    plain = isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
    return conv and plain and isinstance(m.padding, tuple)


@torch.inference_mode()
def sparsify(
    model: nn.Module,
    example_input: torch.Tensor,
    mask: Mask | None = None,
    *,
    min_sparsity: float = 0.5,
    conv: bool = True,
    semi_structured: bool = False,
    repeats: int = 10,
    margin: float = 0.95,
    force: bool = False,
) -> SparseResult:
    """A copy of ``model`` (masked) whose sparse enough layers run sparse where that is faster.

    Layers at least ``min_sparsity`` sparse (linear; conv too with ``conv``) are decided one by one
    in the order they run: each is timed dense and sparse on the input it receives in the network
    as decided so far, at ``example_input``'s batch size, and the sparse one replaces it when it
    takes under ``margin`` of the dense time (``force``: always, for tests). ``semi_structured``
    uses 2:4 fp16 linear layers instead of CSR (CUDA only; refused elsewhere). The result's outputs
    are checked against the masked model's.
    """
    if semi_structured and (why := semi_structured_support(example_input.device)):
        raise PrunelabError(why)
    mask = mask if mask is not None else Mask.from_model_zeros(model)
    net = copy.deepcopy(model).eval()
    mask.apply(net)
    names = [n for n, m in net.named_modules() if _eligible(m, conv and not semi_structured)]
    reference, seen = _inputs(net, names, example_input)
    sync = torch.cuda.synchronize if example_input.is_cuda else (lambda: None)
    choices = []
    for name in [*seen, *(n for n in names if n not in seen)]:
        layer = net.get_submodule(name)
        kind = type(layer).__name__
        sparsity = float((layer.weight == 0).float().mean())
        skip = (
            name not in seen or sparsity < min_sparsity or (semi_structured and not is_2_4(layer.weight != 0))
        )
        if skip:
            choices.append(LayerChoice(name, kind, sparsity, None, None, False))
            continue
        if semi_structured:
            fast: nn.Module = SemiStructuredLinear(layer)
        else:
            fast = SparseLinear(layer) if isinstance(layer, nn.Linear) else SparseConv2d(layer)
        x = _inputs(net, [name], example_input)[1][name]  # as laid out by the layers before it
        dense_ms = _time_ms(lambda layer=layer, x=x: layer(x), repeats, sync)
        sparse_ms = _time_ms(lambda fast=fast, x=x: fast(x), repeats, sync)
        used = force or sparse_ms < margin * dense_ms
        if used:
            net.set_submodule(name, fast)
        choices.append(LayerChoice(name, kind, sparsity, dense_ms, sparse_ms, used))
    out = net(example_input)
    error = float((out - reference).abs().max())
    tolerance = (1e-2 if semi_structured else 1e-5) * max(1.0, float(reference.abs().max()))
    if not error <= tolerance:
        raise PrunelabError(
            f"sparse execution changed the outputs by {error:.3g} (tolerance {tolerance:.3g})"
        )
    return SparseResult(net, choices, error)
