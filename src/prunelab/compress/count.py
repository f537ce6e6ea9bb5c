"""True parameter and FLOP counts: dense, masked (non-zeros) and physically compacted.

FLOPs are counted at the operator level by ``torch.utils.flop_counter`` (matmuls and convolutions,
2 FLOPs per multiply-accumulate, so MACs = FLOPs / 2); elementwise work is not counted. A masked
layer's non-zero FLOPs are its dense FLOPs times its weight's non-zero fraction, since every weight
of a conv or linear layer is used the same number of times; a transformer's attention products
(``QK^T``, ``AV``) count in full for the masked model and shrink only when heads are removed.
Counts are per example (for a text model, one sequence of the given length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter

from prunelab.compress.compact import compact
from prunelab.models import build_model, count_parameters, example_input
from prunelab.models.encoder import eager_attention
from prunelab.pruning import Mask, prune, sparsity_report


@dataclass(frozen=True)
class LayerCount:
    """One layer's parameters and FLOPs in the dense, masked and compacted model."""

    layer: str
    params: int
    masked_params: int
    compact_params: int | None
    flops: int
    masked_flops: int
    compact_flops: int | None


@dataclass(frozen=True)
class CountReport:
    layers: tuple[LayerCount, ...]

    def total(self, field: str) -> int | None:
        values = [getattr(layer, field) for layer in self.layers]
        return None if any(v is None for v in values) else sum(values)

    def summary_rows(self) -> list[tuple[str, int | None, int | None, int | None]]:
        """(quantity, dense, masked, compact) for parameters, MACs and FLOPs."""
        rows = []
        for label, base in (("parameters", "params"), ("FLOPs", "flops")):
            values = [self.total(base), self.total(f"masked_{base}"), self.total(f"compact_{base}")]
            rows.append((label, *values))
            if base == "flops":
                rows.insert(-1, ("MACs", *[None if v is None else v // 2 for v in values]))
        return rows

    def layer_rows(self) -> list[tuple[str, int, int, int | None, int, int, int | None]]:
        return [
            (x.layer, x.params, x.masked_params, x.compact_params, x.flops, x.masked_flops, x.compact_flops)
            for x in self.layers
        ]


def _cpu_attention_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """``scaled_dot_product_attention``'s CPU kernel, which ``torch.utils.flop_counter`` has no
    formula for: the same ``QK^T`` and ``AV`` products as its other kernels."""
    return flop_counter.sdpa_flop_count(query, key, value)


#: kernels counted by prunelab beside torch's formulas (shapes in, FLOPs out)
EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


@torch.no_grad()
def layer_flops(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """FLOPs of one example per module, each counting only what it does outside its submodules:
    leaf layers, and e.g. a transformer's attention module for its ``QK^T`` and ``AV`` products
    (run as explicit matrix products, which fused kernels would hide). What the top-level module
    does itself is ``"(other)"``. A text model reads one sequence of ``input_shape[0]`` tokens."""
    was = model.training
    model.eval()
    try:
        with (
            eager_attention(model),
            flop_counter.FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter,
        ):
            model(example_input(model, input_shape, generator=torch.Generator().manual_seed(0)))
    finally:
        model.train(was)
    counts = counter.get_flop_counts()
    prefix = type(model).__name__

    def total(name: str) -> int:
        return int(sum(counts.get(f"{prefix}.{name}" if name else prefix, {}).values()))

    out: dict[str, int] = {}
    for name, module in model.named_modules():
        own = total(name) - sum(total(f"{name}.{c}" if name else c) for c, _ in module.named_children())
        if name and own:
            out[name] = own
    other = counter.get_total_flops() - sum(out.values())
    if other:
        out["(other)"] = int(other)
    return out


def total_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one example through ``model`` (dense: every weight counts, zero or not)."""
    return sum(layer_flops(model, input_shape).values())


def nonzero_flops(model: nn.Module, input_shape: Sequence[int], mask: Mask | None = None) -> dict[str, int]:
    """Per leaf module: FLOPs that multiply a non-zero (and unmasked) weight."""
    flops = layer_flops(model, input_shape)
    out = {}
    for name, value in flops.items():
        weight = getattr(model.get_submodule(name), "weight", None) if name != "(other)" else None
        if isinstance(weight, torch.Tensor) and weight.numel():
            kept = weight.detach() != 0
            key = f"{name}.weight"
            if mask is not None and key in mask:
                kept &= mask[key].to(kept.device)
            value = round(value * int(kept.sum()) / weight.numel())
        out[name] = value
    return out


def count(
    model: nn.Module,
    input_shape: Sequence[int],
    mask: Mask | None = None,
    compacted: nn.Module | None = None,
) -> CountReport:
    """Per-layer parameters and FLOPs of ``model``, of it masked (non-zeros), and of ``compacted``."""
    dense_flops = layer_flops(model, input_shape)
    masked_flops = nonzero_flops(model, input_shape, mask)
    params = {row.layer: (row.params, row.kept) for row in sparsity_report(model, mask).layers}
    small_params = {row.layer: row.params for row in sparsity_report(compacted).layers} if compacted else {}
    small_flops = layer_flops(compacted, input_shape) if compacted is not None else {}
    names = list(dict.fromkeys([*params, *dense_flops]))
    rows = []
    for name in names:
        total, kept = params.get(name, (0, 0))
        rows.append(
            LayerCount(
                name,
                total,
                kept,
                small_params.get(name, 0) if compacted is not None else None,
                dense_flops.get(name, 0),
                masked_flops.get(name, 0),
                small_flops.get(name, 0) if compacted is not None else None,
            )
        )
    return CountReport(tuple(rows))


@dataclass(frozen=True)
class RemovalRow:
    """Ou Yang & Xu, Fig. 2: parameters left by masking against those left after real removal."""

    fraction: float
    dense: int
    masked: int
    removed: int

    @property
    def masked_pct(self) -> float:
        return 100.0 * self.masked / self.dense

    @property
    def removed_pct(self) -> float:
        return 100.0 * self.removed / self.dense


def removal_table(
    model: str,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    *,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    method: str = "l1-structured",
    structure: str = "structured-output",
    layers: str = "all",
    seed: int = 0,
) -> list[RemovalRow]:
    """One-shot structured pruning of a fresh ``model`` at each fraction (output layer kept whole).

    Masking leaves a pruned unit's bias, BatchNorm entry and the next layer's columns for it in
    place; removal takes them all, so it leaves fewer parameters than the mask's count suggests.
    """
    net = build_model(model, num_classes=num_classes, input_shape=input_shape, seed=seed).eval()
    example = torch.zeros(1, *input_shape)
    dense = count_parameters(net)
    rows = []
    for fraction in fractions:
        mask = prune(
            net, None, fraction=fraction, method=method, structure=structure, layers=layers,
            exclude=[net.output_layer],
        )  # fmt: skip
        small = compact(net, mask, example).model
        rows.append(
            RemovalRow(fraction, dense, sparsity_report(net, mask).total_kept, count_parameters(small))
        )
    return rows
