"""Physical removal: a genuinely smaller ``nn.Module`` computing what the masked model computes.

Torch-Pruning's dependency graph (pinned 1.6.1) is used only to learn which layers share a channel
(the producing conv/linear, its BatchNorm entry, the consumers' input columns, residual additions)
and to cut exactly the channels chosen here, through ``get_pruning_group`` with explicit indices;
its ratio/importance helpers are never used. Swapping it out means rewriting this module only.

A channel is removed when the mask makes it

* unused: every consumer's columns for it are pruned, so it contributes nothing; or
* dead: every producer's row for it is pruned (in residual groups, in *every* coupled layer), so it
  carries a constant (its bias, BatchNorm shift, ReLU...). The constant is measured on the masked
  model and folded into the consumers' biases, which is exact for linear layers and unpadded convs,
  and for zero-padded convs only when the constant is 0 (border pixels see padding, not the
  constant). Such a channel is kept unless ``exact=False``.

Removals cascade (a unit whose live inputs are all removed is dead in turn), every layer keeps at
least one unit, and every compaction is checked against the masked model on random inputs.
Before any channel goes, a residual block whose whole branch the mask zeroes is replaced by its
shortcut (:mod:`prunelab.compress.blocks`), so removed blocks leave the architecture.

Depthwise convs (``groups == in_channels == out_channels``, MobileNet's) couple their input and
output channel: channel ``c`` goes from the conv feeding it, from the depthwise conv itself and
from the layers reading its output, all at once. Torch-Pruning's group holds all three; here the
group is split into its channel *spaces* (before and after each depthwise conv), and a channel
goes only when it can go in every space. Before the depthwise conv, the depthwise conv's own use
of the channel does not count (the channel leaves it too); after it, its filter counts as any
producer's row. So a channel goes when the depthwise filter is pruned (its output is a constant,
folded into the next layer where exact) or nothing reads the depthwise output, whatever the
feeding conv's mask says about that channel; a channel the depthwise conv still filters stays,
even when the feeding conv's filter for it is pruned (a constant through a zero-padded depthwise
conv is not constant at the border). Masks need not choose consistent filters for coupled
layers: the result always computes what the masked model computes. A depthwise conv fed by the
model input keeps every channel. The grouped conv of a ResNeXt bottleneck (torchvision's
``Bottleneck.conv2``) whose mask keeps or prunes each group whole loses its zero groups before
(:mod:`prunelab.compress.groups`: fewer groups, and the channels of the convs around it that only
those groups used); then every channel it reads or writes stays. Other grouped convs
(``1 < groups``, not depthwise, channel multipliers included) are refused by name.

What cannot be compacted fails with a :class:`PrunelabError` naming the layer: a layer with
parameters that is not Linear/Conv/BatchNorm, a model that cannot be traced (the layer the trace
failed in), a conv/linear called twice in one forward pass or whose weight is used by functional
code without the layer being called, and forward code that mixes channels behind the graph's back
(the compacted model fails after, or first differs from the masked one at, a named layer).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunelab.compress.blocks import ShortcutBlock, remove_blocks
from prunelab.compress.groups import bottleneck_convs, remove_groups, whole_groups
from prunelab.errors import PrunelabError
from prunelab.pruning.mask import Mask

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SUPPORTED_TYPES = LAYER_TYPES + NORM_TYPES


@dataclass
class CompactResult:
    """The compacted model (eval mode), its architecture plan, and what was kept."""

    model: nn.Module
    plan: dict[str, dict[str, Any]]
    """Layer name -> constructor shapes (``{"type": "Conv2d", "in_channels": ..., ...}``), JSON-able."""
    kept_channels: dict[str, list[int]]
    """Producer layer -> original indices of the output units it keeps."""
    removed: dict[str, int] = field(default_factory=dict)
    """Producer layer -> number of output units removed."""
    kept_dead: dict[str, int] = field(default_factory=dict)
    """Producer layer -> dead units kept because folding their constant would not be exact."""
    max_error: float = 0.0
    """Largest |compact - masked| output difference seen on the check inputs."""
    removed_blocks: tuple[str, ...] = ()
    """Residual blocks whose whole branch the mask zeroes, replaced by their shortcut
    (:class:`prunelab.compress.blocks.ShortcutBlock`)."""
    removed_groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Grouped conv -> the groups the mask zeroes, removed from it (:mod:`prunelab.compress.groups`)."""


