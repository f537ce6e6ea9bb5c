"""Sparse execution of unstructured masks: sparse layers, each kept only where it beats the dense one.

Zeros in a dense weight cost as much as any other value (as the Primer on Neural Network Pruning explains), so unstructured sparsity only
pays with a sparse kernel. :class:`SparseLinear` runs prunelab's own kernel
(``native/sparse_linear.c``, see :mod:`prunelab.compress.native`) in one of the formats of
:mod:`prunelab.compress.formats` (CSR with 16-bit column indices, bitmap, N:M), else torch's sparse
CSR product (MKL), which is also the path for inputs that need gradients and for other dtypes and
devices. It takes an ``nn.Linear``, a transformers ``Conv1D`` (GPT-2's transposed Linear) or a
weight, so a model is made sparse by swapping those modules and nothing else.
:class:`SparseConv2d` is the same product on a convolution's input columns: a 1x1 convolution
reads its NCHW input as is, others through im2col. :func:`sparsify` times every format of every
sparse enough layer on the input it receives, at the caller's batch size and thread count, and
swaps a layer only where its best format is faster than dense. 2:4 semi-structured sparsity on a
GPU (``torch.sparse.to_sparse_semi_structured``) needs CUDA compute capability 8.0 or newer, fp16,
and at most 2 kept weights in every 4 consecutive inputs.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.compress import native
from prunelab.compress.formats import FORMATS, Pattern
from prunelab.errors import PrunelabError
from prunelab.pruning.mask import Mask

NATIVE_DEFAULTS = ("csr16", "csr32")  # the format a layer gets when none is named


def _is_conv1d(module: nn.Module) -> bool:
    """A transformers ``Conv1D`` (GPT-2): a Linear whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def _weight_of(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a Linear, a transformers Conv1D, or a convolution (flattened)."""
    if _is_conv1d(module):
        return module.weight.detach().t()
    return module.weight.detach().flatten(1)


class SparseLinear(nn.Module):
    """``nn.Linear`` for inference with a sparse weight: work and bytes proportional to the kept weights.

    ``source`` is an ``nn.Linear``, a transformers ``Conv1D``, a 2-D (out, in) weight (dense or
    sparse CSR) or a :class:`~prunelab.compress.formats.Pattern`; ``format`` one of
    :data:`~prunelab.compress.formats.FORMATS` (default: CSR with the narrowest indices). The
    format is packed once, here. Where the kernel cannot be built, every format runs as ``mkl``
    (said once per process).
    """

    def __init__(
        self,
        source: nn.Module | torch.Tensor | Pattern,
        bias: torch.Tensor | None = None,
        *,
        format: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(source, nn.Module):
            bias = source.bias if bias is None else bias
            source = _weight_of(source)
        pattern = source if isinstance(source, Pattern) else Pattern.of(source)
        self.out_features, self.in_features = pattern.rows, pattern.cols
        self.format = self._install(pattern, format)
        self.register_buffer(
            "bias", None if bias is None else bias.detach().float().clone().contiguous(), persistent=False
        )
        self._desc: tuple | None = None
        self._csr_cache: torch.Tensor | None = None

    def _install(self, pattern: Pattern, name: str | None) -> str:
        """Pack ``pattern`` in format ``name`` (its arrays become buffers); the format in use."""
        if name is None:
            name = next((f for f in NATIVE_DEFAULTS if FORMATS.get(f).fits(pattern)), "mkl")
        fmt = FORMATS.get(name)
        if not fmt.fits(pattern):
            raise PrunelabError(
                f"sparse format {name!r} does not fit a {pattern.rows}x{pattern.cols} weight with this "
                f"pattern; formats that do: {', '.join(fits(pattern))}"
            )
        if fmt.code is not None and native.sparse_kernel() is None:
            native.warn_fallback()
            fmt = FORMATS.get(name := "mkl")
        for key, tensor in fmt.pack(pattern).items():
            self.register_buffer(key, tensor.contiguous(), persistent=False)
        return name

    @property
    def native(self) -> bool:
        """Whether this layer runs prunelab's kernel (where its input allows)."""
        return self.format != "mkl"

    def pattern(self) -> Pattern:
        """The weight in CSR form (what an export stores)."""
        packed = {k: getattr(self, k).cpu() for k in ("indptr", "index", "values", "nm") if hasattr(self, k)}
        return FORMATS.get(self.format).unpack(packed, self.out_features, self.in_features)

    def dense_weight(self) -> torch.Tensor:
        return self.pattern().dense()

    def nbytes(self) -> int:
        """What one pass over the weight in its format reads (the kernel's arrays; MKL's CSR)."""
        return FORMATS.get(self.format).nbytes(self.pattern())

    def runs_native(self, x: torch.Tensor) -> bool:
        """Whether ``x`` goes through the kernel: float32 on the CPU, needing no gradient, and this
        layer's arrays float32 on the CPU too; everything else takes torch's path."""
        grad = x.requires_grad and torch.is_grad_enabled()
        return x.dtype is torch.float32 and x.is_cpu and not grad and self.descriptor() is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = self.descriptor()
        if (
            desc is not None
            and x.dtype is torch.float32
            and x.is_cpu
            and not (x.requires_grad and torch.is_grad_enabled())
        ):  # the kernel's path, kept short: at batch 1 a small layer's call lasts microseconds
            flat = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, self.in_features).contiguous()
            out = torch.empty(flat.shape[0], self.out_features)
            native.run(desc, flat, out, flat.shape[0], 1, native.ROWS)
            return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)
        lead = x.shape[:-1]
        xt = x.reshape(-1, self.in_features).t()
        if not xt.is_contiguous():
            xt = xt.contiguous()
        w = self.csr_weight()
        out = (
            torch.sparse.mm(w, xt) if self.bias is None else torch.addmm(self.bias[:, None], w, xt)
        ).t()  # a view: the next SparseLinear on this path gets its transposed input for free
        return out if len(lead) == 1 else out.reshape(*lead, self.out_features)

    def descriptor(self) -> native.Packed | None:
        """The kernel's view of this layer's arrays; None where they are not float32 on the CPU (or
        the format is ``mkl``). Rebuilt whenever the arrays were replaced (``.to``, a copy)."""
        b, cached = self._buffers, self._desc
        arrays = (b.get("indptr"), b.get("index"), b.get("values"), b["bias"])
        if cached is not None and all(x is y for x, y in zip(cached[0], arrays, strict=True)):
            return cached[1]
        indptr, index, values, bias = arrays
        desc = None
        usable = self.native and values.dtype is torch.float32 and values.is_cpu and index.is_cpu
        if usable and (bias is None or (bias.dtype is torch.float32 and bias.is_cpu)):
            n, m = (int(v) for v in self.nm) if "nm" in b else (0, 0)
            desc = native.Packed(
                FORMATS.get(self.format).code, n, m, 0, self.out_features, self.in_features,
                indptr.data_ptr(), index.data_ptr(), values.data_ptr(), None if bias is None else bias.data_ptr(),
            )  # fmt: skip
        self._desc = (arrays, desc)  # holds the arrays: their addresses stay theirs while cached
        return desc

    def csr_weight(self) -> torch.Tensor:
        """The weight as a torch sparse CSR tensor (the MKL path), built once (and after moves)."""
        device = self.values.device
        if self._csr_cache is None or self._csr_cache.device != device:
            self._csr_cache = self.pattern().csr().to(device)
        return self._csr_cache

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_desc"], state["_csr_cache"] = None, None  # pointers and a derived tensor: rebuilt on use
        return state

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (groups 1, zero padding) for inference: a sparse weight times the input columns.

    A 1x1 convolution without padding reads its NCHW input as the kernel's channel layout (every
    image's pixels as the batch of a Linear; stride by subsampling first); others go through im2col
    (``F.unfold``). The weight is held by a :class:`SparseLinear` of shape (out, in x kh x kw).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        *,
        format: str | None = None,
        pattern: Pattern | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        weight = pattern if pattern is not None else _weight_of(conv)
        self.linear = SparseLinear(weight, bias if pattern is not None else conv.bias, format=format)

    @property
    def format(self) -> str:
        return self.linear.format

    def pattern(self) -> Pattern:
        return self.linear.pattern()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def _pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and self.padding == (0, 0)

    def _size(self, h: int, w: int) -> list[int]:
        return [
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(
                (h, w), self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        size = self._size(h, w)
        if self._pointwise():
            if self.stride != (1, 1):
                x = x[:, :, :: self.stride[0], :: self.stride[1]]
            cols = x.reshape(n, c, size[0] * size[1])
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (n, c*k*k, l)
        if self.linear.runs_native(cols):
            if not cols.is_contiguous():
                cols = cols.contiguous()
            out = torch.empty(n, self.out_channels, cols.shape[2])
            native.run(self.linear.descriptor(), cols, out, cols.shape[2], n, native.CHANNELS)
            return out.reshape(n, self.out_channels, *size)
        flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)
        weight, bias = self.linear.csr_weight(), self.linear.bias
        out = torch.sparse.mm(weight, flat) if bias is None else torch.addmm(bias[:, None], weight, flat)
        return out.reshape(self.out_channels, n, *size).transpose(0, 1)


def fits(pattern: Pattern) -> list[str]:
    """The formats that can hold ``pattern`` and run here (only ``mkl`` without the kernel, said once)."""
    kernel = native.sparse_kernel() is not None
    if not kernel:
        native.warn_fallback()
    return [name for name, fmt in FORMATS.items() if fmt.fits(pattern) and (kernel or fmt.code is None)]


def sparse_module(layer: nn.Module, format: str, pattern: Pattern | None = None) -> nn.Module:
    """``layer`` (Linear, transformers Conv1D or Conv2d) as a sparse module in ``format``."""
    if isinstance(layer, nn.Conv2d):
        return SparseConv2d(layer, format=format, pattern=pattern, bias=layer.bias)
    return SparseLinear(pattern if pattern is not None else layer, layer.bias, format=format)


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
    """What :func:`sparsify` decided for one layer, with the timings it decided on.

    ``timings`` holds every format tried (ms); ``format`` and ``sparse_ms`` are the fastest one.
    """

    layer: str
    kind: str
    sparsity: float
    dense_ms: float | None
    sparse_ms: float | None
    used: bool
    format: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.sparse_ms if self.dense_ms and self.sparse_ms else None

    def summary(self) -> str:
        """The decision in a few words: the format that runs and its speed-up, or dense."""
        if self.sparse_ms is None:
            return "dense (not tried)"
        speedup = f"{self.speedup:.2f}x" if self.speedup else "?"
        return f"{self.format} {speedup}" if self.used else f"dense ({self.format} {speedup})"


@dataclass
class SparseResult:
    model: nn.Module
    choices: list[LayerChoice]
    max_error: float
    batch_size: int = 0
    threads: int = 0

    @property
    def used(self) -> list[str]:
        return [c.layer for c in self.choices if c.used]

    COLUMNS = ("layer", "zeros %", "dense ms", "best sparse ms", "format", "speed-up", "runs")

    def rows(self) -> list[tuple]:
        """One row per layer decided on (see COLUMNS)."""
        return [
            (c.layer, round(100 * c.sparsity, 1), c.dense_ms, c.sparse_ms, c.format or "", c.speedup,
             "sparse" if c.used else "dense")
            for c in self.choices
        ]  # fmt: skip


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
    if isinstance(m, nn.Linear) or _is_conv1d(m):
        return True
    plain = isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
    return conv and plain and isinstance(m.padding, tuple)


def unstructured_sparsity(model: nn.Module, *, conv: bool = True) -> dict[str, float]:
    """The fraction of zero weights of every layer :func:`sparsify` could make sparse."""
    return {
        name: float((m.weight == 0).float().mean())
        for name, m in model.named_modules()
        if _eligible(m, conv) and m.weight.numel()
    }


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
    formats: tuple[str, ...] | None = None,
) -> SparseResult:
    """A copy of ``model`` (masked) whose sparse enough layers run sparse where that is faster.

    Layers at least ``min_sparsity`` sparse (Linear and transformers Conv1D; Conv2d too with
    ``conv``) are decided one by one in the order they run: each is timed dense and in every
    format that fits it (``formats``: only those) on the input it receives in the network as
    decided so far, at ``example_input``'s batch size and torch's current thread count; the
    fastest format replaces the layer when it takes under ``margin`` of the dense time (``force``:
    always, for tests). ``semi_structured`` uses 2:4 fp16 linear layers instead (CUDA only; refused
    elsewhere). The result's outputs are checked against the masked model's.
    """
    if semi_structured and (why := semi_structured_support(example_input.device)):
        raise PrunelabError(why)
    if formats is not None:
        for name in formats:
            FORMATS.get(name)  # an unknown name: the error lists the valid ones
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
        x = _inputs(net, [name], example_input)[1][name]  # as laid out by the layers before it
        dense_ms = _time_ms(lambda layer=layer, x=x: layer(x), repeats, sync)
        if semi_structured:
            tried = {"2:4-fp16": SemiStructuredLinear(layer)}
        else:
            pattern = Pattern.of(_weight_of(layer).cpu())
            tried = {
                f: sparse_module(layer, f, pattern) for f in fits(pattern) if formats is None or f in formats
            }
        if not tried:
            choices.append(LayerChoice(name, kind, sparsity, dense_ms, None, False))
            continue
        timings = {f: _time_ms(lambda m=m, x=x: m(x), repeats, sync) for f, m in tried.items()}
        best = min(timings, key=timings.get)
        used = force or timings[best] < margin * dense_ms
        if used:
            net.set_submodule(name, tried[best])
        choices.append(LayerChoice(name, kind, sparsity, dense_ms, timings[best], used, best, timings))
    out = net(example_input)
    error = float((out - reference).abs().max())
    tolerance = (1e-2 if semi_structured else 1e-5) * max(1.0, float(reference.abs().max()))
    if not error <= tolerance:
        raise PrunelabError(
            f"sparse execution changed the outputs by {error:.3g} (tolerance {tolerance:.3g})"
        )
    return SparseResult(net, choices, error, example_input.shape[0], torch.get_num_threads())


