"""What an experiment is. Its name is a hash of what determines its results.

Only fields that differ from their defaults enter the hash, so adding an option later never renames
existing experiments. Seeds are replicates inside an experiment, and the device is where it runs,
not what it is, so neither enters the hash.

Text forms are read here, once, for the Python API, config files and the command line alike:
``seeds="0-4"``, ``controls="reinit,random-mask"``, ``treatment="rewind:500it"``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator, model_validator
from torch import nn

from prunelab.data import DATASETS, Dataset, DatasetInfo, resolve_dataset
from prunelab.errors import PrunelabError, SpecError
from prunelab.models import INITS, MODELS, build_model, resolve_model, source_forms
from prunelab.models.build import MAX_IMAGE_SIZE
from prunelab.models.weights import file_hash, parse_weights
from prunelab.pruning import STRUCTURES
from prunelab.pruning.coupled import COUPLING_VERSION
from prunelab.pruning.spec import prune_spec, settings_tables
from prunelab.spec import Flag, FrozenSpec, Text, build_spec, registered, resolved
from prunelab.training import TrainConfig
from prunelab.training.config import Duration

if TYPE_CHECKING:
    from prunelab.pruning.spec import PruneSpec

__all__ = [
    "ExperimentSpec",  # noqa: F822 - built on first use (experiment_spec), as PruneSpec is
    "PruneSpec",
    "TreatmentSpec",
    "TrunkSpec",
    "load_spec_file",
    "parse_seeds",
    "read_spec_file",
    "stable_hash",
]


def _treatments():
    from prunelab.experiments.treatments import TREATMENTS  # treatments import this module

    return TREATMENTS


def _controls():
    from prunelab.experiments.controls import CONTROLS  # controls import this module

    return CONTROLS


def _treatment_text(text: str) -> dict[str, Any]:
    """'rewind', 'rewind:500it', 'rewind:2ep', 'finetune', ...: the TreatmentSpec fields it sets."""
    kind, _, arg = text.partition(":")
    values: dict[str, Any] = {"kind": kind.strip()}
    if arg:
        if kind.strip() != "rewind":
            raise SpecError(f"treatment {text!r}: only rewind takes an argument (e.g. rewind:500it)")
        values["rewind_to"] = arg.strip()
    return values


class TreatmentSpec(FrozenSpec):
    """What weights each level's training starts from (see :mod:`prunelab.experiments.treatments`)."""

    kind: Annotated[
        registered(_treatments, "prunelab treatments"), Flag("treatment", parse=_treatment_text)
    ] = Field("rewind", description="what each pruned level trains from (rewind:500it rewinds to step 500)")
    rewind_to: Duration = Field("0it", description="rewind point for `rewind`, e.g. 500it or 1ep")
    finetune_lr: float | None = Field(
        None, gt=0, description="learning rate of `finetune` (default: the training lr)"
    )
    finetune_epochs: int | None = Field(
        None, gt=0, description="epochs per level of `finetune` (default: the training length)"
    )

    @model_validator(mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _treatment_text(value) if isinstance(value, str) else value

    @classmethod
    def parse(cls, text: str) -> TreatmentSpec:
        """'rewind', 'rewind:500it', 'rewind:2ep', 'finetune', 'reinit', 'sign', 'sigma-sign'."""
        return build_spec(cls, **_treatment_text(text))

    def label(self) -> str:
        return self.kind + (f":{self.rewind_to}" if self.rewind_to != "0it" else "")


def _data_forms() -> list[str]:
    from prunelab.data import DATA_SOURCES

    return [cls.usage for _, cls in DATA_SOURCES.items()]


class TrunkSpec(FrozenSpec):
    """What one dense training depends on: model, starting weights, data, initialisation, split
    and training.

    It is the dense trunk of every experiment that shares it, and what ``prunelab train`` trains.
    With pretrained ``weights``, that training is fine-tuning on the dataset (as Ou Yang & Xu do), and
    rewinding goes back to the pretrained weights.
    """

    model: resolved(resolve_model, MODELS, "prunelab models", source_forms) = Field(
        "lenet-300-100", description="the network: a zoo name, torchvision:NAME, timm:NAME or FILE.py:FACTORY"
    )
    weights: str | None = Field(
        None,
        description="starting weights: a file (safetensors, or a torch checkpoint) or pretrained "
        "weights such as torchvision:DEFAULT (default: the initialisation)",
    )
    data: resolved(resolve_dataset, DATASETS, "prunelab data list", _data_forms) = Field(
        "fashion-mnist", description="the dataset it trains on"
    )
    image_size: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGE_SIZE,
        description="resize input batches to this height and width as they enter the model (e.g. 224)",
    )
    init: registered(INITS) | None = Field(
        None, description="weight initialisation (default: the model's own)"
    )
    val_size: int | None = Field(
        None, ge=0, description="validation examples held out of the training set (default: the dataset's)"
    )
    sequence_length: int | None = Field(
        None,
        ge=2,
        le=1_000_000,
        description="language models: tokens per window of text, for calibration and perplexity (default: "
        "the model's positions, at most 2048)",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=1), description="how it trains (default length: 1 epoch)"
    )

    @field_validator("train")
    @classmethod
    def _length(cls, v: TrainConfig) -> TrainConfig:
        """Without epochs or iterations, one epoch: what the default spec trains."""
        return v.model_copy(update={"epochs": 1}) if v.epochs is None and v.iterations is None else v

    @model_validator(mode="after")
    def _weights(self) -> TrunkSpec:
        if self.weights is not None:
            try:
                parse_weights(self.weights, resolve_model(self.model).weights_prefix)
            except SpecError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def task(self):
        """What the model does with the data (:data:`prunelab.experiments.tasks.TASKS`)."""
        from prunelab.experiments.tasks import TASKS

        return TASKS.get(resolve_model(self.model).task)

    @property
    def data_info(self) -> DatasetInfo:
        """The dataset's facts (input shape, classes) as the model reads them, without loading its files."""
        return self.task.data_info(self)

    def dense_config(self) -> TrainConfig:
        """How the dense level trains: ``train``, or not at all (0 iterations: the given weights,
        evaluated) for a task whose dense level does not train (a language model)."""
        if self.task.trains_dense:
            return self.train
        return self.train.model_copy(update={"epochs": None, "iterations": 0})

    def build_model(
        self, seed: int | None = None, *, pretrained: bool = True, notes: list[str] | None = None
    ) -> nn.Module:
        """The model of this spec, built for its data (``pretrained=False``: without the weights)."""
        info = self.data_info
        return build_model(
            self.model,
            num_classes=info.num_classes,
            input_shape=info.input_shape,
            init=self.init,
            seed=seed,
            weights=self.weights if pretrained else None,
            image_size=self.image_size,
            notes=notes,
            data=self.data,
        )

    def load_data(self, data_dir: str | Path | None = None) -> Dataset:
        """The dataset as the model reads it (see :mod:`prunelab.experiments.tasks`): normalised with
        the pretrained weights' statistics, tokenised with the model's tokenizer, or cut into windows
        of tokens for a language model."""
        return self.task.load_data(self, data_dir)

    def fingerprints(self) -> dict[str, str]:
        """Content hashes of what the spec names by path (a model file, a weights file, a data folder):
        part of the identity, so editing one never silently mixes results."""
        out: dict[str, str] = {}
        for key, find in (
            ("model", lambda: resolve_model(self.model).fingerprint()),
            ("weights", self._weights_hash),
            ("data", lambda: resolve_dataset(self.data).fingerprint()),
        ):
            try:
                value = find()
            except PrunelabError:
                value = None  # unreadable now: building or loading it says so
            if value is not None:
                out[key] = value
        return out

    def _weights_hash(self) -> str | None:
        if self.weights is None:
            return None
        ref = parse_weights(self.weights, resolve_model(self.model).weights_prefix)
        return None if ref.path is None else file_hash(ref.path)


