"""What each torch op does to channel labels: one small rule per kind of op, registered by name.

* element-wise ops (``+``, ``*``, activations, dropout, ``where``): their operands' channels at one
  position become one channel (a residual add, an SE product);
* data movement (``view``, ``permute``, ``cat``, ``chunk``, indexing, ``pad``, shuffles) moves the
  labels exactly (the op runs on the label tensor). Where a channel dimension is split and one
  part's size is computed from the input (a channel shuffle's ``view(b, g, c // g, h, w)``, the
  heads of ``view(b, n, -1, head_dim)``), or cut into ``chunk`` s, the positions aligned across the
  fixed parts are tied (pruned together): the same code then computes the same layout with fewer
  channels. A dimension indexed at fixed positions (``x[:, :64]``, ``select``, ``roll``) must not
  shrink: its channels are frozen unless every position holds the same units;
* layers with parameters (``linear``, ``conv``, the norms, ``embedding``) label their parameters'
  dimensions: a consumer's input columns read the channel, its rows write a new one; a grouped
  conv with at least as many groups as channels per group (ResNeXt's 32 x 4, a depthwise conv)
  ties each group's input and output channels (whole groups go, a depthwise conv's channel with its
  filter), one with wider groups (RegNet's) ties the same position of every group instead (each
  group loses the same channels, the group count stays); a GroupNorm ties the channels of each of
  its groups;
* contractions (``matmul``, ``scaled_dot_product_attention``) tie what they contract (a head's
  query and key channels) and what they batch over (the heads);
* reductions and pooling keep the dimensions they do not reduce; a reduction across channels
  (``mean(-1)``, ``softmax`` over channels) freezes them, as every op without a rule does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from prunelab.coupling.lab import Lab, along, elementwise, make, reduce, unknown
from prunelab.coupling.labels import NEUTRAL, UNKNOWN
from prunelab.coupling.trace import AttributePatch, Call, Rule, Size, Trace, tensors_in

RULES: dict[str, Rule] = {}


def rule(*names: str, inplace: bool = True):
    """Register a rule under ``names`` (and their in-place ``name_`` forms)."""

    def decorator(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
            if inplace and not name.startswith("__"):
                RULES[name + "_"] = fn
        return fn

    return decorator


def _dim(dim: int, ndim: int) -> int:
    return dim % ndim if ndim else 0


# element-wise ------------------------------------------------------------------------------------
_BINARY = [
    "add",
    "sub",
    "mul",
    "div",
    "true_divide",
    "floor_divide",
    "remainder",
    "fmod",
    "rsub",
    "maximum",
    "minimum",
    "fmax",
    "fmin",
    "where",
    "masked_fill",
    "masked_scatter",
    "lerp",
    "addcmul",
    "addcdiv",
    "atan2",
    "hypot",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "greater",
    "less",
    "logical_and",
    "logical_or",
    "logical_xor",
    "bitwise_and",
    "bitwise_or",
    "bitwise_xor",
    "copysign",
    "pow",
    "xlogy",
    "__add__",
    "__radd__",
    "__iadd__",
    "__sub__",
    "__rsub__",
    "__isub__",
    "__mul__",
    "__rmul__",
    "__imul__",
    "__truediv__",
    "__rtruediv__",
    "__itruediv__",
    "__floordiv__",
    "__rfloordiv__",
    "__mod__",
    "__pow__",
    "__rpow__",
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__and__",
    "__or__",
    "__xor__",
    "__iand__",
    "__ior__",
    "__ixor__",
    "clamp",
    "clip",
]
_UNARY = [
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "softplus",
    "softsign",
    "logsigmoid",
    "tanhshrink",
    "hardshrink",
    "softshrink",
    "threshold",
    "rrelu",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "abs",
    "neg",
    "negative",
    "exp",
    "exp2",
    "expm1",
    "log",
    "log1p",
    "log2",
    "log10",
    "sqrt",
    "rsqrt",
    "reciprocal",
    "sin",
    "cos",
    "tan",
    "erf",
    "erfc",
    "erfinv",
    "sign",
    "sgn",
    "floor",
    "ceil",
    "round",
    "trunc",
    "frac",
    "square",
    "clamp_min",
    "clamp_max",
    "nan_to_num",
    "logical_not",
    "bitwise_not",
    "isnan",
    "isinf",
    "isfinite",
    "__neg__",
    "__abs__",
    "__invert__",
    "__pos__",
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "double",
    "bfloat16",
    "int",
    "long",
    "bool",
    "to",
    "type",
    "type_as",
    "cpu",
    "cuda",
    "requires_grad_",
    "data",
    "positive",
    "native_dropout",
]


@rule(*_BINARY)
def _binary(t: Trace, call: Call) -> None:
    operands = [t.lab(v) for v in tensors_in((call.args, call.kwargs))]
    for out in tensors_in(call.out):
        t.set(out, elementwise(t.labels, out.shape, operands, call.where))


@rule(*_UNARY)
def _unary(t: Trace, call: Call) -> None:
    source = t.lab(call.args[0]) if call.args else None
    for out in tensors_in(call.out):
        if source is None or tuple(out.shape) != tuple(source.shape):
            t.opaque(call, f"{call.name} changes the shape")
            return
        t.set(out, Lab(source.shape, source.L))


@rule("zeros", "zeros_like", "new_zeros", "zero_", inplace=False)
def _zeros(t: Trace, call: Call) -> None:
    t.set_neutral(call.out)


@rule("fill_", "ones", "ones_like", "new_ones", "full", "full_like", "new_full", "arange", "tensor",
      "randn", "rand", "randn_like", "rand_like", "empty", "new_empty", "empty_like", "linspace",
      "as_tensor", "new_tensor", "randint", "normal", "bernoulli", "eye", "meshgrid", inplace=False)  # fmt: skip
def _made(t: Trace, call: Call) -> None:
    for out in tensors_in(call.out):
        t.set(out, unknown(out.shape))


# data movement -------------------------------------------------------------------------------------
def _on_labels(call: Call, full: torch.Tensor) -> torch.Tensor:
    """The op, with the same arguments, applied to a label tensor in place of its first input."""

    def run(x: torch.Tensor) -> torch.Tensor:
        return call.func(x, *call.args[1:], **call.kwargs)

    try:
        return run(full)
    except (RuntimeError, NotImplementedError, TypeError):  # an op without integer kernels
        return run(full.double()).round().long()


def _fixed(t: Trace, call: Call, lab: Lab, dims: Sequence[int]) -> None:
    """The code indexes ``dims`` at fixed positions: check (after the trace) that they never shrink."""
    for d in dims:
        d = _dim(d, len(lab.shape))
        if lab.L.shape[d] > 1:
            rows = lab.L.movedim(d, 0)
            t.labels.check_fixed(
                rows.reshape(rows.shape[0], -1), f"positions fixed by {call.name}", call.where
            )


def _moved(t: Trace, call: Call, touched: Sequence[int] = ()) -> None:
    lab = t.lab(call.args[0])
    _fixed(t, call, lab, touched)
    out = call.out
    result = _on_labels(call, lab.full())
    if isinstance(out, torch.Tensor):
        t.set(out, make(out.shape, result))
    else:
        for o, r in zip(tensors_in(out), result, strict=False):
            t.set(o, make(o.shape, r))


@rule(
    "permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT", "H", "mH",
    "squeeze", "unsqueeze", "expand", "expand_as", "broadcast_to", "repeat", "tile", "pixel_shuffle",
    "pixel_unshuffle", "repeat_interleave", "as_strided_", "atleast_2d", "atleast_3d",
    inplace=False,
)  # fmt: skip
def _layout(t: Trace, call: Call) -> None:
    """Ops that rearrange dimensions without fixing a position of any."""
    _moved(t, call)


@rule(
    "narrow", "select", "index_select", "gather", "take_along_dim", "roll", "flip", "diagonal", inplace=False
)
def _indexed(t: Trace, call: Call) -> None:
    if call.name in ("roll", "flip"):
        dims = call.arg(2 if call.name == "roll" else 1, "dims")
        if dims is None:
            dims = list(range(call.args[0].dim()))
        dims = [dims] if isinstance(dims, int) else list(dims)
    elif call.name == "diagonal":
        dims = [call.arg(2, "dim1", 0), call.arg(3, "dim2", 1)]
    else:
        dims = [call.arg(1, "dim")]
    _moved(t, call, dims)


@rule("fliplr", "flipud", "rot90", inplace=False)
def _flips(t: Trace, call: Call) -> None:
    dims = {"fliplr": [1], "flipud": [0]}.get(call.name, [0, 1])
    _moved(t, call, dims)


@rule("__getitem__", inplace=False)
def _getitem(t: Trace, call: Call) -> None:
    source = call.args[0]
    index = call.args[1]
    items = index if isinstance(index, tuple) else (index,)
    touched: list[int] = []
    consumed = sum(
        1
        for i in items
        if i is not None and i is not Ellipsis and not (isinstance(i, torch.Tensor) and i.dtype == torch.bool)
    )
    d = 0
    for item in items:
        if item is None:
            continue
        if item is Ellipsis:
            d += source.dim() - consumed
            continue
        if isinstance(item, slice):
            full = (
                item.step in (None, 1)
                and item.start in (None, 0)
                and (item.stop is None or item.stop >= source.shape[d])
            )
            if not full:
                touched.append(d)
            d += 1
        elif isinstance(item, torch.Tensor) and item.dtype == torch.bool:
            touched.extend(range(d, d + item.dim()))
            d += item.dim()
        else:  # an int, a list or an index tensor
            touched.append(d)
            d += 1
    _moved(t, call, touched)


@rule("pad", "constant_pad_nd", inplace=False)
def _pad(t: Trace, call: Call) -> None:
    """Zero padding adds neutral positions at the ends (any width keeps them there); reflection or
    replication copies fixed positions."""
    mode = call.arg(2, "mode", "constant")
    pads = list(call.arg(1, "pad"))
    ndim = call.args[0].dim()
    padded = [ndim - 1 - i // 2 for i in range(0, len(pads), 2) if pads[i] or pads[i + 1]]
    _moved(t, call, padded if mode != "constant" else [])


@rule("channel_shuffle", "native_channel_shuffle", inplace=False)
def _channel_shuffle(t: Trace, call: Call) -> None:
    """``channel_shuffle(x, g)``: the channel at position ``j`` of each of the ``g`` groups moves
    together (the op computes the group width from the input), so they are tied."""
    lab = t.lab(call.args[0])
    groups = int(call.arg(1, "groups"))
    if lab.L.dim() > 1 and lab.L.shape[1] > 1:
        grid = lab.L.movedim(1, 0).reshape(groups, lab.L.shape[1] // groups, -1)
        for g in range(1, groups):
            t.labels.tie(grid[0], grid[g], call.where, "")
    _moved(t, call)


# reshapes: which sizes the code computes ------------------------------------------------------------
def _blocks(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair the dimensions of ``a`` and ``b`` (equal numel) into blocks of equal products, size-1
    dimensions left out; None if a dimension is empty."""
    if 0 in a or 0 in b:
        return None
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [j for j, s in enumerate(b) if s != 1]
    blocks, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        left, right = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        while pa != pb:
            if pa < pb:
                i += 1
                left.append(ia[i])
                pa *= a[ia[i]]
            else:
                j += 1
                right.append(ib[j])
                pb *= b[ib[j]]
        blocks.append((left, right))
        i += 1
        j += 1
    return blocks