@dataclass
class _Side:
    """One layer's weight rows (producer) or columns (consumer) that belong to a group's channels."""

    layer: str
    index: torch.Tensor  # row or column of the layer's weight
    owner: torch.Tensor  # the group channel it belongs to

    def any(self, flags: torch.Tensor, size: int) -> torch.Tensor:
        """Per channel: is ``flags`` (one per row/column) true for any of its rows/columns?"""
        hits = torch.zeros(size, dtype=torch.long).index_add_(0, self.owner, flags[self.index].long())
        return hits > 0


@dataclass
class _Space:
    """Layers writing (producers) and reading (consumers) the same values of a group's channels."""

    producers: list[_Side]
    consumers: list[_Side]


@dataclass
class _Group:
    """One set of coupled channels, numbered as the root layer's output channels.

    Usually one space; a depthwise conv separates the space before it from the one after it.
    ``frozen`` groups (a depthwise conv fed by the model input) keep every channel.
    """

    root: nn.Module
    size: int
    spaces: list[_Space]
    frozen: bool = False

    @property
    def producers(self) -> list[_Side]:
        return [p for space in self.spaces for p in space.producers]


@dataclass
class _Layer:
    """A conv/linear layer's unit-to-unit keep pattern and the units removed from it so far."""

    keep: torch.Tensor  # (out, in): any kept weight between output unit and input unit
    gone_rows: torch.Tensor
    gone_cols: torch.Tensor
    # (units gone on the other side, result): removals only grow, so the count tells staleness;
    # this spares re-reducing a classifier's huge keep pattern on every pass
    _rows: tuple[int, torch.Tensor] | None = field(default=None, repr=False)
    _cols: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    def rows_alive(self) -> torch.Tensor:
        version = int(self.gone_cols.sum())
        if self._rows is None or self._rows[0] != version:
            self._rows = (version, (self.keep & ~self.gone_cols[None]).any(1))
        return self._rows[1] & ~self.gone_rows

    def cols_alive(self) -> torch.Tensor:
        version = int(self.gone_rows.sum())
        if self._cols is None or self._cols[0] != version:
            self._cols = (version, (self.keep & ~self.gone_rows[:, None]).any(0))
        return self._cols[1] & ~self.gone_cols


