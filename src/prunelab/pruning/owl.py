"""OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): ``--layer-rates owl`` gives the
blocks of a decoder LM their own sparsity, lower where their Wanda scores hold more outliers.

On the calibration windows, block by block on the dense model (:mod:`prunelab.pruning.blockwise`),
each block's layer-wise outlier distribution LOD is the share of its chosen layers' Wanda scores
``|W| * ||X||_2`` above ``outlier_factor`` (M, 5) times their mean. The densities
``D = (LOD - min) / (max - min) * 2 * lambda`` (lambda 0.08) are shifted so that their mean is the
round's density ``1 - rate``: every block's sparsity lies within ``rate +- lambda``, each layer of a
block pruned at its block's. As in the paper's code, the mean is over blocks (the blocks of a
decoder have the same size, so the model's sparsity is the round's); a pruned head keeps the
round's rate. Any method prunes at those rates (Wanda, SparseGPT, magnitude).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field

from prunelab.errors import SpecError
from prunelab.models.decoder import decoder_of
from prunelab.pruning.blockwise import calibrate_blocks
from prunelab.pruning.rates import LAYER_RATES, LayerRates
from prunelab.pruning.wanda import SquaredNorms, wanda_scores
from prunelab.spec import FrozenSpec


def owl_densities(outliers: list[float], density: float, spread: float) -> list[float]:
    """OWL's block densities from their outlier shares: scaled to ``[0, 2 * spread]``, then shifted to
    mean ``density``."""
    values = torch.tensor(outliers, dtype=torch.float64)
    span = float(values.max() - values.min())
    scaled = (values - values.min()) / span * 2 * spread if span > 0 else torch.zeros_like(values)
    return (scaled - scaled.mean() + density).tolist()


@LAYER_RATES.register("owl")
class OWL(LayerRates):
    """Outlier-weighted layerwise sparsity (Yin et al. 2024): blocks with more Wanda-score outliers pruned less."""

    class Settings(FrozenSpec):
        flag_prefix = "owl-"
        outlier_factor: float = Field(
            5.0, gt=0, description="a score above this times the block's mean is an outlier (M)"
        )
        spread: float = Field(
            0.08, ge=0, lt=0.5, description="block sparsities lie within the rate +- this (lambda)"
        )

    needs = frozenset({"batches"})
    calibration = "calibration_sequences"

    def rates(self, model, chosen, rate, context):
        modules = [layer.param.rpartition(".")[0] for layer in chosen]
        if context.trial:
            from prunelab.pruning.blockwise import in_blocks

            in_blocks(model, modules, "layer rates 'owl'")
            return {layer.param: rate for layer in chosen}
        params = dict(model.named_parameters())
        head = decoder_of(model, "layer rates 'owl'").head()
        outliers: dict[str, float] = {}

        def block_outliers(stage: str, seen: Mapping[str, SquaredNorms]) -> dict:
            if stage == head:
                return {}
            scores = [wanda_scores(params[f"{n}.weight"], s.norms()).flatten() for n, s in seen.items()]
            every = torch.cat(scores)
            outliers[stage] = float((every > self.settings.outlier_factor * every.mean()).double().mean())
            return {}  # the dense model: nothing pruned

        calibrate_blocks(
            model, modules, context.batches or (),
            lambda name, module: SquaredNorms(module.in_features, module.weight.device),
            block_outliers, what="layer rates 'owl'", progress=context.progress,
        )  # fmt: skip
        densities = owl_densities(list(outliers.values()), 1 - rate, self.settings.spread)
        by_block = dict(zip(outliers, densities, strict=True))
        out = {}
        for layer, module in zip(chosen, modules, strict=True):
            block = next((b for b in by_block if module.startswith(f"{b}.")), None)
            sparsity = rate if block is None else 1 - by_block[block]
            if not 0 <= sparsity < 1:
                raise SpecError(f"owl gives {layer.name} a sparsity of {sparsity:.3f}; lower --owl-spread")
            out[layer.param] = sparsity
        return out
