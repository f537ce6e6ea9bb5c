"""Calibrating a decoder language model block by block, as SparseGPT (Frantar & Alistarh 2023) and
Wanda (Sun et al. 2023) do: what the one-shot methods share.

The calibration windows run through the embeddings once, up to the first decoder block, where their
hidden states (and whatever else the model hands its blocks: the causal mask, the rotary position
embeddings, ...) are caught. Then, for each block in order:

1. the block runs on the hidden states, with a hook on each of its chosen Linear layers handing
   that layer's inputs, ``(tokens, in_features)``, to the method's statistics (a Hessian ``XX^T``,
   squared norms per input feature);
2. the method prunes the block's layers from those statistics, giving their new weights (zeros where
   pruned; SparseGPT also refits the kept ones);
3. the block runs again with the new weights: its outputs are the next block's inputs, so each block
   is calibrated on what the already-pruned blocks before it produce. The block's original weights
   are put back (the model is never modified: the caller gets the new weights).

A pruned head (an untied ``lm_head``) is calibrated last, on the final norm's output. Memory is about
one block's activations for the calibration windows, never the whole model's. A progress bar per
block, when the context gives one. Every step runs in eval mode without gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from prunelab.errors import SpecError
from prunelab.models.decoder import decoder_of
from prunelab.pruning.context import PruneContext
from prunelab.pruning.mask import Mask
from prunelab.pruning.methods import PruningMethod
from prunelab.pruning.rowgroups import RowGroups
from prunelab.pruning.scorers import eval_mode
from prunelab.pruning.structure import STRUCTURES, Structure


class LayerStats(Protocol):
    """What a method accumulates about one layer's inputs."""

    def add(self, x: torch.Tensor) -> None:
        """``x``: the layer's inputs for one batch, ``(tokens, in_features)``."""


StatsFactory = Callable[[str, nn.Module], LayerStats]
PruneStage = Callable[[str, Mapping[str, LayerStats]], Mapping[str, torch.Tensor]]


class _Caught(Exception):
    """Stops the model's forward at the first block once its inputs are caught."""


@dataclass
class BlockInputs:
    """The first block's inputs, per calibration batch: hidden states, and the other arguments."""

    hidden: list[torch.Tensor]
    args: list[tuple]
    kwargs: list[dict[str, Any]]


@torch.no_grad()
def first_block_inputs(model: nn.Module, first: nn.Module, batches: Sequence[tuple]) -> BlockInputs:
    """Run each batch up to block ``first`` and keep what it would have been called with."""
    caught = BlockInputs([], [], [])

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        caught.hidden.append(args[0])
        caught.args.append(tuple(args[1:]))
        caught.kwargs.append(dict(kwargs))
        raise _Caught

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for x, _ in batches:
            with contextlib.suppress(_Caught):
                model(x)
    finally:
        handle.remove()
    return caught