def compact(
    model: nn.Module,
    mask: Mask | None,
    example_input: torch.Tensor,
    *,
    exact: bool = True,
    check_batch: int = 4,
    seed: int = 0,
) -> CompactResult:
    """A smaller copy of ``model`` (masked by ``mask``) without the units the mask leaves dead or unused.

    A transformer encoder loses whole heads and FFN neurons instead (:mod:`prunelab.compress.encoder`).
    ``example_input`` is one batch the model accepts (its batch size does not matter); ``mask=None``
    takes the model's exact zeros. ``model`` is not modified. With ``exact`` (default) the outputs
    equal the masked model's to float tolerance, else :class:`PrunelabError`; ``exact=False`` also
    drops dead channels feeding zero-padded convs (border outputs change: see ``max_error``).
    """
    from prunelab.models.encoder import is_encoder

    if is_encoder(model):  # heads and FFN neurons: see prunelab.compress.encoder
        from prunelab.compress.encoder import compact_encoder

        return compact_encoder(model, mask, example_input, check_batch=check_batch, seed=seed)
    mask = mask if mask is not None else Mask.from_model_zeros(model)
    mask.check_fits(model)
    _check_supported(model, mask)
    reference = copy.deepcopy(model).eval()
    mask.apply(reference)
    net = copy.deepcopy(reference)
    blocks = remove_blocks(net)  # first whole residual blocks, then whole groups, then channels
    cut = remove_groups(net, mask)
    mask = cut.mask
    modules = {name: m for name, m in net.named_modules() if isinstance(m, LAYER_TYPES)}
    graph = _trace(net, example_input)
    groups = _groups(graph, net)
    generator = torch.Generator().manual_seed(seed)
    constants = _constants(net, modules, _random_like(example_input, check_batch, generator), exact)
    state = {name: _unit_keep(mask, name, m) for name, m in modules.items()}

    removed = [torch.zeros(g.size, dtype=torch.bool) for g in groups]
    folds: dict[str, list[torch.Tensor]] = {}
    while True:
        rows = {name: layer.rows_alive() for name, layer in state.items()}
        cols = {name: layer.cols_alive() for name, layer in state.items()}
        changed = False
        for group, gone in zip(groups, removed, strict=True):
            if group.frozen:
                continue
            take = ~gone
            uses = []
            for space in group.spaces:
                used = [c.any(cols[c.layer], group.size) for c in space.consumers]
                unused = ~torch.stack(used).any(0) if used else torch.ones(group.size, dtype=torch.bool)
                dead = _dead(space, rows, group.size)
                foldable = torch.ones(group.size, dtype=torch.bool)
                for c, use in zip(space.consumers, used, strict=True):
                    bad = c.any(~constants[c.layer][1], group.size)
                    foldable &= ~use | ~bad
                take = take & (unused | (dead & foldable))
                uses.append((used, unused))
            if bool((take | gone).all()):  # every layer keeps one unit
                take[int((~gone).nonzero()[0])] = False
            if not take.any():
                continue
            changed = True
            for space, (used, unused) in zip(group.spaces, uses, strict=True):
                fold = take & ~unused
                for c, use in zip(space.consumers, used, strict=True):
                    chosen = c.index[(fold & use)[c.owner]]
                    if len(chosen):
                        folds.setdefault(c.layer, []).append(chosen)
            gone |= take
            for space in group.spaces:
                for p in space.producers:
                    state[p.layer].gone_rows[p.index[take[p.owner]]] = True
                for c in space.consumers:
                    state[c.layer].gone_cols[c.index[take[c.owner]]] = True
        if not changed:
            break

    rows = {name: layer.rows_alive() for name, layer in state.items()}
    with torch.no_grad():
        for layer, chosen in folds.items():
            columns = torch.cat(chosen)
            _fold(modules[layer], columns, constants[layer][0][columns])
    kept: dict[str, list[int]] = {}
    dropped: dict[str, int] = {}
    kept_dead: dict[str, int] = {}
    for group, gone in zip(groups, removed, strict=True):
        for p in group.producers:
            kept[p.layer] = sorted(int(i) for i in p.index[~gone[p.owner]])
            dropped[p.layer] = int(gone[p.owner].sum())
        for space in group.spaces:
            left = int((_dead(space, rows, group.size) & ~gone).sum())
            if space.producers and left:
                kept_dead[space.producers[0].layer] = left
        if gone.any():
            pruner = graph.get_pruner_of_module(group.root)
            idxs = [int(i) for i in gone.nonzero().flatten()]
            graph.get_pruning_group(group.root, pruner.prune_out_channels, idxs).prune()
    for layer, original in cut.kept.items():  # channels the group removal kept, numbered as before it
        kept[layer] = [original[i] for i in kept.get(layer, range(len(original)))]
        dropped[layer] = dropped.get(layer, 0) + cut.removed[layer]
    net.eval()
    error = _check(net, reference, example_input, generator, check_batch, exact, kept)
    return CompactResult(net, layer_plan(net), kept, dropped, kept_dead, error, blocks, cut.groups)


