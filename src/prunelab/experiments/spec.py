"""What an experiment is. Its name is a hash of what determines its results.

Only fields that differ from their defaults enter the hash, so adding an option later never renames
existing experiments. Seeds are replicates inside an experiment, and the device is where it runs,
not what it is, so neither enters the hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from prunelab.data import DATASETS, DatasetInfo
from prunelab.errors import SpecError
from prunelab.models import MODELS
from prunelab.pruning import LAYER_FILTERS, METHODS, SCOPES, STRUCTURES, rate_for_rounds
from prunelab.spec import FrozenSpec, build_spec, registered
from prunelab.training import TrainConfig
from prunelab.training.config import parse_duration

CONTROL_NAMES = ("reinit", "random-mask")


class PruneSpec(FrozenSpec):
    """How each round prunes: criterion x structure x scope, and how many rounds at what rate."""

    method: registered(METHODS) = "magnitude"
    scope: registered(SCOPES) = "layerwise"
    structure: registered(STRUCTURES) | None = None
    layers: registered(LAYER_FILTERS) = "all"
    exclude: tuple[str, ...] = ()
    rate: float = Field(0.2, ge=0, lt=1, description="fraction of the remaining weights pruned per round")
    rounds: int = Field(1, ge=1, le=100)
    target_sparsity: float | None = Field(None, gt=0, lt=1)
    output_rate_factor: float | None = Field(None, gt=0)
    layer_rates: dict[str, float] = Field(default_factory=dict)

    @field_validator("layer_rates")
    @classmethod
    def _layer_rates(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0 <= r < 1}
        if bad:
            raise ValueError(f"layer rates must be in [0, 1): {bad}")
        return v

    def rate_per_round(self) -> float:
        """The fixed rate, or 1 - (1 - p)^(1/n) to reach ``target_sparsity`` in ``rounds`` rounds."""
        if self.target_sparsity is not None:
            return rate_for_rounds(self.target_sparsity, self.rounds)
        return self.rate


def _treatments():
    from prunelab.experiments.treatments import TREATMENTS  # treatments import this module

    return TREATMENTS


class TreatmentSpec(FrozenSpec):
    """What weights each level's training starts from (see :mod:`prunelab.experiments.treatments`)."""

    kind: registered(_treatments) = "rewind"
    rewind_to: str = "0it"
    finetune_lr: float | None = Field(None, gt=0)
    finetune_epochs: int | None = Field(None, gt=0)

    @field_validator("rewind_to")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v, 1)
        return v

    @classmethod
    def parse(cls, text: str) -> TreatmentSpec:
        """'rewind', 'rewind:500it', 'rewind:2ep', 'finetune', 'reinit', 'sign', 'sigma-sign'."""
        kind, _, arg = text.partition(":")
        values: dict[str, Any] = {"kind": kind.strip()}
        if arg:
            if kind.strip() != "rewind":
                raise SpecError(f"treatment {text!r}: only rewind takes an argument (e.g. rewind:500it)")
            values["rewind_to"] = arg.strip()
        return build_spec(cls, **values)


class ExperimentSpec(FrozenSpec):
    """Everything that determines an experiment's results, plus its replicate seeds."""

    model: registered(MODELS)
    data: registered(DATASETS)
    init: str | None = None
    val_size: int | None = Field(None, ge=0)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1))
    pruning: PruneSpec = Field(default_factory=PruneSpec)
    treatment: TreatmentSpec = Field(default_factory=TreatmentSpec)
    controls: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    name: str | None = Field(None, description="a label for listings; not part of the identity")

    @field_validator("controls")
    @classmethod
    def _controls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if c not in CONTROL_NAMES]
        if bad:
            raise ValueError(f"unknown control {bad[0]!r}; valid controls: {', '.join(CONTROL_NAMES)}")
        return v

    @model_validator(mode="after")
    def _complete(self) -> ExperimentSpec:
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.train.epochs is None and self.train.iterations is None:
            raise ValueError("give the training length per level (train.epochs or train.iterations)")
        return self

    # identity --------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The non-default fields that determine results (no seeds, device or label)."""
        values = self.model_dump(mode="json", exclude_defaults=True, exclude={"seeds", "name"})
        values["model"], values["data"] = self.model, self.data
        train = values.get("train", {})
        train.pop("device", None)
        values["train"] = train
        return values

    def experiment_id(self) -> str:
        return stable_hash(self.identity())

    @property
    def data_info(self) -> DatasetInfo:
        """The dataset's registered facts (input shape, classes), without loading its files."""
        return DATASETS.get(self.data).info

    def trunk_identity(self) -> dict[str, Any]:
        """What the dense level-0 training depends on: shared by every method and treatment."""
        ident = self.identity()
        return {k: ident[k] for k in ("model", "data", "init", "val_size", "train") if k in ident}

    def trunk_id(self) -> str:
        return stable_hash(self.trunk_identity())

    def label(self) -> str:
        if self.name:
            return self.name
        t = self.treatment.kind + (
            f":{self.treatment.rewind_to}" if self.treatment.rewind_to != "0it" else ""
        )
        return f"{self.model}/{self.data}/{self.pruning.method}-{self.pruning.scope}/{t}"


def stable_hash(values: dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


_SEEDS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0-4' -> (0, 1, 2, 3, 4); '0,3,7' -> (0, 3, 7)."""
    seeds: list[int] = []
    for part in text.split(","):
        match = _SEEDS.match(part)
        if not match:
            raise SpecError(f"seeds {text!r}: write e.g. '0', '0-4' or '0,3,7'")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise SpecError(f"seeds {text!r}: range {lo}-{hi} is empty")
        seeds += range(lo, hi + 1)
    return tuple(dict.fromkeys(seeds))


def load_spec_file(path: str | Path) -> ExperimentSpec:
    """An experiment spec from TOML or YAML (keys as in :class:`ExperimentSpec`), validated."""
    import yaml

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no such config file: {path}")
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(path.read_text())
        elif path.suffix in {".yaml", ".yml"}:
            values = yaml.safe_load(path.read_text())
        else:
            raise SpecError(f"config {path}: use a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"config {path} is not valid: {exc}") from None
    if not isinstance(values, dict):
        raise SpecError(f"config {path} must hold a table of settings")
    if isinstance(values.get("treatment"), str):
        values["treatment"] = TreatmentSpec.parse(values["treatment"])
    if isinstance(values.get("seeds"), str):
        values["seeds"] = parse_seeds(values["seeds"])
    return build_spec(ExperimentSpec, **values)
