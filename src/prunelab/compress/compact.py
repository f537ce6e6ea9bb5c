"""Physical removal: a genuinely smaller ``nn.Module`` computing what the masked model computes.

The model is traced into its coupled groups (:mod:`prunelab.coupling`); a unit of a group (a
channel, an attention head, one group of a grouped conv) leaves *every* member of the group -- the
producers' rows, the norms' entries, the consumers' input columns, a class token's entries, an
attention projection's rows -- when the mask makes that exact:

* its readers are pruned: every position of the unit in a consumer's input columns (and in a
  LayerNorm, which reads the channel for its statistics) is masked, so nothing reads it. Masks
  chosen per group (``--structure channels``, ``heads``...) are always like this; or
* it is dead: the channel reaches each unmasked reader as a constant (its producers' rows are
  pruned: it carries a bias, a BatchNorm shift, ``relu`` of one...). The constant is measured on
  the masked model and folded into the reader's bias, which is exact for linear layers and
  unpadded convs, and for zero-padded convs only when the constant is 0 (border pixels see the
  padding, not the constant). Such a unit is kept unless ``exact=False``.

Units the trace froze (an op without a rule, the model output: the classes) stay, every group keeps
at least one unit (in a Hugging Face encoder, a hidden or pooler channel goes only when the mask
prunes it whole, so that a transformers config still describes the model where heads and FFN
widths allow), and the layers' size attributes follow their parameters
(:mod:`prunelab.compress.resize`); attention modules whose code ties the head width to the input
width become prunelab's equivalents (:mod:`prunelab.coupling.attention`). Before any channel goes,
a residual block whose whole branch the mask zeroes is replaced by its shortcut
(:mod:`prunelab.compress.blocks`), so removed blocks leave the architecture.

Every compaction is checked against the masked model on random inputs, in eval mode and in train
mode (dropout off; branches only training runs, such as GoogLeNet's auxiliary heads, included),
to a relative tolerance of 1e-5 of the largest output; a difference names the first layer whose
kept outputs differ.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.compress.blocks import ShortcutBlock, remove_blocks
from prunelab.compress.resize import resize, shape_attributes
from prunelab.coupling import Group, Groups, discover
from prunelab.coupling.attention import SWAPPED
from prunelab.coupling.modules import module_rule
from prunelab.coupling.trace import tensors_in
from prunelab.errors import PrunelabError
from prunelab.models.encoder import is_encoder, set_head_counts
from prunelab.pruning import norms
from prunelab.pruning.coupled import group_kind
from prunelab.pruning.mask import Mask

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class CompactResult:
    """The compacted model (eval mode), its architecture plan, and what was kept."""

    model: nn.Module
    plan: dict[str, dict[str, Any]]
    """Module name -> its type and size attributes (see :func:`layer_plan`), JSON-able."""
    kept_channels: dict[str, list[int]]
    """Layer -> original indices of the output units (rows) it keeps."""
    removed: dict[str, int] = field(default_factory=dict)
    """Layer -> number of output units removed."""
    kept_dead: dict[str, int] = field(default_factory=dict)
    """Group -> dead units kept because folding their constant would not be exact."""
    max_error: float = 0.0
    """Largest |compact - masked| output difference seen on the check inputs."""
    removed_blocks: tuple[str, ...] = ()
    """Residual blocks whose whole branch the mask zeroes, replaced by their shortcut."""
    removed_groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Grouped conv -> the groups of it removed."""
    removed_heads: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Attention module -> the heads removed."""


def compact(
    model: nn.Module,
    mask: Mask | None,
    example_input: torch.Tensor,
    *,
    exact: bool = True,
    check_batch: int = 2,
    seed: int = 0,
    groups: Groups | None = None,
) -> CompactResult:
    """A smaller copy of ``model`` (masked by ``mask``) without the units the mask leaves unread or dead.

    ``example_input`` is one batch the model accepts (its size does not matter); ``mask=None`` takes
    the model's exact zeros. ``model`` is not modified. With ``exact`` (default) the outputs equal
    the masked model's to float tolerance, else :class:`PrunelabError`; ``exact=False`` also drops
    dead channels feeding zero-padded convs (border outputs change: see ``max_error``).
    """
    mask = mask if mask is not None else Mask.from_model_zeros(model)
    mask.check_fits(model)
    reference = copy.deepcopy(model).eval()
    mask.apply(reference)
    net = copy.deepcopy(reference)
    norms.install(net, Mask({}))  # the compacted norms are narrower, not masked
    blocks = remove_blocks(net)
    whole = _whole_groups(net, mask)
    if blocks or whole:
        groups = None
    found = groups if groups is not None else discover(net, example_input, whole_groups=whole)
    generator = torch.Generator().manual_seed(seed)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if any(_partly_dead(g, mask) for g in found.prunable()):  # constants to measure, maybe to fold
        seen = _reader_inputs(net, found, check_inputs(net, example_input, check_batch, generator))
    before = {name: (shape_attributes(m), _head_dim(m)) for name, m in net.named_modules()}
    layers = {name for name, m in net.named_modules() if isinstance(m, LAYER_TYPES)}
    removal = _Removal()
    for group, gone, dead_kept in _decide(net, found, mask, seen, exact):
        if is_encoder(net) and group_kind(group, found, dict(net.named_modules())) == "channels":
            gone &= _fully_masked(group, mask)  # keep the hf/ folder describable: see the docstring
        if dead_kept:
            removal.kept_dead[group.name] = dead_kept
        if gone.any():
            removal.add(group, gone, seen)
    removal.apply(net)
    _resize_modules(net, before, removal.changed, found, removal)
    if is_encoder(net):
        set_head_counts(net)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
    kept = {k: v for k, v in removal.kept_rows().items() if k in layers}
    error = check(net, reference, example_input, generator, check_batch, exact, kept)
    removed = {k: v for k, v in removal.removed_rows().items() if k in layers}
    return CompactResult(
        net, layer_plan(net), kept, removed, removal.kept_dead,
        error, blocks, removal.conv_groups(before), removal.heads,
    )  # fmt: skip


def _whole_groups(net: nn.Module, mask: Mask) -> set[str]:
    """Grouped convs (not depthwise) of which the mask prunes some group whole: sparse structure
    selection's groups, which go whole however wide they are."""
    out = set()
    for name, m in net.named_modules():
        key = f"{name}.weight"
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and 1 < m.groups < m.in_channels and key in mask:
            rows = mask[key].reshape(m.groups, -1)
            if bool((~rows.any(1)).any()):
                out.add(name)
    return out