def _dead(space: _Space, rows: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Per channel: does every producer of the space leave it without a live row (a constant)?"""
    if not space.producers:
        return torch.zeros(size, dtype=torch.bool)
    return ~torch.stack([p.any(rows[p.layer], size) for p in space.producers]).any(0)


def _grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise (``groups > 1``)."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups > 1 and not _depthwise(module)
    )


def _depthwise(module: nn.Module) -> bool:
    """A depthwise conv: one filter per input channel (``groups == in_channels == out_channels > 1``)."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


# checks and tracing ---------------------------------------------------------------------------
def _check_supported(model: nn.Module, mask: Mask) -> None:
    """Refuse, by name, a layer whose parameters compaction cannot reshape."""
    bottlenecks = {found.conv for found in bottleneck_convs(model)}
    for name, module in model.named_modules():
        conv = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        if conv and module.groups != 1 and not _depthwise(module):
            if name in bottlenecks and whole_groups(mask, name, module):
                continue  # ResNeXt's: whole groups go (prunelab.compress.groups), the rest stays
            raise PrunelabError(
                f"cannot compact layer {name!r}: grouped convolutions (groups={module.groups}, "
                f"{module.in_channels} -> {module.out_channels} channels) are not supported; only "
                "depthwise ones (groups == in_channels == out_channels) are, and the grouped conv2 of "
                "torchvision's Bottleneck (ResNeXt) when its mask keeps or prunes each group whole "
                "(structure selection with unit 'groups')"
            )
        if list(module.parameters(recurse=False)) and not isinstance(module, SUPPORTED_TYPES):
            raise PrunelabError(
                f"cannot compact layer {name or '(root)'!r} ({type(module).__name__}): only Linear, Conv1d/2d/3d "
                "and BatchNorm layers can be reshaped"
            )


class _Running:
    """While installed: which named submodules of ``model`` are running (innermost last), which
    one returned last, and how often each was called."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.last = ""
        self.calls: dict[str, int] = {}
        self.hooks = []
        for name, module in model.named_modules():
            if name:
                self.hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: self._enter(name)))
                self.hooks.append(module.register_forward_hook(lambda m, a, o, name=name: self._leave(name)))

    def _enter(self, name: str) -> None:
        self.stack.append(name)
        self.calls[name] = self.calls.get(name, 0) + 1

    def _leave(self, name: str) -> None:
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


def _trace(net: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``net``; a failure names the layer it happened in."""
    running = _Running(net)
    outputs: list[Any] = []
    root = net.register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                net, example_inputs=example_input, forward_fn=_call, verbose=False
            )
    except Exception as exc:
        raise PrunelabError(
            f"cannot trace {type(net).__name__} for compaction: failed {running.where()}: {_first_line(exc)}"
        ) from None
    finally:
        running.close()
        root.remove()
    _check_calls(net, running.calls, outputs)
    return graph


def _call(model: nn.Module, x: torch.Tensor) -> Any:
    """One call on the whole batch (Torch-Pruning's default unpacks a tensor along its batch
    dimension, then retries with the tensor, so a model could be traced on one unbatched example)."""
    return model(x)


def _check_calls(net: nn.Module, calls: dict[str, int], outputs: list[Any]) -> None:
    """Refuse a conv/linear layer called more than once, or whose weights reach the output without
    the layer being called.

    Torch-Pruning sees layers through their calls: a weight read by functional code
    (``F.conv2d(x, self.conv.weight)``) would keep its old shape while its inputs shrink, and a layer
    applied twice would need its input and output channels cut alike.
    """
    for name, m in net.named_modules():
        if isinstance(m, LAYER_TYPES) and calls.get(name, 0) > 1:
            raise PrunelabError(
                f"cannot compact {type(net).__name__}: layer {name!r} ({type(m).__name__}) is called "
                f"{calls[name]} times in one forward pass; compaction needs every conv/linear layer "
                "called once"
            )
    uncalled = {
        id(p): name
        for name, m in net.named_modules()
        if isinstance(m, LAYER_TYPES) and name not in calls
        for p in m.parameters(recurse=False)
    }
    if not uncalled:
        return
    stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)
        if variable is not None and id(variable) in uncalled:
            name = uncalled[id(variable)]
            layer = type(net.get_submodule(name)).__name__
            raise PrunelabError(
                f"cannot compact {type(net).__name__}: layer {name!r} ({layer}) is never called, yet its "
                f"weights reach the output (functional code such as F.conv2d(x, self.{name}.weight) uses "
                "them); compaction reshapes only layers the model calls"
            )
        stack += [next_fn for next_fn, _ in fn.next_functions]


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) output."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _output_bound(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Conv/linear layers whose outputs reach the model output without passing another such layer."""
    bound = []
    for module, node in graph.module2node.items():
        if not isinstance(module, LAYER_TYPES):
            continue
        stack, seen = list(node.outputs), set()
        reaches = not node.outputs
        while stack and not reaches:
            n = stack.pop()
            if id(n) in seen or isinstance(n.module, LAYER_TYPES):
                continue
            seen.add(id(n))
            reaches = not n.outputs
            stack += n.outputs
        if reaches:
            bound.append(module)
    return bound


