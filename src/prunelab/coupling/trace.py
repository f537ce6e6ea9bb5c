"""Tracing a model by running it: every torch call, with its real tensors, under a TorchFunctionMode.

Why run the model rather than trace it symbolically: ``torch.fx.symbolic_trace`` traces all 75
torchvision classification models up to 150M parameters, in eval and in train mode, in 0.01-1 s,
but not the Hugging Face encoders (transformers 5 dropped its fx tracer; plain fx fails on BERT and
DistilBERT with "co_varnames is too small" and on ViT with "Proxy object cannot be iterated"), nor
any model whose ``forward`` branches on shapes. ``torch.export`` decomposes modules into ATen ops
(losing the parameters' and modules' identities the rules need) and takes seconds per model.
Running the model once under a :class:`torch.overrides.TorchFunctionMode` sees every torch function,
tensor method and operator with real arguments, works for any module that runs, keeps parameter
identity (a parameter is an argument like any tensor) and follows whatever branch the example takes;
running it in train mode too shows the branches only training takes (GoogLeNet's and Inception-V3's
auxiliary heads). What symbolic tracing knows and a run does not is which sizes the code computes
and which it fixes: here every size read from a tensor (``x.shape``, ``x.size(1)``) is an
:class:`Size` (an ``int`` remembering which channels it measured, through arithmetic), so a
``view(b, 2, c // 2, h, w)`` (a channel shuffle) is seen to shrink with the channels, while
``view(-1, 400)`` or ``reshape(b, self.hidden_dim, n)`` is fixed and freezes the channels it
reshapes -- unless the module registers the attribute as a size (:data:`SIZE_ATTRIBUTES`), which
compaction then updates.

Inside a module with a rule (:data:`prunelab.coupling.modules.MODULE_RULES`: attention whose head
layout no op sequence reveals) nothing is traced: the rule labels its parameters and output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunelab.coupling.lab import Lab, compress, neutral, tensor_lab, unknown
from prunelab.coupling.labels import Labels


class Size(int):
    """A size read from a tensor: ``origin`` holds one label of each space along the dimension it
    measured (empty for a dimension without channels). Arithmetic keeps the origin."""

    origin: frozenset[int]

    def __new__(cls, value: int, origin: frozenset[int] = frozenset()) -> Size:
        obj = int.__new__(cls, value)
        obj.origin = origin
        return obj

    def _wrap(self, value: Any, other: Any = None) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            return value
        extra = other.origin if isinstance(other, Size) else frozenset()
        return Size(value, self.origin | extra)

    def __add__(self, o):
        return self._wrap(int(self) + o, o)

    def __radd__(self, o):
        return self._wrap(o + int(self), o)

    def __sub__(self, o):
        return self._wrap(int(self) - o, o)

    def __rsub__(self, o):
        return self._wrap(o - int(self), o)

    def __mul__(self, o):
        return self._wrap(int(self) * o, o)

    def __rmul__(self, o):
        return self._wrap(o * int(self), o)

    def __floordiv__(self, o):
        return self._wrap(int(self) // o, o)

    def __rfloordiv__(self, o):
        return self._wrap(o // int(self), o)

    def __mod__(self, o):
        return self._wrap(int(self) % o, o)

    def __neg__(self):
        return self._wrap(-int(self))

    def __pos__(self):
        return self

    def __repr__(self) -> str:
        return int.__repr__(self)


@dataclass
class Call:
    """One traced torch call: its name (``add``, ``view``, ``conv2d``), arguments and result."""

    name: str
    func: Callable
    args: tuple
    kwargs: dict
    out: Any
    where: str

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if len(self.args) > index:
            return self.args[index]
        return self.kwargs.get(name, default)


@dataclass(frozen=True)
class AttributePatch:
    """A module attribute holding a size the code uses (``VisionTransformer.hidden_dim``): after
    compaction it is set to how many of ``labels`` remain."""

    module: str
    attribute: str
    labels: torch.Tensor


Rule = Callable[["Trace", Call], None]


class Trace:
    """The state of one traced run: the labels of every tensor seen, the module stack."""

    def __init__(
        self, model: nn.Module, labels: Labels, rules: dict[str, Rule], module_rules, whole_groups=frozenset()
    ) -> None:
        self.model = model
        self.whole_groups = frozenset(whole_groups)  # grouped convs whose groups go whole, however wide
        self.labels = labels
        self.rules = rules
        self.module_rules = module_rules
        self.params = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.buffers = {id(b): n for n, b in model.named_buffers(remove_duplicate=False)}
        self.module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.labs: dict[int, tuple[torch.Tensor, Lab]] = {}
        self.stack: list[tuple[str, nn.Module]] = []
        self.suspended: nn.Module | None = None
        self.patches: list[AttributePatch] = []
        self.errors: list[str] = []
        self.busy = False  # prunelab's own code runs (a module rule): its torch calls are not the model's

    # labels of values ---------------------------------------------------------------------------
    def lab(self, value: Any) -> Lab | None:
        """The labels of a tensor argument (None for anything else)."""
        if not isinstance(value, torch.Tensor):
            return None
        found = self.labs.get(id(value))
        if found is not None and found[0] is value:
            return found[1]
        name = self.params.get(id(value))
        if name is not None:
            return tensor_lab(self.labels, name, value, buffer=False)
        name = self.buffers.get(id(value))
        if name is not None:
            return tensor_lab(self.labels, name, value, buffer=True)
        return unknown(value.shape)

    def set(self, value: Any, lab: Lab) -> None:
        if isinstance(value, torch.Tensor):
            if tuple(lab.shape) != tuple(value.shape) or lab.L.dim() != value.dim():
                self.labels.freeze(lab.all_labels(), "a rule lost track of the shape", self.where("?"))
                lab = unknown(value.shape)
            elif lab.L.numel() > 1 or bool((lab.L > 0).any()):
                lab = Lab(lab.shape, compress(self.labels.canonical(lab.L)))
            self.labs[id(value)] = (value, lab)

    def set_neutral(self, value: Any) -> None:
        for t in _tensors(value):
            self.set(t, neutral(t.shape))

    def tensor_name(self, value: Any) -> str | None:
        """The parameter's or buffer's name, or None for an activation."""
        if not isinstance(value, torch.Tensor):
            return None
        return self.params.get(id(value)) or self.buffers.get(id(value))

    def is_param(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self.params

    def is_buffer(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self.buffers

    def owner(self, tensor_name: str) -> nn.Module:
        """The module holding a parameter or buffer."""
        return self.model.get_submodule(tensor_name.rpartition(".")[0])

    def where(self, name: str) -> str:
        module = self.stack[-1] if self.stack else ("", self.model)
        label = module[0] or "(model)"
        return f"{name} in {label} ({type(module[1]).__name__})"

    def freeze_inputs(self, call: Call, reason: str) -> None:
        for value in _tensors((call.args, call.kwargs)):
            lab = self.lab(value)
            if lab is not None and lab.labelled and not self.tensor_name(value):
                self.labels.freeze(lab.all_labels(), reason, call.where)

    def attribute_for(self, value: int) -> tuple[str, str] | None:
        """The registered size attribute of a running module equal to ``value`` (innermost first)."""
        from prunelab.coupling.modules import size_attributes

        for name, module in reversed(self.stack):
            for attribute in size_attributes(module):
                if getattr(module, attribute, None) == value:
                    return name, attribute
        return None

    # sizes ------------------------------------------------------------------------------------------
    def size_of(self, value: torch.Tensor, dim: int) -> Size:
        lab = self.lab(value)
        origin: frozenset[int] = frozenset()
        if lab is not None and lab.L.dim() > 0 and lab.L.shape[dim] > 1:
            labels = lab.all_labels()
            owners: dict[int, int] = {}
            for v, o in zip(labels.tolist(), self.labels.owner[labels].tolist(), strict=True):
                owners.setdefault(o, v)
            origin = frozenset(owners.values())
        return Size(int(value.shape[dim]), origin)

    def sizes(self, value: torch.Tensor) -> torch.Size:
        return torch.Size([self.size_of(value, d) for d in range(value.dim())])

    # the run ----------------------------------------------------------------------------------------
    def handle(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> Any:
        if self.busy:
            return out
        name = _name(func)
        if name == "size":
            if len(args) > 1 or "dim" in kwargs:
                dim = args[1] if len(args) > 1 else kwargs["dim"]
                return self.size_of(args[0], dim) if isinstance(dim, int) else out
            return self.sizes(args[0])
        if name == "shape":
            return self.sizes(args[0])
        if name == "numel":
            size = Size(1)
            for s in self.sizes(args[0]):
                size = size * s
            return size
        if self.suspended is not None or name in _IGNORED:
            return out
        call = Call(name, func, args, kwargs, out, self.where(name))
        self.run(self.rules.get(name), call, name, lambda: self.rules[name](self, call))
        return out

    def run(self, rule: Any, call: Call, name: str, apply: Callable[[], None]) -> None:
        """Apply a rule (an op without one is opaque); a rule that fails freezes what it touches."""
        self.busy = True
        try:
            if rule is None:
                self.opaque(call, f"{name} (no rule for this op)")
            else:
                apply()
        except Exception as exc:
            self.errors.append(f"{call.where}: {type(exc).__name__}: {exc}")
            self.opaque(call, f"{name} (its rule failed: {type(exc).__name__})")
        finally:
            self.busy = False

    def opaque(self, call: Call, reason: str) -> None:
        """An op without a rule: the channels it reads are kept whole, its outputs are unknown."""
        self.freeze_inputs(call, reason)
        for t in _tensors(call.out):
            self.set(t, unknown(t.shape))

    # modules ----------------------------------------------------------------------------------------
    def enter(self, module: nn.Module, args: tuple) -> None:
        if self.busy:
            return
        name = self.module_names.get(id(module), type(module).__name__)
        self.stack.append((name, module))
        rule = self.module_rules(module) if self.suspended is None else None
        if rule is not None and rule.check(module) is None:
            self.suspended = module

    def leave(self, module: nn.Module, args: tuple, out: Any) -> None:
        if self.busy:
            return
        if self.stack and self.stack[-1][1] is module:
            self.stack.pop()
        if self.suspended is module:
            self.suspended = None
            rule = self.module_rules(module)
            name = self.module_names.get(id(module), type(module).__name__)
            kind = type(module).__name__
            call = Call(kind, module.forward, args, {}, out, self.where(kind))
            self.run(rule, call, kind, lambda: rule(self, name, module, call))


class _Mode(TorchFunctionMode):
    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        return self.trace.handle(func, args, kwargs, out)


@contextlib.contextmanager
def tracing(trace: Trace) -> Iterator[None]:
    """While active, every torch call and module call of the process feeds ``trace``."""
    pre = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: trace.enter(m, a))
    post = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: trace.leave(m, a, o))
    try:
        with _Mode(trace):
            yield
    finally:
        pre.remove()
        post.remove()


_IGNORED = frozenset(
    {
        "dim", "ndimension", "__len__", "is_floating_point", "is_complex", "element_size", "stride",
        "storage_offset", "is_contiguous", "data_ptr", "__format__", "__repr__", "__bool__", "item",
        "tolist", "dtype", "device", "is_cuda", "requires_grad", "grad_fn", "is_leaf", "layout",
        "get_device", "__hash__", "__iter__", "__index__", "__int__", "__float__", "__reduce_ex__",
        "__setstate__", "__deepcopy__", "numpy", "is_sparse", "is_quantized", "is_meta", "names",
        "_is_view", "untyped_storage", "__array__", "is_nested", "ndim", "grad", "output_nr",
        "_version", "is_inference", "__contains__", "uniform_", "normal_", "kaiming_uniform_",
        "_has_compatible_shallow_copy_type", "__get_state__", "__torch_function__", "retain_grad",
        "register_hook", "backward",
    }
)  # fmt: skip


def _name(func: Callable) -> str:
    """``add`` for ``Tensor.add``, ``conv2d`` for ``F.conv2d``, ``shape`` for the shape property."""
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        return getattr(owner, "__name__", name)
    return name


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) value: tuples, lists, dicts, namedtuples, model outputs."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        try:
            value = list(value.values())
        except Exception:
            return []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


tensors_in = _tensors
