"""What one pruning call does (:class:`PruneSpec`): criterion x structure x scope, rates and rounds.

The spec is what :func:`prunelab.prune` takes, what an experiment prunes each round with, a
``[pruning]`` table of a config file, and the pruning flags of ``prunelab run``. Each criterion
with settings (see :class:`~prunelab.pruning.criteria.Criterion`) adds one nested table named
after it, ``[pruning.synflow]`` with ``rounds`` for example, built from the registry.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, create_model, field_validator

from prunelab.pruning.criteria import CRITERIA
from prunelab.pruning.layers import LAYER_FILTERS
from prunelab.pruning.methods import METHODS
from prunelab.pruning.rates import LAYER_RATES
from prunelab.pruning.schedule import rate_for_rounds
from prunelab.pruning.scope import SCOPES
from prunelab.pruning.structure import STRUCTURES
from prunelab.spec import Flag, FrozenSpec, _pairs, known, registered


class _PruneFields(FrozenSpec):
    """How each round prunes: criterion x structure x scope, and how many rounds at what rate."""

    method: registered(METHODS, "prunelab methods") = Field(
        "magnitude", description="pruning method: what scores the weights and how they are grouped"
    )
    scope: registered(SCOPES) = Field(
        "layerwise", description="which weights compete: each layer apart, all together, or by layer kind"
    )
    structure: registered(STRUCTURES) | None = Field(
        None, description="override the method's grouping of weights into units"
    )
    layers: registered(LAYER_FILTERS) = Field("all", description="which layers are pruned")
    exclude: tuple[str, ...] = Field((), description="layers never pruned (names as in print(model))")
    rate: float = Field(0.2, ge=0, lt=1, description="fraction of the remaining weights pruned per round")
    rounds: int = Field(1, ge=1, le=100, description="pruning rounds (levels after the dense one)")
    target_sparsity: float | None = Field(
        None, gt=0, lt=1, description="reach this sparsity in `rounds` rounds (replaces rate)"
    )
    output_rate_factor: Annotated[float | None, Flag(aliases=("output-rate",))] = Field(
        None, gt=0, description="prune the model's output layer at this factor of the rate (0.5 = half)"
    )
    layer_rates: Annotated[dict[str, float] | str, Flag(parse=lambda text: {"layer_rates": text})] = Field(
        default_factory=dict,
        description="per-layer rates, each layer pruned on its own (fc3=0.1), or a strategy computing "
        "them: " + ", ".join(LAYER_RATES.names()),
    )
    reconstruct: bool = Field(
        False,
        description="refit each pruned layer's kept weights by least squares to its unpruned outputs "
        "on calibration images (He et al.; ThiNet); needs treatment finetune",
    )
    calibration_images: int = Field(
        256, ge=1, le=100_000, description="training images that thinet, lasso and reconstruct read"
    )
    calibration_sequences: int = Field(
        128,
        ge=1,
        le=100_000,
        description="random training windows of --sequence-length tokens that the language-model "
        "methods (sparsegpt, wanda, owl) calibrate on (the papers: 128)",
    )
    calibration_positions: int = Field(
        10, ge=1, le=10_000, description="output positions sampled per image in conv layers (ThiNet: 10)"
    )

    @field_validator("layer_rates", mode="before")
    @classmethod
    def _rates_text(cls, v: Any) -> Any:
        """'fc3=0.1,conv1=0' are rates by name; a word without '=' names a strategy (owl)."""
        if isinstance(v, str) and "=" in v:
            return _pairs("layer_rates", v, float)
        if isinstance(v, str):
            return known(LAYER_RATES, v.strip())
        return v

    @field_validator("layer_rates")
    @classmethod
    def _layer_rates(cls, v: dict[str, float] | str) -> dict[str, float] | str:
        for name, rate in v.items() if isinstance(v, dict) else ():
            if not 0 <= rate < 1:
                raise ValueError(f"layer_rates[{name!r}] must be in [0, 1), got {rate!r}")
        return v

    def rate_per_round(self) -> float:
        """The fixed rate, or 1 - (1 - p)^(1/n) to reach ``target_sparsity`` in ``rounds`` rounds."""
        if self.target_sparsity is not None:
            return rate_for_rounds(self.target_sparsity, self.rounds)
        return self.rate

    def criterion_name(self) -> str:
        return METHODS.get(self.method).criterion

    def criterion(self):
        """The method's criterion, configured with its settings from this spec."""
        name = self.criterion_name()
        cls = CRITERIA.get(name)
        return cls(getattr(self, name) if cls.Settings is not None else None)

    def structure_name(self) -> str:
        """The structure in force: the override, else the method's own."""
        return self.structure or METHODS.get(self.method).structure

    def rate_strategy(self):
        """The layer-rate strategy named by ``layer_rates`` (configured), or None for rates by name."""
        if not isinstance(self.layer_rates, str):
            return None
        cls = LAYER_RATES.get(self.layer_rates)
        return cls(getattr(self, self.layer_rates) if cls.Settings is not None else None)

    def needs(self) -> frozenset[str]:
        """The PruneContext inputs the scoring reads: the criterion's and the rate strategy's."""
        strategy = self.rate_strategy()
        return self.criterion().needs | (strategy.needs if strategy is not None else frozenset())

    def calibration_field(self) -> str | None:
        """The field counting the training examples the scoring calibrates on (calibration_images,
        calibration_sequences), or None when it reads a few batches (SNIP) or none."""
        criterion, strategy = self.criterion(), self.rate_strategy()
        for part in (criterion, strategy):
            field = getattr(part, "calibration", None)
            if field:
                return field
        return "calibration_images" if criterion.calibrated else None


def _settings_fields() -> dict[str, Any]:
    """One nested settings table per criterion and layer-rate strategy that has settings, named
    after it."""
    fields = {}
    for kind, registry in (("criterion", CRITERIA), ("layer-rate strategy", LAYER_RATES)):
        for name, cls in registry.items():
            if cls.Settings is not None:
                fields[name] = (
                    cls.Settings,
                    Field(default_factory=cls.Settings, description=f"settings of the {name} {kind}"),
                )
    return fields


PruneSpec = create_model("PruneSpec", __base__=_PruneFields, __module__=__name__, **_settings_fields())
PruneSpec.__doc__ = _PruneFields.__doc__