def _head_dim(module: nn.Module) -> int | None:
    rule = module_rule(module)
    return rule.head_dim(module) if rule is not None and rule.check(module) is None else None


# which units go ------------------------------------------------------------------------------------
def _position_masked(mask: Mask, member) -> torch.Tensor:
    """Per position of ``member``'s dimension: is every entry of the tensor at it masked?"""
    size = len(member.units)
    if member.tensor not in mask:
        return torch.zeros(size, dtype=torch.bool)
    entry = mask[member.tensor].cpu()
    return ~entry.movedim(member.dim, 0).reshape(size, -1).any(1)


def _per_unit(member, flags: torch.Tensor, count: int) -> torch.Tensor:
    """Per unit: are ``flags`` (one per position of ``member``) true at all of its positions?"""
    misses = torch.zeros(count, dtype=torch.long).index_add_(0, member.units, (~flags).long())
    return misses == 0


def _decide(
    net: nn.Module, groups: Groups, mask: Mask, seen, exact: bool
) -> list[tuple[Group, torch.Tensor, int]]:
    """Per prunable group: the units that go, and the dead ones kept for exactness. A removed unit
    counts as masked everywhere it was, so removals cascade (a row whose live columns all read
    removed units writes a constant in turn), until nothing more can go."""
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    effective = {n: m.cpu().clone() for n, m in mask.items()}
    gone_of: dict[int, torch.Tensor] = {}
    dead_of: dict[int, int] = {}
    changed = True
    while changed:
        changed = False
        for group in groups:
            if not group.prunable:
                continue
            old = gone_of.get(group.index, torch.zeros(group.count, dtype=torch.bool))
            gone, dead_of[group.index] = _removable(group, effective, seen, exact)
            gone |= old
            if bool(gone.all()):  # every group keeps one unit: the first it kept so far
                gone[int((~old).nonzero()[0])] = False
            if torch.equal(gone, old):
                continue
            changed = True
            gone_of[group.index] = gone
            for name, pattern in group.mask_entries(~gone, shapes).items():
                effective[name] = effective[name] & pattern if name in effective else pattern.clone()
    return [
        (g, gone_of.get(g.index, torch.zeros(g.count, dtype=torch.bool)), dead_of.get(g.index, 0))
        for g in groups
        if g.prunable
    ]


