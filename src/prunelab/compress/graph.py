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
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

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
class _Group:
    """One set of coupled channels, numbered as the root layer's output channels."""

    root: nn.Module
    size: int
    producers: list[_Side]
    consumers: list[_Side]


@dataclass
class _Layer:
    """A conv/linear layer's unit-to-unit keep pattern and the units removed from it so far."""

    keep: torch.Tensor  # (out, in): any kept weight between output unit and input unit
    gone_rows: torch.Tensor
    gone_cols: torch.Tensor

    def rows_alive(self) -> torch.Tensor:
        return (self.keep & ~self.gone_cols[None]).any(1) & ~self.gone_rows

    def cols_alive(self) -> torch.Tensor:
        return (self.keep & ~self.gone_rows[:, None]).any(0) & ~self.gone_cols


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

    ``example_input`` is one batch the model accepts (its batch size does not matter); ``mask=None``
    takes the model's exact zeros. ``model`` is not modified. With ``exact`` (default) the outputs
    equal the masked model's to float tolerance, else :class:`PrunelabError`; ``exact=False`` also
    drops dead channels feeding zero-padded convs (border outputs change: see ``max_error``).
    """
    mask = mask if mask is not None else Mask.from_model_zeros(model)
    mask.check_fits(model)
    _check_supported(model)
    reference = copy.deepcopy(model).eval()
    mask.apply(reference)
    net = copy.deepcopy(reference)
    modules = {name: m for name, m in net.named_modules() if isinstance(m, LAYER_TYPES)}
    graph = _trace(net, example_input)
    groups = _groups(graph, net)
    generator = torch.Generator().manual_seed(seed)
    constants = _constants(net, modules, _random_like(example_input, check_batch, generator), exact)
    state = {name: _unit_keep(mask, name, m.weight) for name, m in modules.items()}

    removed = [torch.zeros(g.size, dtype=torch.bool) for g in groups]
    folds: dict[str, list[torch.Tensor]] = {}
    while True:
        rows = {name: layer.rows_alive() for name, layer in state.items()}
        cols = {name: layer.cols_alive() for name, layer in state.items()}
        changed = False
        for group, gone in zip(groups, removed, strict=True):
            used = [c.any(cols[c.layer], group.size) for c in group.consumers]
            unused = ~torch.stack(used).any(0) if used else torch.ones(group.size, dtype=torch.bool)
            dead = torch.zeros(group.size, dtype=torch.bool)
            if group.producers:
                dead = ~torch.stack([p.any(rows[p.layer], group.size) for p in group.producers]).any(0)
            foldable = torch.ones(group.size, dtype=torch.bool)
            for c, use in zip(group.consumers, used, strict=True):
                bad = c.any(~constants[c.layer][1], group.size)
                foldable &= ~use | ~bad
            take = (unused | (dead & foldable)) & ~gone
            if bool((take | gone).all()):  # every layer keeps one unit
                take[int((~gone).nonzero()[0])] = False
            if not take.any():
                continue
            changed = True
            fold = take & ~unused
            for c, use in zip(group.consumers, used, strict=True):
                chosen = c.index[(fold & use)[c.owner]]
                if len(chosen):
                    folds.setdefault(c.layer, []).append(chosen)
            gone |= take
            for p in group.producers:
                state[p.layer].gone_rows[p.index[take[p.owner]]] = True
            for c in group.consumers:
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
        if group.producers:
            dead = ~torch.stack([p.any(rows[p.layer], group.size) for p in group.producers]).any(0)
            if int((dead & ~gone).sum()):
                kept_dead[group.producers[0].layer] = int((dead & ~gone).sum())
        if gone.any():
            pruner = graph.get_pruner_of_module(group.root)
            idxs = [int(i) for i in gone.nonzero().flatten()]
            graph.get_pruning_group(group.root, pruner.prune_out_channels, idxs).prune()
    net.eval()
    error = _check(net, reference, example_input, generator, check_batch, exact)
    return CompactResult(net, layer_plan(net), kept, dropped, kept_dead, error)


# checks and tracing ---------------------------------------------------------------------------
def _check_supported(model: nn.Module) -> None:
    """Refuse, by name, a layer whose parameters compaction cannot reshape."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups != 1:
            raise PrunelabError(
                f"cannot compact layer {name!r}: grouped convolutions (groups={module.groups}) are not supported"
            )
        if list(module.parameters(recurse=False)) and not isinstance(module, SUPPORTED_TYPES):
            raise PrunelabError(
                f"cannot compact layer {name or '(root)'!r} ({type(module).__name__}): only Linear, Conv1d/2d/3d "
                "and BatchNorm layers can be reshaped"
            )


def _trace(net: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``net``; a failure names the layer it happened in."""
    running: list[str] = []

    def enter(module: nn.Module, args: Any, name: str) -> None:
        running.append(name)

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        running.pop()

    hooks = []
    for name, module in net.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: enter(m, a, name)))
            hooks.append(module.register_forward_hook(leave))
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(net, example_inputs=example_input, verbose=False)
    except Exception as exc:
        where = f"in layer {running[-1]!r}" if running else "outside any layer (in the model's forward code)"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PrunelabError(
            f"cannot trace {type(net).__name__} for compaction: failed {where}: {first}"
        ) from None
    finally:
        for h in hooks:
            h.remove()


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
        producers, consumers = [], []
        for item in g:
            module = item.dep.target.module
            if not isinstance(module, LAYER_TYPES):
                continue
            side = _Side(
                names[module], torch.tensor(item.idxs, dtype=torch.long), torch.tensor(item.root_idxs)
            )
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                producers.append(side)
            elif graph.is_in_channel_pruning_fn(item.dep.handler):
                consumers.append(side)
        groups.append(_Group(g[0].dep.target.module, len(g[0].idxs), producers, consumers))
    return groups


# constants of dead channels --------------------------------------------------------------------
def _unit_keep(mask: Mask, layer: str, weight: torch.Tensor) -> _Layer:
    key = f"{layer}.weight" if layer else "weight"
    keep = mask[key].cpu() if key in mask else torch.ones(weight.shape, dtype=torch.bool)
    keep = keep.flatten(2).any(2) if keep.dim() > 2 else keep
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
            size = layer.weight.shape[1]
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
) -> float:
    """Largest output difference on fresh random inputs; an exact compaction must stay within tolerance."""
    x = torch.cat([example, _random_like(example, batch, generator)])
    ref, out = reference(x), net(x)
    if not isinstance(ref, torch.Tensor):
        raise PrunelabError(
            f"{type(net).__name__} returns {type(ref).__name__}; compaction checks need a tensor"
        )
    error = float((out - ref).abs().max()) if out.shape == ref.shape else float("inf")
    tolerance = 1e-5 * max(1.0, float(ref.abs().max()))
    if exact and not error <= tolerance:
        raise PrunelabError(
            f"compacting {type(net).__name__} changed its outputs by {error:.3g} (tolerance {tolerance:.3g}); "
            "its forward code likely mixes channels in a way the dependency graph does not see"
        )
    return error


# plans -----------------------------------------------------------------------------------------
def layer_plan(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Constructor shapes of every reshapeable layer: enough to rebuild the architecture."""
    plan: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            spec = {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spec = {"in_channels": m.in_channels, "out_channels": m.out_channels, "bias": m.bias is not None}
        elif isinstance(m, NORM_TYPES):
            spec = {"num_features": m.num_features}
        else:
            continue
        plan[name] = {"type": type(m).__name__, **spec}
    return plan