def _computed(t: Trace, size: Any, labels: torch.Tensor, where: str, attributes: bool) -> bool:
    """Whether a size the code passed for a channel dimension follows the channels: ``-1``, a size
    read from a tensor (checked after the trace to measure these channels) or, where
    ``attributes``, a registered size attribute of a running module (compaction updates it)."""
    if size is None or (isinstance(size, int) and not isinstance(size, Size) and size == -1):
        return True
    if isinstance(size, Size):
        if not size.origin:
            return False
        t.labels.check_size(size.origin, labels, "its size is computed from other channels", where)
        return True
    if attributes and isinstance(size, int):
        found = t.attribute_for(int(size))
        if found is not None:
            t.patches.append(AttributePatch(found[0], found[1], labels.clone()))
            return True
    return False


def _reshaped(t: Trace, call: Call, lab: Lab, shape: Sequence[int], sizes: Sequence[Any] | None) -> Lab:
    """A view/reshape/flatten/unflatten: the labels move exactly; where channels are merged or kept
    whole their size must be computed, where a channel dimension is split exactly one part must be
    computed and the positions aligned across the other parts are tied; else they are frozen."""
    shape = tuple(shape)
    out = make(shape, lab.full().reshape(shape))
    blocks = _blocks(lab.shape, shape)
    if blocks is None:
        t.labels.freeze(lab.all_labels(), f"{call.name} with an empty dimension", call.where)
        return out
    for left, right in blocks:
        if not any(lab.L.shape[d] > 1 for d in left):
            continue
        block_labels = out.L[out.L > 0]
        if len(right) == 1:
            size = sizes[right[0]] if sizes is not None else None
            if not _computed(t, size, block_labels, call.where, attributes=True):
                t.labels.freeze(block_labels, f"a fixed size ({size}) in {call.name}", call.where)
            continue
        if len(left) != 1:
            t.labels.freeze(block_labels, f"channels regrouped across dimensions by {call.name}", call.where)
            continue
        free = [
            j
            for j in right
            if _computed(t, sizes[j] if sizes is not None else None, block_labels, call.where, False)
        ]
        if len(free) != 1:
            what = "no part" if not free else "several parts"
            t.labels.freeze(block_labels, f"channels split with {what} computed by {call.name}", call.where)
            continue
        k = free[0]
        others = [j for j in right if j != k and out.L.shape[j] > 1]
        if others:
            grid = out.L.permute([k, *others, *[d for d in range(len(shape)) if d != k and d not in others]])
            grid = grid.reshape(grid.shape[0], math.prod(out.L.shape[j] for j in others), -1)
            for j in range(1, grid.shape[1]):
                t.labels.tie(grid[:, 0], grid[:, j], call.where, "split")
    return out


