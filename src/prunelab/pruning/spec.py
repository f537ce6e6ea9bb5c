"""What one pruning call does (:class:`PruneSpec`): a method (its scorer x structure x scope), rates and rounds.

The spec is what :func:`prunelab.prune` takes, what an experiment prunes each round with, a
``[pruning]`` table of a config file, and the pruning flags of ``prunelab run``. Each method, scorer
and layer-rate rule with settings adds one nested table named after it (``[pruning.synflow]`` with
``rounds``, ``[pruning.early_bird]`` with ``queue``), built from the registries the first time
:class:`PruneSpec` is asked for (``from prunelab.pruning.spec import PruneSpec``), never when this
module is imported: whatever registers a method, in whatever order, is there by then.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import Field, create_model, field_validator

from prunelab.pruning.layers import LAYER_FILTERS
from prunelab.pruning.methods import METHODS, Method, settings_key
from prunelab.pruning.rates import LAYER_RATES
from prunelab.pruning.schedule import rate_for_rounds
from prunelab.pruning.scope import SCOPES
from prunelab.pruning.scorers import SCORERS
from prunelab.pruning.structure import STRUCTURES
from prunelab.spec import Flag, FrozenSpec, _pairs, known, registered

__all__ = ["PruneSpec", "prune_spec", "settings_tables"]  # noqa: F822 - PruneSpec: built on first use


class _PruneFields(FrozenSpec):
    """How each round prunes: a method (scorer x structure x scope), and how many rounds at what rate."""

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
        "them: see --help: the layer-rate rules",
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
        """'fc3=0.1,conv1=0' are rates by name; a word without '=' names a rule (owl)."""
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

    def method_entry(self):
        """The registered :class:`~prunelab.pruning.methods.PruningMethod` this spec names."""
        return METHODS.get(self.method)

    def structure_name(self) -> str:
        """The structure in force: the override, else the method's own."""
        return self.structure or self.method_entry().structure

    def rate_strategy(self):
        """The layer-rate rule named by ``layer_rates`` (configured), or None for rates by name."""
        if not isinstance(self.layer_rates, str):
            return None
        cls = LAYER_RATES.get(self.layer_rates)
        return cls(getattr(self, settings_key(self.layer_rates)) if cls.Settings is not None else None)

    def needs(self) -> frozenset[str]:
        """The PruneContext inputs one round reads: the method's and the layer-rate rule's."""
        strategy = self.rate_strategy()
        return self.method_entry().needs_of(self) | (strategy.needs if strategy is not None else frozenset())

    def calibration_field(self) -> str | None:
        """The field counting the training examples one round calibrates on (calibration_images,
        calibration_sequences), or None when it reads a few batches (SNIP) or none."""
        strategy = self.rate_strategy()
        own = self.method_entry().calibration_field(self)
        return own or (getattr(strategy, "calibration", None) if strategy is not None else None)

    def scoring_examples(self, batch_size: int) -> int:
        """How many training examples one round reads: the calibration field's count, else the
        method's few batches (SNIP and GraSP read ten)."""
        field = self.calibration_field()
        return getattr(self, field) if field else self.method_entry().batches * batch_size

    def tables_read(self) -> set[str]:
        """The settings tables this spec's method and layer-rate rule read."""
        read = set(self.method_entry().settings_tables())
        if isinstance(self.layer_rates, str):
            read.add(settings_key(self.layer_rates))
        return read


def settings_tables() -> dict[str, tuple[type[FrozenSpec], str]]:
    """Every settings table: key -> (its spec, whose it is in words): each scorer's, each method's
    own (a :class:`~prunelab.pruning.methods.Method` record reads its scorer's) and each layer-rate
    rule's. Two entries whose names give one key are refused, naming both."""
    entries = [
        *((name, cls.Settings, f"{name} scorer") for name, cls in SCORERS.items()),
        *((name, m.Settings, f"{name} method") for name, m in METHODS.items() if not isinstance(m, Method)),
        *((name, cls.Settings, f"{name} layer-rate rule") for name, cls in LAYER_RATES.items()),
    ]
    tables: dict[str, tuple[type[FrozenSpec], str]] = {}
    for name, settings, what in entries:
        key = settings_key(name)
        if settings is None:
            continue
        if key in tables:
            raise ValueError(f"the {what} and the {tables[key][1]} would both have settings [pruning.{key}]")
        tables[key] = (settings, what)
    return tables


@functools.cache
def prune_spec() -> type[FrozenSpec]:
    """:class:`PruneSpec`: the fields above and one table per entry with settings (built once)."""
    fields = {
        key: (settings, Field(default_factory=settings, description=f"settings of the {what}"))
        for key, (settings, what) in settings_tables().items()
    }
    cls = create_model("PruneSpec", __base__=_PruneFields, __module__=__name__, **fields)
    cls.__doc__ = _PruneFields.__doc__
    rules = cls.model_fields["layer_rates"]
    rules.description = rules.description.replace(
        "see --help: the layer-rate rules", ", ".join(LAYER_RATES.names())
    )
    return cls


def __getattr__(name: str) -> Any:
    if name == "PruneSpec":
        return prune_spec()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
