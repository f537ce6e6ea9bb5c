"""Attention-head importance of a trained level: ``prunelab heads``, the report's table and heatmap.

The scores (Michel et al. 2019's gates) are computed by :mod:`prunelab.pruning.heads`, which the
``head-importance`` scorer uses too.
"""

from __future__ import annotations

import torch

from prunelab.pruning.heads import attention_layers, gated_loss, head_importance

__all__ = [
    "attention_layers",
    "gated_loss",
    "head_importance",
    "importance_table",
    "level_head_importance",
    "plot_head_importance",
]


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