def _size_args(args: Sequence[Any]) -> list[Any]:
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return list(args[0])
    return list(args)


@rule("view", "reshape", inplace=False)
def _view(t: Trace, call: Call) -> None:
    lab = t.lab(call.args[0])
    if not isinstance(call.out, torch.Tensor):
        return
    rest = call.args[1:] if len(call.args) > 1 else (call.kwargs.get("shape") or call.kwargs.get("size"),)
    if rest and (isinstance(rest[0], torch.dtype) or rest[0] is None):
        t.opaque(call, f"{call.name} as another dtype")
        return
    sizes = _size_args(rest)
    if len(sizes) != call.out.dim():
        sizes = None
    t.set(call.out, _reshaped(t, call, lab, call.out.shape, sizes))


@rule("view_as", "reshape_as", "flatten", "ravel", "unflatten", inplace=False)
def _computed_reshape(t: Trace, call: Call) -> None:
    lab = t.lab(call.args[0])
    if not isinstance(call.out, torch.Tensor):
        return
    sizes = None
    if call.name == "unflatten":
        dim = _dim(call.arg(1, "dim"), len(lab.shape))
        new = list(call.arg(2, "sizes"))
        sizes = [None] * dim + new + [None] * (len(lab.shape) - dim - 1)
    t.set(call.out, _reshaped(t, call, lab, call.out.shape, sizes))