class _InputHooks:
    """Hooks handing each layer's inputs to its statistics. Layers that read the very same tensor
    object (a block's query, key and value projections) share one statistics object, accumulated
    once: the sharing is found on the first batch and kept for the others."""

    def __init__(self, modules: Mapping[str, nn.Module], stats: dict[str, LayerStats]) -> None:
        self.stats = stats
        self.shared: dict[str, str] = {}  # layer -> the layer whose statistics it shares
        # id -> (the tensor, kept alive so that no other takes its id, and the layer that added it)
        self.batch: dict[int, tuple[torch.Tensor, str]] = {}
        self.first = True
        self.handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]

    def next_batch(self) -> None:
        self.first = False
        self.batch.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if name in self.shared:
                return
            x = args[0]
            seen = self.batch.get(id(x))
            owner = seen[1] if seen is not None and seen[0] is x else None
            if self.first and owner is not None and type(self.stats[owner]) is type(self.stats[name]):
                self.shared[name] = owner
                self.stats[name] = self.stats[owner]
                return
            self.batch[id(x)] = (x, name)
            self.stats[name].add(x.reshape(-1, x.shape[-1]))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def _weights(modules: Mapping[str, nn.Module], new: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """The modules' weights replaced by ``new`` (by module name) for the duration, then put back."""
    old = {}
    with torch.no_grad():
        for name, weight in new.items():
            param = modules[name].weight
            old[name] = param.detach().clone()
            param.copy_(weight.to(param.device, param.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, weight in old.items():
                modules[name].weight.copy_(weight)


def _out(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


@contextlib.contextmanager
def _bar(progress: Callable[[str], Any] | None, label: str) -> Iterator[Callable[[int, int], None]]:
    if progress is None:
        yield lambda done, total: None
        return
    with progress(label) as update:
        yield update if callable(update) else (lambda done, total: None)


@torch.no_grad()
def calibrate_blocks(
    model: nn.Module,
    layers: Sequence[str],
    batches: Sequence[tuple],
    stats: StatsFactory,
    prune_stage: PruneStage,
    *,
    what: str,
    progress: Callable[[str], Any] | None = None,
) -> None:
    """Calibrate the Linear layers named ``layers`` (module names) block by block (see the module
    docstring): ``stats(name, module)`` makes each layer's statistics, ``prune_stage(stage, stats)``
    prunes the stage's layers and returns their new weights by module name. ``what`` names the
    method in errors."""
    in_blocks(model, layers, what)
    decoder = decoder_of(model, what)
    blocks = decoder.blocks(model)
    head = decoder.head()
    by_block = {name: [layer for layer in layers if layer.startswith(f"{name}.")] for name, _ in blocks}
    modules = {name: model.get_submodule(name) for name in layers}
    wanted = [i for i, (name, _) in enumerate(blocks) if by_block[name]]
    last = len(blocks) - 1 if head in modules else max(wanted, default=-1)  # later blocks need no run
    with eval_mode(model):
        inputs = first_block_inputs(model, blocks[0][1], batches)
        hidden, n = inputs.hidden, len(inputs.hidden)
        for i, (block_name, block) in enumerate(blocks[: last + 1]):
            members = {name: modules[name] for name in by_block[block_name]}
            with _bar(progress, f"{what}: block {i + 1}/{len(blocks)}") as update:
                if members:
                    seen = {name: stats(name, module) for name, module in members.items()}
                    hooks = _InputHooks(members, seen)
                    try:
                        for j in range(n):
                            block(hidden[j], *inputs.args[j], **inputs.kwargs[j])
                            hooks.next_batch()
                            update(j + 1, 2 * n)
                    finally:
                        hooks.remove()
                    new = prune_stage(block_name, seen)
                else:
                    new = {}
                with _weights(members, new):
                    for j in range(n):
                        hidden[j] = _out(block(hidden[j], *inputs.args[j], **inputs.kwargs[j]))
                        update(n + j + 1, 2 * n)
        if head in modules:
            seen = {head: stats(head, modules[head])}
            for j in range(n):
                x = hidden[j]
                for _, module in decoder.final(model):
                    x = module(x)
                seen[head].add(x.reshape(-1, x.shape[-1]))
            prune_stage(head, seen)


def in_blocks(model: nn.Module, layers: Sequence[str], what: str) -> None:
    """Refuse, before any work, layers :func:`calibrate_blocks` cannot reach (the trial run's check)."""
    decoder = decoder_of(model, what)
    names = [name for name, _ in decoder.blocks(model)]
    for layer in layers:
        if layer != decoder.head() and not any(layer.startswith(f"{b}.") for b in names):
            raise SpecError(
                f"{what} calibrates the decoder's blocks in order, then its head; {layer} is in neither: "
                f"exclude it (--exclude {layer})"
            )
        if not isinstance(model.get_submodule(layer), nn.Linear):
            raise SpecError(
                f"{what} prunes Linear layers; {layer} is a {type(model.get_submodule(layer)).__name__}: exclude it"
            )


class BlockwiseMethod(PruningMethod):
    """Base of the one-shot methods that prune a decoder LM block by block from calibration windows:
    :meth:`stats` says what each layer accumulates, :meth:`prune_layer` prunes it. Each chooses its
    weights itself (:meth:`select`), under the structures in :attr:`structures_allowed`; a method
    that also refits the kept weights puts them in ``context.updates``."""

    needs = frozenset({"batches"})
    calibration = "calibration_sequences"
    requires = "a causal LM (GPT-2, OPT, Llama)"

    def structures_allowed(self, structure: Structure) -> bool:
        """Whether this method prunes under ``structure`` (single weights per layer, rows, N:M)."""
        return isinstance(structure, RowGroups) or not structure.structured

    def stats(self, name: str, module: nn.Module) -> LayerStats:
        raise NotImplementedError

    def prune_layer(
        self,
        name: str,
        weight: torch.Tensor,
        stats: LayerStats,
        alive: torch.Tensor,
        rate: float,
        structure: Structure,
        spec,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(keep mask, new weight or None when the kept weights stay as they were) of one layer;
        ``spec`` holds the method's settings."""
        raise NotImplementedError

    def select(self, model: nn.Module, mask: Mask | None, spec, context: PruneContext, generator) -> Mask:
        from prunelab.pruning.prune import pruned_layers

        what = f"method {self.name!r}"
        structure_name = spec.structure_name()
        structure = STRUCTURES.get(structure_name)
        if not self.structures_allowed(structure):
            raise SpecError(f"{what} cannot prune with structure {structure_name!r}; {self.structure_hint}")
        if spec.scope != "layerwise":
            raise SpecError(
                f"{what} prunes each layer as its block is calibrated, so scope must be 'layerwise', got {spec.scope!r}"
            )
        mask = Mask.ones(model) if mask is None else mask
        chosen, rates = pruned_layers(model, mask, spec, context)
        for layer in chosen:
            if isinstance(structure, RowGroups):
                structure.check_layer(layer)
        modules = [layer.param.rpartition(".")[0] for layer in chosen]
        in_blocks(model, modules, what)
        if context.trial:
            return mask
        keep = {n: m.clone() for n, m in mask.items()}
        params = dict(model.named_parameters())
        rate_of = {layer.param: rates.get(layer.param, spec.rate_per_round()) for layer in chosen}
        chosen_params = {f"{m}.weight" for m in modules}

        def prune_stage(stage: str, seen: Mapping[str, LayerStats]) -> dict[str, torch.Tensor]:
            new = {}
            for module_name, stats in seen.items():
                param = f"{module_name}.weight"
                if param not in chosen_params:
                    continue
                weight = params[param].detach()
                kept, updated = self.prune_layer(
                    module_name, weight, stats, keep[param].to(weight.device), rate_of[param], structure, spec
                )
                keep[param] = kept.to(keep[param].device)
                result = (updated if updated is not None else weight) * kept.to(weight.dtype)
                new[module_name] = result
                if updated is not None and context.updates is not None:
                    context.updates[param] = result.detach().cpu()
            return new

        calibrate_blocks(
            model,
            modules,
            context.batches or (),
            self.stats,
            prune_stage,
            what=what,
            progress=context.progress,
        )
        return Mask(keep)

    structure_hint: ClassVar[str] = "use unstructured, per-row or N:M (e.g. 2:4)"