def _groups(graph: tp.DependencyGraph, net: nn.Module) -> list[_Group]:
    """Coupled-channel groups rooted at every conv/linear output not wired to the model output."""
    names = {module: name for name, module in net.named_modules()}
    ignored = _output_bound(graph)
    output = getattr(net, "output_layer", None)
    if isinstance(output, str):
        ignored.append(net.get_submodule(output))
    groups = []
    for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=LAYER_TYPES):
        producers: list[tuple[nn.Module, _Side]] = []
        consumers: list[tuple[nn.Module, _Side]] = []
        for item in g:
            module = item.dep.target.module
            if not isinstance(module, LAYER_TYPES):
                continue
            side = _Side(
                names[module], torch.tensor(item.idxs, dtype=torch.long), torch.tensor(item.root_idxs)
            )
            # a depthwise conv's one handler prunes its input and output: it is a producer here
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                producers.append((module, side))
            elif graph.is_in_channel_pruning_fn(item.dep.handler):
                consumers.append((module, side))
        depthwise = [m for m, _ in producers if _depthwise(m)]
        if depthwise:
            spaces = _spaces(graph, producers, consumers)
            frozen = any(_fed_by_input(graph, m) for m in depthwise)
        else:
            spaces, frozen = [_Space([p for _, p in producers], [c for _, c in consumers])], False
        # a grouped conv's channels stay: its groups were cut already (prunelab.compress.groups)
        frozen = frozen or any(_grouped(m) for m, _ in producers + consumers)
        groups.append(_Group(g[0].dep.target.module, len(g[0].idxs), spaces, frozen))
    return groups


def _reached(graph: tp.DependencyGraph, module: nn.Module) -> list[nn.Module]:
    """Conv/linear layers that read ``module``'s output without another conv/linear in between."""
    stack, seen, found = list(graph.module2node[module].outputs), set(), []
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n.module, LAYER_TYPES):
            found.append(n.module)
        else:
            stack += n.outputs
    return found


def _fed_by_input(graph: tp.DependencyGraph, module: nn.Module) -> bool:
    """Whether some of ``module``'s input comes from the model input, not from a conv/linear layer."""
    stack, seen = list(graph.module2node[module].inputs), set()
    if not stack:
        return True
    while stack:
        n = stack.pop()
        if id(n) in seen or isinstance(n.module, LAYER_TYPES):
            continue
        seen.add(id(n))
        if not n.inputs:
            return True
        stack += n.inputs
    return False