@rule("cat", "concat", "concatenate", "stack", inplace=False)
def _cat(t: Trace, call: Call) -> None:
    parts = [p for p in call.arg(0, "tensors")]
    out = call.out
    dim = _dim(call.arg(1, "dim", 0), out.dim())
    labs = []
    for p in parts:
        lab = t.lab(p)
        if call.name == "stack":
            lab = Lab((*lab.shape[:dim], 1, *lab.shape[dim:]), lab.L.unsqueeze(dim))
        labs.append(lab)
    sizes = [
        max(lab.L.shape[d] if d < lab.L.dim() else 1 for lab in labs) if d != dim else 0
        for d in range(out.dim())
    ]
    pieces = []
    for lab in labs:
        target = list(sizes)
        target[dim] = lab.shape[dim]
        pieces.append(
            lab.L.expand([s if lab.L.shape[d] == 1 else lab.L.shape[d] for d, s in enumerate(target)])
        )
    t.set(out, make(out.shape, torch.cat(pieces, dim)))


@rule(
    "chunk",
    "split",
    "tensor_split",
    "unbind",
    "split_with_sizes",
    "unsafe_split",
    "unsafe_chunk",
    inplace=False,
)
def _split(t: Trace, call: Call) -> None:
    source = call.args[0]
    lab = t.lab(source)
    outs = tensors_in(call.out)
    dim = _dim(call.arg(1 if call.name == "unbind" else 2, "dim", 0), source.dim())
    if lab.L.shape[dim] == 1:  # the labels do not vary along the split
        for o in outs:
            L = lab.L if call.name != "unbind" else lab.L.squeeze(dim)
            t.set(o, make(o.shape, L))
        return
    sizes = [o.shape[dim] if call.name != "unbind" else 1 for o in outs]
    computed = call.name in ("chunk", "unsafe_chunk") or (
        call.name in ("split", "unsafe_split") and isinstance(call.arg(1, "split_size_or_sections"), Size)
    )
    if computed and len(set(sizes)) == 1:
        grid = lab.L.movedim(dim, 0).reshape(len(outs), sizes[0], -1)
        for i in range(1, len(outs)):
            t.labels.tie(grid[0], grid[i], call.where, "chunk")
    else:
        _fixed(t, call, lab, [dim])
    start = 0
    for o, size in zip(outs, sizes, strict=True):
        piece = lab.L.narrow(dim, start, size)
        start += size
        t.set(o, make(o.shape, piece.squeeze(dim) if call.name == "unbind" else piece))


