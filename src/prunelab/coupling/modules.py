"""Rules for modules whose head layout no sequence of ops reveals, and size attributes.

Most attention code shows its heads to the trace: Hugging Face's ``view(*shape, -1, head_dim)``
splits the projection's rows into heads with a computed count (see :mod:`prunelab.coupling.ops`).
Where the head count is a fixed attribute (``reshape(B, N, 3, self.num_heads, self.head_dim)``)
or the attention is one fused function (``nn.MultiheadAttention``, torchvision's shifted-window
attention), a *module rule* says the layout: the packed ``qkv`` projection's rows are
``(3, heads, head_dim)``, the output projection's columns ``(heads, head_dim)``, and some
parameters have one entry per head (a relative-position bias table, a logit scale). The trace does
not look inside such a module; the rule ties each head's rows and columns into one unit, lets the
input's channels be read by the projection's columns and labels the output by the output
projection's rows. Compaction then sets the head count (:meth:`AttentionRule.resize`) and, for
modules whose code ties the head width to the input width (``nn.MultiheadAttention`` asserts
``head_dim * num_heads == embed_dim``; torchvision's ``shifted_window_attention`` computes the head
width as ``C // num_heads``), swaps in prunelab's module computing the same with separate widths
(:mod:`prunelab.coupling.attention`).

:data:`SIZE_ATTRIBUTES` names module attributes that hold a width the code uses as a fixed size
(torchvision's ``VisionTransformer.hidden_dim`` in ``reshape(n, self.hidden_dim, -1)``): such a
size follows the channels, and compaction sets the attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.coupling.lab import Lab, along
from prunelab.coupling.trace import Call, Trace

SIZE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "torchvision.models.vision_transformer.VisionTransformer": ("hidden_dim",),
}
"""Module class (``module.qualname``) -> attributes that are sizes of a channel dimension."""


def qualname(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def size_attributes(module: nn.Module) -> tuple[str, ...]:
    return SIZE_ATTRIBUTES.get(qualname(module), ())


@dataclass(frozen=True)
class AttentionRule:
    """A packed-projection attention module's layout.

    ``qkv``: the name of its packed input projection (a Linear, or a weight/bias parameter pair
    such as ``in_proj_weight``), rows ordered ``(3, heads, head_dim)``; ``proj``: the output
    projection (a Linear), columns ``(heads, head_dim)``; ``per_head``: parameters with one entry
    per head along a dimension; ``heads``: the attribute holding the head count; ``attributes``:
    what compaction sets from the heads kept (name -> function of (module, heads, head_dim));
    ``swap``: builds the module compaction puts in its place (None: the module is kept).
    """

    qkv: str
    proj: str
    heads: str = "num_heads"
    per_head: tuple[tuple[str, int], ...] = ()
    attributes: dict[str, Callable[[nn.Module, int, int], int]] = field(default_factory=dict)
    swap: Callable[[nn.Module], nn.Module] | None = None
    qkv_bias: str | None = None

    def weight(self, module: nn.Module) -> str:
        sub = module.get_submodule(self.qkv) if self.qkv in dict(module.named_modules()) else None
        return f"{self.qkv}.weight" if isinstance(sub, nn.Linear) else self.qkv

    def bias(self, module: nn.Module) -> str | None:
        if self.qkv_bias is not None:
            return self.qkv_bias
        sub = dict(module.named_modules()).get(self.qkv)
        return f"{self.qkv}.bias" if isinstance(sub, nn.Linear) else None

    def head_count(self, module: nn.Module) -> int:
        return int(getattr(module, self.heads))

    def head_dim(self, module: nn.Module) -> int:
        rows = _tensor(module, self.weight(module)).shape[0]
        return rows // (3 * self.head_count(module))

    def __call__(self, trace: Trace, name: str, module: nn.Module, call: Call) -> None:
        prefix = f"{name}." if name else ""
        labels = trace.labels
        inputs = [a for a in call.args if isinstance(a, torch.Tensor)]
        heads, dim = self.head_count(module), self.head_dim(module)
        weight = _tensor(module, self.weight(module))
        cols = labels.space(prefix + self.weight(module), 1, weight.shape[1])
        cols.roles.add("read")
        for x in inputs[:3]:
            labels.same(along(labels, trace.lab(x), -1, call.where), cols.labels(), call.where)
        rows = labels.space(prefix + self.weight(module), 0, weight.shape[0])
        rows.roles.add("write")
        grid = rows.labels().reshape(3, heads, dim)
        bias = self.bias(module)
        if bias is not None and _tensor(module, bias) is not None:
            b = labels.space(prefix + bias, 0, weight.shape[0])
            b.roles.add("write")
            labels.same(rows.labels(), b.labels(), call.where)
        proj = module.get_submodule(self.proj)
        pcols = labels.space(f"{prefix}{self.proj}.weight", 1, proj.weight.shape[1])
        pcols.roles.add("read")
        labels.same(grid[2].reshape(-1), pcols.labels(), call.where)  # the values' channels are read
        for h in range(heads):
            members = [grid[:, h].reshape(-1), pcols.labels()[h * dim : (h + 1) * dim]]
            for pname, pdim in self.per_head:
                tensor = _tensor(module, pname)
                if tensor is not None:
                    space = labels.space(prefix + pname, pdim, tensor.shape[pdim])
                    space.roles.add("scale")
                    members.append(space.labels()[h : h + 1])
            labels.tie_all(torch.cat(members), call.where, "heads")
        prows = labels.space(f"{prefix}{self.proj}.weight", 0, proj.weight.shape[0])
        prows.roles.add("write")
        if proj.bias is not None:
            pb = labels.space(f"{prefix}{self.proj}.bias", 0, proj.bias.shape[0])
            pb.roles.add("write")
            labels.same(prows.labels(), pb.labels(), call.where)
        for out in _outputs(call.out):
            view = [1] * out.dim()
            view[-1] = out.shape[-1]
            trace.set(out, Lab(tuple(out.shape), prows.labels().reshape(view).clone()))

    def check(self, module: nn.Module) -> str | None:
        """Why this module's layout is not the rule's (then it is traced as an op without a rule)."""
        if isinstance(module, nn.MultiheadAttention) and (
            not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn
        ):
            return "nn.MultiheadAttention with separate key/value widths, bias_k/bias_v or add_zero_attn"
        return None

    def resize(self, module: nn.Module, head_dim: int) -> nn.Module:
        """After compaction sliced its parameters (heads of ``head_dim`` channels): the head count
        and the widths set, or the module swapped for one computing the same."""
        heads = _tensor(module, self.weight(module)).shape[0] // (3 * head_dim)
        setattr(module, self.heads, heads)
        for attr, fn in self.attributes.items():
            setattr(module, attr, fn(module, heads, head_dim))
        return self.swap(module) if self.swap is not None else module


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    owner, _, attr = name.rpartition(".")
    target = module.get_submodule(owner) if owner else module
    return getattr(target, attr, None)


def _outputs(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)][:1]
    return []


MODULE_RULES: dict[str, AttentionRule] = {}
"""Module class (``module.qualname``) -> its rule."""


def register_attention(qualified: str, rule: AttentionRule) -> None:
    """Describe an attention module class's layout (see :class:`AttentionRule`)."""
    if qualified in MODULE_RULES:
        raise ValueError(f"attention rule for {qualified} is registered twice")
    MODULE_RULES[qualified] = rule


