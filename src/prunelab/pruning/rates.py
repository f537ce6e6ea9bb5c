"""Layer-rate strategies (``--layer-rates owl``): a rule that gives every pruned layer its own rate.

``--layer-rates fc3=0.1,conv1=0`` names rates by hand; a strategy computes them instead, from the
model and, where it ``needs`` them, calibration batches. One class per strategy, registered in
:data:`LAYER_RATES`; its hyperparameters are a nested ``Settings`` spec, which becomes a
``[pruning.<name>]`` table and ``--<name>-<setting>`` flags, as a scorer's and a method's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import nn

from prunelab.pruning.context import PruneContext
from prunelab.pruning.layers import LayerInfo
from prunelab.registry import Registry
from prunelab.spec import FrozenSpec


class LayerRates:
    """Computes one rate per chosen layer whose mean, weighted by size, is the round's rate."""

    needs: ClassVar[frozenset[str]] = frozenset()
    """The :class:`PruneContext` inputs it reads (``batches``: calibration data)."""
    calibration: ClassVar[str | None] = None
    """The PruneSpec field counting the calibration examples it reads (``calibration_sequences``)."""
    Settings: ClassVar[type[FrozenSpec] | None] = None

    def __init__(self, settings: FrozenSpec | None = None) -> None:
        if settings is None and self.Settings is not None:
            settings = self.Settings()
        self.settings = settings

    def rates(
        self, model: nn.Module, chosen: Sequence[LayerInfo], rate: float, context: PruneContext
    ) -> dict[str, float]:
        """Rate per parameter name (``"fc1.weight"``) of every layer in ``chosen``."""
        raise NotImplementedError


LAYER_RATES: Registry[type[LayerRates]] = Registry("layer-rate rule", builtins="prunelab.pruning")