# reductions and pooling --------------------------------------------------------------------------------
_KEEPS_SHAPE = frozenset({"softmax", "log_softmax", "cumsum", "cumprod", "softmin", "sort", "argsort",
                          "logcumsumexp", "cummax", "cummin", "normalize", "topk"})  # fmt: skip


@rule(
    "mean", "sum", "nansum", "nanmean", "amax", "amin", "max", "min", "std", "var", "std_mean", "var_mean",
    "logsumexp", "norm", "prod", "all", "any", "argmax", "argmin", "softmax", "log_softmax",
    "cumsum", "cumprod", "count_nonzero", "median", "softmin", "topk", "sort", "argsort", "aminmax",
    "logcumsumexp", "cummax", "cummin", "normalize",
    inplace=False,
)  # fmt: skip
def _reduction(t: Trace, call: Call) -> None:
    source = call.args[0]
    lab = t.lab(source)
    ndim = source.dim()
    dim = call.arg(2, "dim", 1) if call.name == "normalize" else call.arg(1, "dim")
    if call.name in ("max", "min") and isinstance(dim, torch.Tensor):  # the binary form
        _binary(t, call)
        return
    if dim is None:
        dims = list(range(ndim))
    elif isinstance(dim, (list, tuple)):
        dims = list(dim)
    else:
        dims = [dim]
    if call.name == "topk":
        dims = [call.arg(2, "dim", -1)]
    keepdim = call.kwargs.get("keepdim")
    if keepdim is None:
        keepdim = bool(call.args[2]) if len(call.args) > 2 and isinstance(call.args[2], bool) else False
    for out in tensors_in(call.out):
        t.set(out, reduce(t.labels, lab, dims, keepdim or call.name in _KEEPS_SHAPE, out.shape, call.where))


@rule(
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
    "lp_pool1d", "lp_pool2d", "lp_pool3d", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear", "fractional_max_pool2d", "fractional_max_pool3d", "local_response_norm",
    inplace=False,
)  # fmt: skip
def _spatial(t: Trace, call: Call) -> None:
    """Ops over the positions (dims 2 on) of a batch of channels: dims 0 and 1 keep their labels."""
    lab = t.lab(call.args[0])
    ndim = len(lab.shape)
    spatial = list(range(2, ndim))
    kept = reduce(t.labels, lab, spatial, True, (*lab.shape[:2], *([1] * (ndim - 2))), call.where)
    if call.name == "local_response_norm" and kept.L.shape[1] > 1:  # mixes neighbouring channels
        t.labels.freeze(kept.L[kept.L > 0], "local response normalisation across channels", call.where)
    for out in tensors_in(call.out):
        if out.dtype in (torch.int64, torch.int32):  # indices
            t.set(out, unknown(out.shape))
        else:
            t.set(out, make(out.shape, kept.L))