@functools.cache
def experiment_spec() -> type[TrunkSpec]:
    """:class:`ExperimentSpec`, built once when first asked for: its ``pruning`` field is a
    :class:`~prunelab.pruning.spec.PruneSpec`, whose tables come from the registries."""
    globals()["PruneSpec"] = prune_spec()  # the name the annotations below are resolved by

    class ExperimentSpec(TrunkSpec):
        """Everything that determines an experiment's results, plus its replicate seeds."""

        pruning: PruneSpec = Field(default_factory=PruneSpec, description="how each round prunes")
        treatment: TreatmentSpec = Field(
            default_factory=TreatmentSpec, description="what each level starts from"
        )
        controls: tuple[registered(_controls, "prunelab controls"), ...] = Field(
            (), description="control branches trained beside every pruned level"
        )
        seeds: Annotated[tuple[int, ...], Text(lambda text: parse_seeds(text))] = Field(
            (0,), description="replicates, e.g. 0-4 or 0,3,7"
        )
        name: str | None = Field(None, description="a label for listings; not part of the identity")

        @model_validator(mode="before")
        @classmethod
        def _task_defaults(cls, values: Any) -> Any:
            """The model's task fills in its defaults (a language model's experiment is one-shot)."""
            if not isinstance(values, dict):
                return values
            from prunelab.experiments.tasks import TASKS

            try:
                task = TASKS.get(resolve_model(values.get("model", cls.model_fields["model"].default)).task)
            except (PrunelabError, TypeError):
                return values  # the field validators say what is wrong
            return task.experiment_defaults(values)

        @field_validator("seeds")
        @classmethod
        def _seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
            bad = [s for s in v if not 0 <= s <= MAX_SEED]
            if bad:
                raise ValueError(f"seeds must be in 0..{MAX_SEED}, got {bad[:5]}")
            if len(v) > MAX_SEEDS:
                raise ValueError(f"at most {MAX_SEEDS} seeds per experiment, got {len(v)}")
            return tuple(dict.fromkeys(v))

        @model_validator(mode="after")
        def _complete(self) -> ExperimentSpec:
            if not self.seeds:
                raise ValueError("give at least one seed")
            return self

        def unused(self) -> list[str]:
            """Settings given that this experiment never reads (they still enter its id)."""
            out = self.train.unused()
            treatment = _treatments().get(self.treatment.kind)
            for name in self.treatment.non_default():
                if name != "kind" and name not in treatment.uses:
                    out.append(f"treatment.{name} is not read by treatment {self.treatment.kind!r}")
            given = self.pruning.non_default()
            structure = STRUCTURES.get(self.pruning.structure_name())
            if not getattr(structure, "reads_rate", True):
                out += [f"pruning.{k} is not read with structure {self.pruning.structure_name()!r}, which sets the "
                        "sparsity itself (N of every M)" for k in ("rate", "target_sparsity") if k in given]  # fmt: skip
            if self.sequence_length is not None and self.task.name != "language-modelling":
                out.append("sequence_length is read by language models only")
            read = self.pruning.tables_read()
            for name, value in self.pruning.non_default().items():
                if isinstance(value, dict) and name in settings_tables() and name not in read:
                    out.append(f"pruning.{name} settings are not read by method {self.pruning.method!r}")
            return out

        # identity --------------------------------------------------------------------------------
        def identity(self) -> dict[str, Any]:
            """The non-default fields that determine results (no seeds, device or label)."""
            values = self.model_dump(mode="json", exclude_defaults=True, exclude={"seeds", "name"})
            values["model"], values["data"] = self.model, self.data
            train = values.get("train", {})
            train.pop("device", None)
            values["train"] = train
            fingerprints = self.fingerprints()
            if fingerprints:
                values["fingerprints"] = fingerprints
            coupled = STRUCTURES.get(self.pruning.structure_name())
            if getattr(coupled, "needs_trace", False):  # results no per-layer structure of old gave
                values["coupling"] = COUPLING_VERSION
            return values

        def experiment_id(self) -> str:
            return stable_hash(self.identity())

        def dense_hooks(self) -> list:
            """The training plug-ins the dense trunk trains with: those of a method that acts during
            training, else none."""
            return self.pruning.method_entry().dense_hooks(self.pruning)

        def level_hooks(self) -> list:
            """The training plug-ins every pruned level and control retrains with (usually none)."""
            return self.pruning.method_entry().level_hooks(self.pruning)

        def trunk_identity(self) -> dict[str, Any]:
            """What the dense level-0 training depends on: shared by every method and treatment that
            trains it plainly; a method whose plug-ins join the dense training has its own trunk."""
            ident = self.identity()
            out = {k: ident[k] for k in (*TrunkSpec.model_fields, "fingerprints") if k in ident}
            if not self.task.trains_dense:
                out.pop("train", None)  # the dense level only evaluates the given weights
            hooks = self.dense_hooks()
            if hooks:
                out["plugins"] = [hook.identity() for hook in hooks]
            return out

        def trunk_id(self) -> str:
            return stable_hash(self.trunk_identity())

        def label(self) -> str:
            if self.name:
                return self.name
            return f"{self.model}/{self.data}/{self.pruning.method}-{self.pruning.scope}/{self.treatment.label()}"

    return ExperimentSpec