# Export: the sparse layers' CSR arrays in a safetensors file, their formats in the plan --------
def sparse_layers(model: nn.Module) -> dict[str, SparseLinear | SparseConv2d]:
    """The sparse layers of ``model`` by name (a SparseConv2d's own SparseLinear not listed apart)."""
    found: dict[str, SparseLinear | SparseConv2d] = {}
    for name, m in model.named_modules():
        if isinstance(m, (SparseLinear, SparseConv2d)) and not any(name.startswith(f"{o}.") for o in found):
            found[name] = m
    return found


def sparse_state(model: nn.Module) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """Per sparse layer, what rebuilds it (type, format, shape) and its tensors (CSR + bias)."""
    layers, tensors = {}, {}
    for name, m in sparse_layers(model).items():
        p = m.pattern()
        layers[name] = {
            "type": "Conv2d" if isinstance(m, SparseConv2d) else "Linear",
            "format": m.format,
            "rows": p.rows,
            "cols": p.cols,
            "nnz": p.nnz,
            "bias": m.bias is not None,
        }
        tensors.update({f"{name}.crow": p.crow.int(), f"{name}.col": p.col.int(), f"{name}.values": p.values})
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.cpu()
    return layers, tensors


def install_sparse(model: nn.Module, layers: dict[str, dict], tensors: dict[str, torch.Tensor]) -> None:
    """Swap the layers :func:`sparse_state` describes into ``model`` (built, maybe on meta), packed anew."""
    for name, spec in layers.items():
        old = model.get_submodule(name)
        rows, cols = int(spec["rows"]), int(spec["cols"])
        pattern = Pattern.from_arrays(
            rows, cols, tensors[f"{name}.crow"], tensors[f"{name}.col"], tensors[f"{name}.values"]
        )
        if pattern.crow.numel() != rows + 1 or pattern.col.numel() != pattern.values.numel():
            raise PrunelabError(f"the sparse arrays of layer {name!r} do not describe a {rows}x{cols} weight")
        if (pattern.col.numel() and int(pattern.col.max()) >= cols) or int(pattern.crow[-1]) != pattern.nnz:
            raise PrunelabError(f"the sparse arrays of layer {name!r} do not describe a {rows}x{cols} weight")
        bias = tensors.get(f"{name}.bias")
        if spec["type"] == "Conv2d":
            new: nn.Module = SparseConv2d(old, format=spec["format"], pattern=pattern, bias=bias)
        else:
            new = SparseLinear(pattern, bias, format=spec["format"])
        model.set_submodule(name, new)