# layers with parameters --------------------------------------------------------------------------------
def _space(t: Trace, value: Any, dim: int, role: str):
    """The (parameter, dimension) space of a layer's tensor, with the role it plays."""
    name = t.tensor_name(value)
    if name is None:
        return None
    space = t.labels.space(name, dim, value.shape[dim], buffer=t.is_buffer(value))
    space.roles.add(role)
    return space


def _out(shape: Sequence[int], dim: int, labels: torch.Tensor) -> Lab:
    """A layer's output: ``labels`` along ``dim``, the same at every other position."""
    shape = tuple(shape)
    view = [1] * len(shape)
    view[dim % len(shape)] = shape[dim % len(shape)]
    return Lab(shape, labels.reshape(view).clone())


@rule("linear", inplace=False)
def _linear(t: Trace, call: Call) -> None:
    x, weight, bias = call.args[0], call.arg(1, "weight"), call.arg(2, "bias")
    if not t.is_param(weight):
        _contract(t, call, x, weight.t() if weight.dim() == 2 else weight, bias)
        return
    cols, rows = _space(t, weight, 1, "read"), _space(t, weight, 0, "write")
    t.labels.same(along(t.labels, t.lab(x), -1, call.where), cols.labels(), call.where)
    if bias is not None and t.is_param(bias):
        t.labels.same(rows.labels(), _space(t, bias, 0, "write").labels(), call.where)
    t.set(call.out, _out(call.out.shape, -1, rows.labels()))


@rule("conv1d", "conv2d", "conv3d", inplace=False)
def _conv(t: Trace, call: Call) -> None:
    x, weight, bias = call.args[0], call.arg(1, "weight"), call.arg(2, "bias")
    groups = int(call.arg(6, "groups", 1))
    if not t.is_param(weight):
        t.opaque(call, f"{call.name} with a computed weight")
        return
    cdim = 1 if x.dim() == weight.dim() else 0
    channels = along(t.labels, t.lab(x), cdim, call.where)
    rows = _space(t, weight, 0, "write")
    per = len(channels) // groups
    if groups == 1:
        t.labels.same(channels, _space(t, weight, 1, "read").labels(), call.where)
    elif groups >= per or t.tensor_name(weight).rpartition(".")[0] in t.whole_groups:
        # whole groups (a depthwise conv's channels): each group's inputs and outputs go together
        kind = "" if per == 1 else "conv groups"
        inside = torch.cat([channels.reshape(groups, -1), rows.labels().reshape(groups, -1)], 1)
        _tie_rows(t, inside, call.where, kind)
    else:  # wide groups (RegNet's): the same channels of every group, so each group keeps the same width
        columns = _space(t, weight, 1, "read").labels()
        t.labels.same(channels.reshape(groups, per), columns.expand(groups, per), call.where)
        _tie_rows(t, rows.labels().reshape(groups, -1).t(), call.where, "")
    if bias is not None and t.is_param(bias):
        t.labels.same(rows.labels(), _space(t, bias, 0, "write").labels(), call.where)
    t.set(call.out, _out(call.out.shape, cdim, rows.labels()))


@rule("conv_transpose1d", "conv_transpose2d", "conv_transpose3d", inplace=False)
def _conv_transpose(t: Trace, call: Call) -> None:
    x, weight, bias = call.args[0], call.arg(1, "weight"), call.arg(2, "bias")
    groups = int(call.arg(6, "groups", 1))
    if not t.is_param(weight) or groups != 1 or x.dim() != weight.dim():
        t.opaque(call, f"{call.name} (grouped, unbatched or with a computed weight)")
        return
    t.labels.same(along(t.labels, t.lab(x), 1, call.where), _space(t, weight, 0, "read").labels(), call.where)
    rows = _space(t, weight, 1, "write")
    if bias is not None and t.is_param(bias):
        t.labels.same(rows.labels(), _space(t, bias, 0, "write").labels(), call.where)
    t.set(call.out, _out(call.out.shape, 1, rows.labels()))


def _tie_rows(t: Trace, rows: torch.Tensor, where: str, kind: str) -> None:
    """Tie all labels of each row of ``rows`` (one row per group)."""
    if rows.shape[1] > 1:
        t.labels.tie(rows[:, :1].expand(-1, rows.shape[1] - 1), rows[:, 1:], where, kind)


