"""Attention-head importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?").

Each head ``h`` of a layer gets a gate ``xi_h`` multiplying its context vector before the layer's
output projection; with every gate at 1 the model is unchanged. A head's importance is
``sum over batches of |dL/dxi_h|``, the loss's sensitivity to masking it, normalised per layer
(divided by the layer's L2 norm over heads), as their reference code does. The gates are applied by a
forward pre-hook on each output projection (its input is the concatenated heads), so nothing of the
model is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import SpecError

#: For each supported model type: the output projection whose input is the heads' concatenated
#: context, as a module-name suffix.
OUTPUT_PROJECTION = {
    "bert": "attention.output.dense",
    "roberta": "attention.output.dense",
    "xlm-roberta": "attention.output.dense",
    "camembert": "attention.output.dense",
    "electra": "attention.output.dense",
    "distilbert": "attention.out_lin",
}


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer: the name of its output projection and its head count."""

    projection: str
    heads: int


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The attention layers of a transformers encoder (a prunelab text model or the bare model)."""
    config = getattr(getattr(model, "model", model), "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in OUTPUT_PROJECTION:
        raise SpecError(
            f"head importance needs a transformer encoder of type {', '.join(OUTPUT_PROJECTION)}; "
            f"this model is {kind or type(model).__name__!r}"
        )
    heads = getattr(config, "num_attention_heads", None) or config.n_heads
    suffix = OUTPUT_PROJECTION[kind]
    return [
        AttentionLayer(n, heads)
        for n, m in model.named_modules()
        if n.endswith(suffix) and isinstance(m, nn.Linear)
    ]


def gated_loss(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], gates: torch.Tensor
) -> list[torch.Tensor]:
    """The mean cross-entropy of each batch with the heads' contexts scaled by ``gates`` (layers x heads)."""
    layers = attention_layers(model)
    handles = []
    for i, layer in enumerate(layers):

        def gate(module, args, i=i, heads=layer.heads):
            x = args[0]
            scaled = x.unflatten(-1, (heads, x.shape[-1] // heads)) * gates[i].view(heads, 1)
            return (scaled.flatten(-2), *args[1:])

        handles.append(model.get_submodule(layer.projection).register_forward_pre_hook(gate))
    try:
        return [F.cross_entropy(model(x), y) for x, y in batches]
    finally:
        for h in handles:
            h.remove()


def head_importance(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, normalise: bool = True
) -> torch.Tensor:
    """Importance of every head, ``(layers, heads)``: ``sum_b |dL_b/dxi|`` at ``xi = 1`` (eval mode)."""
    layers = attention_layers(model)
    if len({layer.heads for layer in layers}) != 1:
        raise SpecError("head importance needs the same number of heads in every layer")
    was = model.training
    model.eval()
    gates = torch.ones(len(layers), layers[0].heads, dtype=torch.float32, requires_grad=True)
    total = torch.zeros_like(gates)
    try:
        for batch in batches:
            (loss,) = gated_loss(model, [batch], gates)
            (grad,) = torch.autograd.grad(loss, gates)
            total += grad.abs()
    finally:
        model.train(was)
    if normalise:
        total = total / (total.norm(dim=1, keepdim=True) + 1e-20)
    return total.detach()


def plot_head_importance(importance: torch.Tensor, title: str):
    """A layers x heads heatmap of head importance (Michel et al.'s Fig. 3 style)."""
    from prunelab.analysis.plots import new_figure

    layers, heads = importance.shape
    fig = new_figure(max(3.0, 0.6 * heads + 2), max(2.5, 0.45 * layers + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(importance.numpy(), cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="importance (per-layer normalised)")
    return fig


def level_head_importance(level, batches: int = 10, data_dir=None) -> tuple[torch.Tensor, int]:
    """Head importance of a loaded level (:func:`prunelab.load_level`) over its first ``batches``
    validation batches (the training set's where there is no validation split); (scores, batches used)."""
    spec = level.experiment.spec
    data = spec.load_data(data_dir)
    size = spec.train.batch_size
    split = data.val if len(data.val) else data.train
    chunks = [(split.x[i : i + size], split.y[i : i + size]) for i in range(0, len(split), size)][:batches]
    return head_importance(level.model, chunks), len(chunks)


def importance_table(importance: torch.Tensor, title: str):
    """Layers x heads as a :class:`~prunelab.table.Table`."""
    from prunelab.table import Table

    columns = ["layer", *(f"head {h}" for h in range(importance.shape[1]))]
    rows = [[i, *(round(float(v), 4) for v in row)] for i, row in enumerate(importance)]
    return Table(title, columns, rows)