def _fully_masked(group: Group, mask) -> torch.Tensor:
    """Per unit: is every position of every parameter member the mask covers masked (a structured
    prune of the group)?"""
    flags = torch.ones(group.count, dtype=torch.bool)
    for m in group.params():
        if m.tensor in mask:
            flags &= _per_unit(m, _position_masked(mask, m), group.count)
    return flags


def _live_channels(group: Group, mask) -> set[int]:
    """The channels some unmasked row writes (the others carry constants)."""
    live: set[int] = set()
    for m in group.params():
        if "write" in m.roles and m.tensor.endswith("weight"):
            live |= set(m.channels[~_position_masked(mask, m)].tolist())
    return live


def _partly_dead(group: Group, mask) -> bool:
    """Whether a consumer still reads a channel whose rows are all masked (a constant): unstructured
    and per-layer masks, and sparse structure selection's, leave such channels."""
    live = _live_channels(group, mask)
    for m in group.params():
        if "read" in m.roles:
            unmasked = ~_position_masked(mask, m)
            if any(c not in live for c in m.channels[unmasked].tolist()):
                return True
    return False


def _removable(group: Group, mask, seen, exact: bool) -> tuple[torch.Tensor, int]:
    """Per unit of ``group``: can it go? Every position of it that a reader (a consumer's column,
    a LayerNorm's statistics) holds is masked, or, for a consumer, reads a dead channel (every
    row writing it is masked) whose constant folds exactly into the consumer's bias. Also how many
    dead units stay because a fold would not be exact."""
    live_channels = _live_channels(group, mask)
    free = group.free()
    gone = free.clone()
    dead_kept = torch.zeros(group.count, dtype=torch.bool)
    for m in group.params():
        if not ({"read", "stats"} & m.roles):
            continue
        masked = _position_masked(mask, m)
        if "read" in m.roles and m.tensor in seen:
            _, ok = seen[m.tensor]
            dead = torch.tensor([c not in live_channels for c in m.channels.tolist()], dtype=torch.bool)
            fold = dead & (ok if exact else torch.ones_like(ok))
            dead_kept |= ~_per_unit(m, masked | fold, group.count) & _per_unit(m, masked | dead, group.count)
            masked = masked | fold
        gone &= _per_unit(m, masked, group.count)
    return gone, int((dead_kept & free & ~gone).sum())


