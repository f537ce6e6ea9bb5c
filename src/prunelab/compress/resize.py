"""The size attributes of layers: what compaction updates after slicing parameters, what a plan records.

A module's parameters say its new shape; its attributes (``in_channels``, ``num_features``,
``normalized_shape``, a head count...) must agree, because ``forward`` and ``extra_repr`` read
them. One function per module type reads them from the parameters (:func:`resize`); the export
plan records them (:func:`shape_attributes`) and :func:`prunelab.load_compact` sets them back
(:func:`set_attributes`) before it loads the weights.
"""

from __future__ import annotations

from typing import Any

from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM_1D = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_BATCH = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def shape_attributes(module: nn.Module) -> dict[str, Any] | None:
    """The attributes describing ``module``'s shape (JSON-able), or None for a type without any."""
    from prunelab.coupling.modules import module_rule

    if isinstance(module, _CONV + _CONV_T):
        return {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "groups": module.groups,
        }
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, _BATCH):
        return {"num_features": module.num_features}
    if isinstance(module, _NORM_1D):
        return {"normalized_shape": list(module.normalized_shape)}
    if isinstance(module, nn.GroupNorm):
        return {"num_groups": module.num_groups, "num_channels": module.num_channels}
    if isinstance(module, nn.Embedding):
        return {"num_embeddings": module.num_embeddings, "embedding_dim": module.embedding_dim}
    if isinstance(module, nn.PReLU):
        return {"num_parameters": module.num_parameters}
    rule = module_rule(module)
    if rule is not None:
        names = [rule.heads, *rule.attributes]
        return {name: getattr(module, name) for name in names if hasattr(module, name)}
    return None


def resize(module: nn.Module, before: dict[str, Any]) -> None:
    """Set ``module``'s size attributes from its (sliced) parameters; ``before`` is what
    :func:`shape_attributes` said before slicing (a grouped conv's channels per group)."""
    if isinstance(module, _CONV):
        out, in_per = module.weight.shape[:2]
        groups = before["groups"]
        if groups > 1 and in_per == before["in_channels"] // groups:  # whole groups went (or none)
            groups = out // (before["out_channels"] // groups)
        module.groups = groups  # else each group lost the same channels: as many groups as before
        module.in_channels = in_per * groups
        module.out_channels = out
    elif isinstance(module, _CONV_T):
        module.in_channels = module.weight.shape[0]
        module.out_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, _BATCH):
        tensor = module.weight if module.weight is not None else module.running_mean
        if tensor is not None:
            module.num_features = tensor.shape[0]
    elif isinstance(module, _NORM_1D) and module.weight is not None:
        module.normalized_shape = (module.weight.shape[0],)
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        channels = module.weight.shape[0]
        module.num_groups = before["num_groups"] * channels // before["num_channels"]
        module.num_channels = channels
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()


def set_attributes(module: nn.Module, attrs: dict[str, Any]) -> None:
    """Set recorded attributes (lists become the tuples the modules hold)."""
    for name, value in attrs.items():
        setattr(module, name, tuple(value) if isinstance(value, list) else value)