def _spaces(
    graph: tp.DependencyGraph,
    producers: list[tuple[nn.Module, _Side]],
    consumers: list[tuple[nn.Module, _Side]],
) -> list[_Space]:
    """Split a group holding depthwise convs into the spaces before and after each of them.

    A producer and a consumer share a space when the consumer reads the producer's output with no
    conv/linear in between; a depthwise conv's output is one end, its input (which it takes with it
    when a channel goes) none. Producers sharing a consumer (residual additions) share a space.
    """
    parent = list(range(len(producers) + len(consumers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    readers: dict[int, list[int]] = {}
    for j, (module, _) in enumerate(consumers):
        readers.setdefault(id(module), []).append(len(producers) + j)
    for i, (module, _) in enumerate(producers):
        for reader in _reached(graph, module):
            for j in readers.get(id(reader), []):
                parent[find(i)] = find(j)
    spaces: dict[int, _Space] = {}
    for i, (_, side) in enumerate(producers):
        spaces.setdefault(find(i), _Space([], [])).producers.append(side)
    for j, (_, side) in enumerate(consumers):
        spaces.setdefault(find(len(producers) + j), _Space([], [])).consumers.append(side)
    return list(spaces.values())


# constants of dead channels --------------------------------------------------------------------
def _unit_keep(mask: Mask, layer: str, module: nn.Module) -> _Layer:
    key = f"{layer}.weight" if layer else "weight"
    keep = mask[key].cpu() if key in mask else torch.ones(module.weight.shape, dtype=torch.bool)
    keep = keep.flatten(2).any(2) if keep.dim() > 2 else keep
    groups = getattr(module, "groups", 1)
    if groups > 1:  # a group's outputs read its inputs only (depthwise: output c reads input c)
        keep = torch.block_diag(*keep.to(torch.uint8).split(keep.shape[0] // groups)).bool()
    return _Layer(
        keep, torch.zeros(keep.shape[0], dtype=torch.bool), torch.zeros(keep.shape[1], dtype=torch.bool)
    )


def _random_like(example: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    shape = (batch, *example.shape[1:])
    return torch.randn(shape, generator=generator, dtype=example.dtype).to(example.device)


@torch.no_grad()
def _constants(
    net: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor, exact: bool
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per input unit of each layer: its value on the first of ``x``, and whether folding it is exact.

    Folding is exact for a unit constant over the batch (and positions) when the layer is linear or
    pads with no zeros; a zero-padded conv also needs the constant to be 0 (unless not ``exact``).
    """
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0].detach()))
        for name, m in layers.items()
    ]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, layer in layers.items():
        if name not in seen:  # never called: nothing flows through it
            size = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            out[name] = (torch.zeros(size), torch.zeros(size, dtype=torch.bool))
            continue
        v = seen[name]
        units = (
            v.reshape(-1, v.shape[-1]).t() if isinstance(layer, nn.Linear) else v.transpose(0, 1).flatten(1)
        )
        units = units.float().cpu()
        value = units[:, 0]
        ok = (units - value[:, None]).abs().amax(1) <= 1e-6 * (1.0 + value.abs())
        if exact and not isinstance(layer, nn.Linear) and _zero_padded(layer):
            ok &= value == 0
        out[name] = (value, ok)
    return out


def _zero_padded(conv: nn.Module) -> bool:
    """Whether border outputs of ``conv`` see zeros instead of a constant input (no exact fold)."""
    if conv.padding_mode != "zeros" or conv.padding == "valid":
        return False
    if conv.padding == "same":
        return any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _fold(layer: nn.Module, cols: torch.Tensor, value: torch.Tensor) -> None:
    """Add the constant inputs' contribution ``W[:, cols] @ value`` to the layer's bias."""
    weight = layer.weight[:, cols.to(layer.weight.device)]
    if weight.dim() > 2:
        weight = weight.flatten(2).sum(2)
    delta = weight @ value.to(weight.device, weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(delta))
    layer.bias.add_(delta)


@torch.no_grad()
def _check(
    net: nn.Module,
    reference: nn.Module,
    example: torch.Tensor,
    generator: torch.Generator,
    batch: int,
    exact: bool,
    kept: dict[str, list[int]] | None = None,
) -> float:
    """Largest output difference on fresh random inputs; an exact compaction must stay within tolerance.

    A failure names the first layer (in execution order) whose kept outputs differ from the masked
    model's: the channel mixing the dependency graph missed happens in the code feeding it.
    """
    x = torch.cat([example, _random_like(example, batch, generator)])
    ref = reference(x)
    running = _Running(net)
    try:
        out = net(x)
    except Exception as exc:
        raise PrunelabError(
            f"compacting {type(net).__name__} broke its forward pass: it fails {running.where()}: "
            f"{_first_line(exc)}; its forward code likely depends on channel counts or mixes "
            "channels in a way the dependency graph does not see (a channel shuffle, a view with "
            "fixed sizes): such models cannot be compacted"
        ) from None
    finally:
        running.close()
    if not isinstance(ref, torch.Tensor):
        raise PrunelabError(
            f"{type(net).__name__} returns {type(ref).__name__}; compaction checks need a tensor"
        )
    error = float((out - ref).abs().max()) if out.shape == ref.shape else float("inf")
    tolerance = 1e-5 * max(1.0, float(ref.abs().max()))
    if exact and not error <= tolerance:
        ref_layers, out_layers = _LayerOutputs(reference), _LayerOutputs(net)
        try:  # again, keeping every layer's output this time, to say where they part
            reference(x)
            net(x)
        finally:
            ref_layers.close()
            out_layers.close()
        where = _first_difference(ref_layers.outputs, out_layers.outputs, kept or {})
        raise PrunelabError(
            f"compacting {type(net).__name__} changed its outputs by {error:.3g} (tolerance {tolerance:.3g}); "
            f"{where}its forward code likely mixes or reorders channels in a way the dependency graph "
            "does not see (a channel shuffle, roll or indexing, or a layer's weight used outside its "
            "own forward): such models cannot be compacted"
        )
    return error


class _LayerOutputs:
    """While installed: each conv/linear call's (layer, output, channel dim), in execution order."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: list[tuple[str, torch.Tensor, int]] = []
        self.hooks = [
            m.register_forward_hook(
                lambda mod, args, out, name=name: self._record(
                    name, out, -1 if isinstance(mod, nn.Linear) else 1
                )
            )
            for name, m in model.named_modules()
            if isinstance(m, LAYER_TYPES)
        ]

    def _record(self, name: str, out: Any, dim: int) -> None:
        if isinstance(out, torch.Tensor):
            self.outputs.append((name, out.detach(), dim))

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _first_difference(
    ref: list[tuple[str, torch.Tensor, int]],
    out: list[tuple[str, torch.Tensor, int]],
    kept: dict[str, list[int]],
) -> str:
    """``"the kept outputs of layer 'x' are the first to differ; "``, or ``""`` if none can be blamed.

    Layers of residual blocks the compaction removed run in ``ref`` only: they are passed over.
    """
    present = {name for name, _, _ in out}
    ref = [r for r in ref if r[0] in present]
    for (name, r, dim), (other, o, _) in zip(ref, out, strict=False):
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
    """Constructor shapes of every reshapeable layer: enough to rebuild the architecture.

    Convs with ``groups != 1`` (depthwise ones, and ResNeXt bottlenecks' grouped convs) also
    record ``groups``, which compaction changes for them. A residual block replaced by its
    shortcut is ``{"type": "ShortcutBlock"}``, before its shortcut's layers.
    """
    from prunelab.compress.pca import Factorized

    plan: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, Factorized):  # a PCA-shrunk layer (prunelab.compress.pca); its parts follow
            plan[name] = {"type": "Factorized", "rank": m.rank}
            continue
        if isinstance(m, ShortcutBlock):  # a removed residual block; its shortcut's layers follow
            plan[name] = {"type": "ShortcutBlock", "shortcut": m.attribute}
            continue
        if isinstance(m, nn.Linear):
            spec = {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spec = {"in_channels": m.in_channels, "out_channels": m.out_channels, "bias": m.bias is not None}
            if m.groups != 1:  # depthwise: as many groups as channels left; ResNeXt: the groups left
                spec["groups"] = m.groups
        elif isinstance(m, NORM_TYPES):
            spec = {"num_features": m.num_features}
        else:
            continue
        plan[name] = {"type": type(m).__name__, **spec}
    return plan