@torch.no_grad()
def _reader_inputs(net: nn.Module, groups: Groups, x: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per reading weight (a Linear's or Conv's columns): the value of each input channel on the
    first example, and whether folding it is exact: constant over the batch and positions, the
    same in train mode (batch statistics: a constant channel through a BatchNorm becomes its shift
    there), and 0 for a zero-padded conv."""
    readers: dict[str, str] = {}
    for group in groups:
        for m in group.params():
            reads = "read" in m.roles and m.tensor.endswith(".weight") and m.dim == 1
            layer = net.get_submodule(m.module)
            if reads and isinstance(layer, LAYER_TYPES) and getattr(layer, "groups", 1) == 1:
                readers[m.module] = m.tensor  # a grouped conv's column reads one channel per group: no fold
    found: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
    for training in (False, True):
        model = copy.deepcopy(net) if training else net
        model.train(training)
        seen: dict[str, list[torch.Tensor]] = {}
        hooks = [
            model.get_submodule(name).register_forward_pre_hook(
                lambda mod, args, name=name, seen=seen: seen.setdefault(name, []).append(args[0].detach())
            )
            for name in readers
        ]
        try:
            with dropout_off(model):
                _run(model, x)
        except Exception:  # a model that does not run in train mode is checked in eval only
            if not training:
                raise
            continue
        finally:
            for h in hooks:
                h.remove()
            net.eval()
        found.append({name: _constant_inputs(net.get_submodule(name), calls) for name, calls in seen.items()})
    out = {}
    for name, tensor in readers.items():
        if name not in found[0]:
            continue
        value, ok = found[0][name]
        for other in found[1:]:
            if name in other:
                v2, ok2 = other[name]
                ok = ok & ok2 & ((value - v2).abs() <= 1e-6 * (1.0 + value.abs()))
        out[tensor] = (value, ok)
    return out


def _constant_inputs(layer: nn.Module, calls: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input channel of ``layer`` seeing ``calls`` (its inputs, once per call): its first value,
    and whether it is that constant everywhere, in every call (and 0, for a zero-padded conv)."""
    linear = isinstance(layer, nn.Linear)
    units = torch.cat(
        [v.reshape(-1, v.shape[-1]).t() if linear else v.transpose(0, 1).flatten(1) for v in calls], 1
    )
    units = units.float().cpu()
    value = units[:, 0]
    ok = (units - value[:, None]).abs().amax(1) <= 1e-6 * (1.0 + value.abs())
    if not isinstance(layer, nn.Linear) and _zero_padded(layer):
        ok &= value == 0
    return value, ok


def _zero_padded(conv: nn.Module) -> bool:
    """Whether border outputs of ``conv`` see zeros instead of a constant input (no exact fold)."""
    if conv.padding_mode != "zeros" or conv.padding == "valid":
        return False
    if conv.padding == "same":
        return any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


# removal -----------------------------------------------------------------------------------------------
class _Removal:
    """The positions each tensor keeps, the constants folded into readers' biases, and what to report."""

    def __init__(self) -> None:
        self.keep: dict[tuple[str, int], torch.Tensor] = {}
        self.folds: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.kept_dead: dict[str, int] = {}
        self.heads: dict[str, tuple[int, ...]] = {}
        self.changed: set[str] = set()

    def add(self, group: Group, gone: torch.Tensor, seen) -> None:
        if group.kind == "heads":
            self.heads[group.name] = tuple(int(i) for i in gone.nonzero().flatten())
        for m in group.members:
            flags = ~m.positions(gone)
            key = (m.tensor, m.dim)
            self.keep[key] = self.keep[key] & flags if key in self.keep else flags
            if "read" in m.roles and m.tensor in seen and not m.buffer:
                value, _ = seen[m.tensor]
                cols = (m.positions(gone)).nonzero().flatten()
                if len(cols):
                    self.folds.append((m.tensor, cols, value[cols]))

    @torch.no_grad()
    def apply(self, net: nn.Module) -> None:
        modules = dict(net.named_modules())
        for tensor, cols, value in self.folds:
            layer = modules[tensor.rpartition(".")[0]]
            weight = layer.weight[:, cols.to(layer.weight.device)]
            if weight.dim() > 2:
                weight = weight.flatten(2).sum(2)
            delta = weight @ value.to(weight.device, weight.dtype)
            if bool(delta.abs().max() > 0) if delta.numel() else False:
                if layer.bias is None:
                    layer.bias = nn.Parameter(torch.zeros_like(delta))
                layer.bias.add_(delta)
        for (tensor, dim), flags in list(self.keep.items()):  # a bias a fold created follows its rows
            owner = modules.get(tensor.rpartition(".")[0])
            bias = f"{tensor.rpartition('.')[0]}.bias"
            if dim == 0 and tensor.endswith(".weight") and getattr(owner, "bias", None) is not None:
                self.keep.setdefault((bias, 0), flags)
        by_tensor: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for (tensor, dim), flags in self.keep.items():
            if not bool(flags.all()):
                by_tensor.setdefault(tensor, []).append((dim, flags.nonzero().flatten()))
        for tensor, cuts in by_tensor.items():
            owner_name, _, attr = tensor.rpartition(".")
            owner = modules[owner_name]
            value = getattr(owner, attr)
            for dim, index in cuts:
                value = value.index_select(dim, index.to(value.device))
            if attr in owner._parameters:
                owner._parameters[attr] = nn.Parameter(value.detach().clone(), requires_grad=True)
            else:
                owner._buffers[attr] = value.detach().clone()
            self.changed.add(owner_name)

    def kept_rows(self) -> dict[str, list[int]]:
        out = {}
        for (tensor, dim), flags in self.keep.items():
            if dim == 0 and tensor.endswith(".weight"):
                out[tensor.rpartition(".")[0]] = [int(i) for i in flags.nonzero().flatten()]
        return out

    def removed_rows(self) -> dict[str, int]:
        return {
            tensor.rpartition(".")[0]: int((~flags).sum())
            for (tensor, dim), flags in self.keep.items()
            if dim == 0 and tensor.endswith(".weight") and not bool(flags.all())
        }

    def conv_groups(self, before) -> dict[str, tuple[int, ...]]:
        out = {}
        for (tensor, dim), flags in self.keep.items():
            name = tensor.rpartition(".")[0]
            attrs = before.get(name, (None, None))[0] or {}
            groups = attrs.get("groups", 1)
            if dim != 0 or groups <= 1 or attrs.get("in_channels") == groups or bool(flags.all()):
                continue
            per = attrs["out_channels"] // groups
            whole = tuple(int(g) for g in (~flags).reshape(groups, per).all(1).nonzero().flatten())
            if whole:
                out[name] = whole
        return out


def _resize_modules(net: nn.Module, before, changed: set[str], groups: Groups, removal: _Removal) -> None:
    """Set the size attributes of every module whose tensors were sliced; give attention modules
    their head counts (or swap them for prunelab's equivalents); set the size attributes the trace
    found (``VisionTransformer.hidden_dim``)."""
    for name in sorted(changed, key=len, reverse=True):
        attrs = before.get(name, (None, None))[0]
        if attrs is not None:
            resize(net.get_submodule(name), attrs)
    for name in sorted({n.rpartition(".")[0] for n in changed} | changed, key=len, reverse=True):
        module = net.get_submodule(name)
        rule, head_dim = module_rule(module), before.get(name, (None, None))[1]
        if rule is None or head_dim is None:
            continue
        new = rule.resize(module, head_dim)
        if new is not module and name:
            net.set_submodule(name, new)
    for patch in groups.patches:
        setattr(
            net.get_submodule(patch.module), patch.attribute, _kept_positions(groups, patch.labels, removal)
        )


def _kept_positions(groups: Groups, labels: torch.Tensor, removal: _Removal) -> int:
    """How many of ``labels`` (positions of a dimension the code sizes by an attribute) remain."""
    flags = torch.ones(len(labels), dtype=torch.bool)
    positive = labels > 0
    if not bool(positive.any()):
        return len(labels)
    roots = groups.labels.unit.find(labels[positive])
    gone_roots = set()
    for (tensor, dim), keep in removal.keep.items():
        space = groups.labels.by_key.get((tensor, dim))
        if space is None:
            continue
        gone = space.labels()[~keep]
        gone_roots |= set(groups.labels.unit.find(gone).tolist()) if gone.numel() else set()
    flags[positive] = torch.tensor([int(r) not in gone_roots for r in roots.tolist()], dtype=torch.bool)
    return int(flags.sum())


# checks ------------------------------------------------------------------------------------------
def check_inputs(model: nn.Module, example: Any, batch: int, generator: torch.Generator) -> Any:
    """``example`` followed by ``batch`` fresh random inputs of its kind: N(0, 1) images, or token
    ids (without padding for a prunelab text model)."""
    if isinstance(example, tuple):
        return tuple(check_inputs(model, x, batch, generator) for x in example)
    if not isinstance(example, torch.Tensor):
        return example
    if example.is_floating_point():
        fresh = torch.randn((batch, *example.shape[1:]), generator=generator, dtype=example.dtype)
    else:
        from prunelab.models.encoder import example_tokens, is_encoder

        if is_encoder(model) and example.dim() == 2:
            fresh = example_tokens(model, example.shape[1], batch, generator)
        else:
            high = int(example.max()) + 1 if example.numel() else 2
            fresh = torch.randint(0, max(high, 2), (batch, *example.shape[1:]), generator=generator)
    return torch.cat([example, fresh.to(example.device)])


@contextlib.contextmanager
def dropout_off(*models: nn.Module) -> Iterator[None]:
    """Every dropout-like rate of ``models`` set to 0 for the duration (train-mode comparisons)."""
    saved = []
    for model in models:
        for module in model.modules():
            kind = type(module).__name__
            names = ["p"] if "Drop" in kind or "StochasticDepth" in kind else []
            names += ["drop_prob", "dropout", "attention_dropout"]
            for name in names:
                value = getattr(module, name, None)
                if isinstance(value, float) and value > 0:
                    saved.append((module, name, value))
                    setattr(module, name, 0.0)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _run(model: nn.Module, x: Any) -> list[torch.Tensor]:
    return tensors_in(model(*x) if isinstance(x, tuple) else model(x))


@torch.no_grad()
def check(
    net: nn.Module,
    reference: nn.Module,
    example: Any,
    generator: torch.Generator,
    batch: int,
    exact: bool,
    kept: dict[str, list[int]] | None = None,
) -> float:
    """Largest output difference on fresh random inputs, in eval and in train mode (dropout off,
    on copies, so running statistics stay); an exact compaction must stay within tolerance.

    A difference beyond tolerance is measured again in float64 where the models run in it (float32
    rounding, which a train-mode BatchNorm divides by a batch's small deviation, is not an inexact
    removal); models whose code insists on float32 keep the float32 verdict. A failure names the first layer (in
    execution order) whose kept outputs differ from the masked model's: the channel mixing the
    trace missed happens in the code feeding it.
    """
    x = check_inputs(reference, example, batch, generator)
    return max(_check_mode(reference, net, x, exact, kept, training) for training in (False, True))


def _check_mode(reference: nn.Module, net: nn.Module, x: Any, exact: bool, kept, training: bool) -> float:
    """:func:`check` in one mode: float32, then float64 where float32 is off (where the outputs
    differ is looked for only when float64 confirms it)."""
    try:
        pairs = _compared(reference, net, x, net, modes=(training,))
        return _checked(pairs, net, x, exact, kept, locate=False)
    except _Inexact as first:  # float32 rounding, or a real difference? float64 tells
        try:
            with torch.no_grad():
                pairs = _compared(
                    copy.deepcopy(reference).double(),
                    copy.deepcopy(net).double(),
                    _double(x),
                    net,
                    modes=(training,),
                )
        except PrunelabError:
            raise
        except Exception:  # code that builds float32 tensors of its own: the float32 verdict stands
            raise PrunelabError(str(first)) from None
        try:
            return _checked(pairs, net, _double(x), exact, kept)
        except _Inexact as exc:
            raise PrunelabError(str(exc)) from None


class _Inexact(Exception):
    pass


def _checked(
    pairs: dict, net: nn.Module, x: Any, exact: bool, kept: dict[str, list[int]] | None, locate: bool = True
) -> float:
    """The largest difference over the modes compared; :class:`_Inexact` beyond tolerance when
    ``exact`` (naming the first layer whose kept outputs differ, when ``locate``)."""
    error = 0.0
    for training, (a, b, want, got) in pairs.items():
        if len(want) != len(got) or any(w.shape != g.shape for w, g in zip(want, got, strict=False)):
            found = float("inf")
        else:
            found = max((float((w - g).abs().max()) for w, g in zip(want, got, strict=True)), default=0.0)
        scale = max((float(w.abs().max()) for w in want), default=0.0)
        tolerance = 1e-5 * max(1.0, scale)
        if exact and not found <= tolerance:
            where = _locate(a, b, x, kept or {}) if locate else ""
            raise _Inexact(
                f"compacting {type(net).__name__} changed its outputs{' in train mode' if training else ''} by "
                f"{found:.3g} (tolerance {tolerance:.3g}); {where}its forward code likely mixes or reorders "
                "channels in a way the trace does not see: such models cannot be compacted"
            )
        error = max(error, found)
    return error


def _double(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_double(v) for v in x)
    return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _compared(
    reference: nn.Module, net: nn.Module, x: Any, original: nn.Module, modes: tuple[bool, ...] = (False, True)
) -> dict:
    """Per mode (eval, train): the two models in it and their outputs on ``x`` (a model that fails
    in train mode uncompacted too is compared in eval mode only)."""
    out = {}
    for training in modes:
        a, b = (copy.deepcopy(reference), copy.deepcopy(net)) if training else (reference, net)
        a.train(training)
        b.train(training)
        with dropout_off(a, b):
            running = _Running(b)
            try:
                want = _run(a, x)
                got = _run(b, x)
            except Exception as exc:
                if training and not isinstance(exc, PrunelabError):
                    try:
                        _run(a, x)
                    except Exception:
                        continue
                raise PrunelabError(
                    f"compacting {type(original).__name__} broke its forward pass{' in train mode' if training else ''}: "
                    f"it fails {running.where()}: {_first_line(exc)}"
                ) from None
            finally:
                running.close()
        out[training] = (a, b, want, got)
    return out


class _Running:
    """While installed: which named submodules of ``model`` are running (innermost last), which
    one returned last."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.last = ""
        self.hooks = []
        for name, module in model.named_modules():
            if name:
                self.hooks.append(
                    module.register_forward_pre_hook(lambda m, a, name=name: self.stack.append(name))
                )
                self.hooks.append(module.register_forward_hook(lambda m, a, o, name=name: self._leave(name)))

    def _leave(self, name: str) -> None:
        if self.stack:
            self.stack.pop()
        self.last = name

    def where(self) -> str:
        """Where an exception raised now happened: ``"in layer 'x'"`` or the forward code after one."""
        if self.stack:
            return f"in layer {self.stack[-1]!r}"
        after = f", after layer {self.last!r}" if self.last else ""
        return f"outside any layer (in the model's forward code{after})"

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _locate(reference: nn.Module, net: nn.Module, x: Any, kept: dict[str, list[int]]) -> str:
    """``"the kept outputs of layer 'x' are the first to differ; "``, or ``""``."""
    outs: list[list[tuple[str, torch.Tensor, int]]] = [[], []]
    hooks = []
    for store, model in zip(outs, (reference, net), strict=True):
        for name, m in model.named_modules():
            if isinstance(m, LAYER_TYPES):
                dim = -1 if isinstance(m, nn.Linear) else 1
                hooks.append(
                    m.register_forward_hook(
                        lambda mod, a, o, name=name, store=store, dim=dim: (
                            store.append((name, o.detach(), dim)) if isinstance(o, torch.Tensor) else None
                        )
                    )
                )
    try:
        _run(reference, x)
        _run(net, x)
    finally:
        for h in hooks:
            h.remove()
    present = {name for name, _, _ in outs[1]}
    ref = [r for r in outs[0] if r[0] in present]
    for (name, r, dim), (other, o, _) in zip(ref, outs[1], strict=False):
        if name != other:
            return f"layer {other!r} runs where the masked model runs {name!r}; "
        if name in kept:
            r = r.index_select(dim, torch.tensor(kept[name], dtype=torch.long, device=r.device))
        if r.shape != o.shape:
            return f"the outputs of layer {name!r} change shape ({tuple(r.shape)} -> {tuple(o.shape)}); "
        if float((r - o).abs().max()) > 1e-4 * max(1.0, float(r.abs().max())):
            return f"the kept outputs of layer {name!r} are the first to differ; "
    return ""


# plans -----------------------------------------------------------------------------------------
def layer_plan(model: nn.Module) -> dict[str, dict[str, Any]]:
    """What rebuilds the architecture from the original one: per module, its type and
    size attributes (``{"type": "Conv2d", "attrs": {"in_channels": ..., ...}}``); a module prunelab
    swapped in has ``"swap": true`` and its constructor's attributes. A residual block replaced by
    its shortcut is ``{"type": "ShortcutBlock"}``, a PCA-shrunk layer ``{"type": "Factorized"}``.
    Every module with size attributes is listed, so the plan reads as the architecture."""
    from prunelab.compress.pca import Factorized

    plan: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, Factorized):  # a PCA-shrunk layer (prunelab.compress.pca); its parts follow
            plan[name] = {"type": "Factorized", "rank": m.rank}
            continue
        if isinstance(m, ShortcutBlock):  # a removed residual block; its shortcut's layers follow
            plan[name] = {"type": "ShortcutBlock", "shortcut": m.attribute}
            continue
        if type(m).__name__ in SWAPPED and isinstance(m, SWAPPED[type(m).__name__]):
            plan[name] = {"type": type(m).__name__, "swap": True, "attrs": m.plan()}
            continue
        attrs = shape_attributes(m) or {}
        extra = {}
        for attr in _patched(m):
            extra[attr] = getattr(m, attr)
        if attrs or extra:
            plan[name] = {"type": type(m).__name__, "attrs": {**attrs, **extra}}
    return plan


def _patched(module: nn.Module) -> tuple[str, ...]:
    from prunelab.coupling.modules import size_attributes

    return size_attributes(module)