def __getattr__(name: str) -> Any:
    if name == "ExperimentSpec":
        return experiment_spec()
    if name == "PruneSpec":
        return prune_spec()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stable_hash(values: dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


_SEEDS = re.compile(r"^\s*(\d{1,10})\s*(?:-\s*(\d{1,10}))?\s*$")
MAX_SEED = 2**31 - 1
MAX_SEEDS = 10_000


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0-4' -> (0, 1, 2, 3, 4); '0,3,7' -> (0, 3, 7). Checked before any range is expanded."""
    seeds: list[int] = []
    shown = text if len(str(text)) <= 40 else str(text)[:37] + "..."
    for part in str(text).split(","):
        match = _SEEDS.match(part)
        if not match:
            raise SpecError(f"seeds {shown!r}: write e.g. '0', '0-4' or '0,3,7'")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise SpecError(f"seeds {shown!r}: range {lo}-{hi} is empty")
        if hi > MAX_SEED or len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise SpecError(f"seeds {shown!r}: at most {MAX_SEEDS} seeds, each in 0..{MAX_SEED}")
        seeds += range(lo, hi + 1)
    return tuple(dict.fromkeys(seeds))


MAX_CONFIG_BYTES = 1 << 20


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML or YAML config file (keys as in :class:`ExperimentSpec`), unvalidated.

    The file must be UTF-8 and under 1 MiB; YAML aliases are refused (a few hundred bytes of nested
    aliases expand to gigabytes), and so are YAML tags beyond the plain types (``safe_load``).
    """
    import yaml

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        if not path.is_file():
            raise SpecError(f"no such config file: {path}")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise SpecError(f"config {path} is larger than 1 MiB; a spec is a few lines")
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"config {path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"config {path} is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x})"
        ) from None
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            values = yaml.load(text, Loader=_ConfigLoader)
        else:
            raise SpecError(f"config {path}: use a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        message = str(exc) if len(str(exc)) <= 300 else str(exc)[:297] + "..."
        raise SpecError(f"config {path} is not valid: {message}") from None
    if not isinstance(values, dict):
        raise SpecError(f"config {path} must hold a table of settings")
    return values


def _config_loader():
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        """YAML's safe loader without aliases: a config file has no use for them."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed in a prunelab config file", mark
                )
            return super().compose_node(parent, index)

    return ConfigLoader


def load_spec_file(path: str | Path):
    """An experiment spec from TOML or YAML, validated."""
    return build_spec(experiment_spec(), **read_spec_file(path))


_ConfigLoader = _config_loader()