def module_rule(module: nn.Module) -> AttentionRule | None:
    found = MODULE_RULES.get(qualname(module))
    if found is None and isinstance(module, nn.MultiheadAttention):
        return MODULE_RULES["torch.nn.modules.activation.MultiheadAttention"]
    return found


def _register_builtin() -> None:
    from prunelab.coupling import attention

    register_attention(
        "torch.nn.modules.activation.MultiheadAttention",
        AttentionRule(
            "in_proj_weight", "out_proj", qkv_bias="in_proj_bias", swap=attention.CompactMultiheadAttention.of
        ),
    )
    for name in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2"):
        per_head = (("relative_position_bias_table", 1),)
        if name.endswith("V2"):
            per_head = (("logit_scale", 0), ("cpb_mlp.2.weight", 0))
        register_attention(
            f"torchvision.models.swin_transformer.{name}",
            AttentionRule("qkv", "proj", per_head=per_head, swap=attention.CompactShiftedWindowAttention.of),
        )
    register_attention(
        "torchvision.models.maxvit.RelativePositionalMultiHeadAttention",
        AttentionRule(
            "to_qkv",
            "merge",
            heads="n_heads",
            per_head=(("relative_position_bias_table", 1),),
            swap=attention.CompactRelativeAttention.of,
        ),
    )
    register_attention(
        "timm.layers.attention.Attention",
        AttentionRule("qkv", "proj", attributes={"attn_dim": lambda m, h, d: h * d}),
    )
    register_attention(
        "timm.models.swin_transformer.WindowAttention",
        AttentionRule("qkv", "proj", per_head=(("relative_position_bias_table", 1),)),
    )


_register_builtin()