def _per_channel(t: Trace, call: Call, channels: torch.Tensor, values: list[tuple[Any, str]]) -> None:
    for value, role in values:
        if value is None:
            continue
        space = _space(t, value, 0, role)
        if space is None:
            t.labels.freeze(channels, f"{call.name} with per-channel values computed in forward", call.where)
        else:
            t.labels.same(channels, space.labels(), call.where)


@rule("batch_norm", "instance_norm", inplace=False)
def _batch_norm(t: Trace, call: Call) -> None:
    x = call.args[0]
    lab = t.lab(x)
    values = [(call.arg(i, n), role) for i, n, role in
              ((3, "weight", "scale"), (4, "bias", "shift"), (1, "running_mean", "stat"), (2, "running_var", "stat"))]  # fmt: skip
    channels = along(t.labels, lab, 1 if x.dim() > 1 else 0, call.where)
    _per_channel(t, call, channels, values)
    t.set(call.out, Lab(lab.shape, lab.L))


@rule("layer_norm", "rms_norm", inplace=False)
def _layer_norm(t: Trace, call: Call) -> None:
    """A norm over the last dimension of a LayerNorm/RMSNorm module: its scale and shift belong to
    the channels, and it reads them all for its statistics (the masked model normalises over the
    kept ones: :mod:`prunelab.pruning.norms`). Other normalisations over channels freeze them."""
    from prunelab.pruning.norms import supports

    x = call.args[0]
    lab = t.lab(x)
    shape = tuple(call.arg(1, "normalized_shape"))
    weight = call.arg(2, "weight")
    bias = call.arg(3, "bias") if call.name == "layer_norm" else None
    name = t.tensor_name(weight)
    if len(shape) == 1 and name is not None and t.is_param(weight) and supports(t.owner(name)):
        channels = along(t.labels, lab, -1, call.where)
        _per_channel(t, call, channels, [(weight, "scale"), (bias, "shift")])
        t.labels.space(name, 0, weight.shape[0]).roles.add("stats")
    else:
        normalised = list(range(x.dim() - len(shape), x.dim()))
        for d in normalised:
            if lab.L.shape[d] > 1:
                t.labels.freeze(
                    lab.L[lab.L > 0], f"{call.name} over channels outside a LayerNorm module", call.where
                )
    t.set(call.out, Lab(lab.shape, lab.L))


@rule("group_norm", inplace=False)
def _group_norm(t: Trace, call: Call) -> None:
    x = call.args[0]
    lab = t.lab(x)
    groups = int(call.arg(1, "num_groups"))
    channels = along(t.labels, lab, 1, call.where)
    _tie_rows(t, channels.reshape(groups, -1), call.where, "norm groups" if len(channels) > groups else "")
    _per_channel(t, call, channels, [(call.arg(2, "weight"), "scale"), (call.arg(3, "bias"), "shift")])
    t.set(call.out, Lab(lab.shape, lab.L))


@rule("embedding", inplace=False)
def _embedding(t: Trace, call: Call) -> None:
    weight = call.arg(1, "weight")
    if not t.is_param(weight):
        t.opaque(call, "embedding of a computed table")
        return
    t.set(call.out, _out(call.out.shape, -1, _space(t, weight, 1, "write").labels()))


@rule("prelu", inplace=False)
def _prelu(t: Trace, call: Call) -> None:
    x, weight = call.args[0], call.arg(1, "weight")
    lab = t.lab(x)
    if weight.numel() > 1:
        _per_channel(t, call, along(t.labels, lab, 1, call.where), [(weight, "scale")])
    t.set(call.out, Lab(lab.shape, lab.L))


# contractions ------------------------------------------------------------------------------------------
def _pair(t: Trace, a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    """Tie the positive labels ``a`` and ``b`` hold at the same positions (broadcast)."""
    a, b = torch.broadcast_tensors(a, b)
    both = (a > 0) & (b > 0)
    if bool(both.any()):
        t.labels.tie(a[both], b[both], where, "attention")
    for x, y in ((a, b), (b, a)):
        contact = (x > 0) & (y == UNKNOWN)
        if bool(contact.any()):
            t.labels.freeze(x[contact], "meets data of unknown origin", where)


def _contract(t: Trace, call: Call, a: torch.Tensor, b: torch.Tensor, bias: Any = None) -> None:
    """``a @ b``: with a parameter, a layer (its rows read the activation's channels, its columns
    write new ones); between activations (attention), what is contracted and what is batched over
    is tied: a head's query and key channels, the heads of scores and values."""
    out = call.out
    if a.dim() < 2 or b.dim() < 2:
        t.opaque(call, f"{call.name} of a vector")
        return
    if t.tensor_name(b) is not None and b.dim() == 2 and t.tensor_name(a) is None:
        cols, rows = _space(t, b, 0, "read"), _space(t, b, 1, "write")
        t.labels.same(along(t.labels, t.lab(a), -1, call.where), cols.labels(), call.where)
        result = _out(out.shape, -1, rows.labels())
    elif t.tensor_name(a) is not None or t.tensor_name(b) is not None:
        t.opaque(call, f"{call.name} with a parameter in an unsupported position")
        return
    else:
        la, lb = t.lab(a).L, t.lab(b).L
        nd = out.dim()
        la = la.reshape((1,) * (nd - la.dim()) + tuple(la.shape))
        lb = lb.reshape((1,) * (nd - lb.dim()) + tuple(lb.shape))
        # contracted: a's last dimension against b's second to last
        _pair(t, la.unsqueeze(-2), lb.transpose(-1, -2).unsqueeze(-3), call.where)
        rows = _collapse(la, -1)  # (..., n, 1): a's labels per row
        cols = _collapse(lb, -2)  # (..., 1, m): b's labels per column
        _pair(t, rows, cols, call.where)
        result_L = torch.where(cols > 0, cols, rows) if bool((cols > 0).any()) else rows
        result = make(
            out.shape, torch.broadcast_tensors(result_L, torch.empty((1,) * nd, dtype=torch.long))[0]
        )
    if bias is not None:
        result = elementwise(t.labels, out.shape, [result, t.lab(bias)], call.where)
    t.set(out, result)


def _collapse(L: torch.Tensor, dim: int) -> torch.Tensor:
    """``L`` reduced over ``dim`` to one label per remaining position (any of the tied ones)."""
    best = L.amax(dim=dim, keepdim=True)
    unknown_at = (L == UNKNOWN).any(dim=dim, keepdim=True)
    return torch.where(best > 0, best, torch.where(unknown_at, UNKNOWN, NEUTRAL))


@rule("matmul", "mm", "bmm", "__matmul__", inplace=False)
def _matmul(t: Trace, call: Call) -> None:
    _contract(t, call, call.args[0], call.args[1])


@rule("__rmatmul__", inplace=False)
def _rmatmul(t: Trace, call: Call) -> None:
    _contract(t, call, call.args[1], call.args[0])


@rule("addmm", "baddbmm", inplace=False)
def _addmm(t: Trace, call: Call) -> None:
    _contract(t, call, call.args[1], call.args[2], bias=call.args[0])


@rule("scaled_dot_product_attention", inplace=False)
def _sdpa(t: Trace, call: Call) -> None:
    """softmax(q k^T + mask) v: q and k contracted (tied), scores and v batched (tied)."""
    q, k, v = call.args[:3]
    out = call.out
    nd = out.dim()

    def aligned(x):
        L = t.lab(x).L
        return L.reshape((1,) * (nd - L.dim()) + tuple(L.shape))

    lq, lk, lv = aligned(q), aligned(k), aligned(v)
    _pair(t, lq.unsqueeze(-2), lk.unsqueeze(-3), call.where)  # (..., n, 1, d) x (..., 1, m, d)
    rows = _collapse(lq, -1)
    keys = _collapse(lk, -1).transpose(-1, -2)
    _pair(t, rows, keys, call.where)
    scores = torch.where(rows > 0, rows, keys)
    values = _collapse(lv, -2)  # (..., 1, d)
    _pair(t, _collapse(scores, -1), values, call.where)
    for L, what in ((lq, "query"), (lk, "key"), (lv, "value")):
        if L.shape[-2] > 1 and bool((L > 0).any()):
            t.labels.freeze(L[L > 0], f"attention over labelled {what} tokens", call.where)
    t.set(out, make(out.shape, torch.broadcast_tensors(values, torch.empty((1,) * nd, dtype=torch.long))[0]))
