"""What a model does with its data, which decides how the data is read and how a level is judged.

The model source says which task its models do (:attr:`~prunelab.models.source.ModelSource.task`):
``classification`` (every image model and text classifier: labelled examples, test accuracy) or
``language-modelling`` (a causal LM: running text cut into windows of ``--sequence-length`` tokens,
test perplexity). One class per task, registered in :data:`TASKS`; the spec, the runner and the
analyses ask the task rather than the model's kind.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from prunelab.data import Dataset, DatasetInfo, load_dataset, load_lm_dataset, resolve_dataset
from prunelab.data.corpus import how_to_get
from prunelab.errors import SpecError
from prunelab.models import input_stats, resolve_model
from prunelab.models.causal import check_positions
from prunelab.registry import Registry

if TYPE_CHECKING:
    from prunelab.experiments.spec import TrunkSpec

#: The longest windows a language model reads by default (the papers' 2048), when it has more positions.
DEFAULT_SEQUENCE_LENGTH = 2048


class Task:
    """How a model's data is read and its levels judged."""

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "test_acc"
    """The headline metric (a :meth:`~prunelab.experiments.store.LevelMetrics.value` name)."""
    metric_name: ClassVar[str] = "test accuracy"
    higher_is_better: ClassVar[bool] = True
    trains_dense: ClassVar[bool] = True
    """Whether an experiment's dense level trains; otherwise it evaluates the given weights (one-shot
    pruning of a trained model) and only the pruned levels train, for ``train``'s length."""
    compacts: ClassVar[bool] = True
    """Whether ``export``, ``count`` and ``bench`` remove pruned units physically; otherwise
    :meth:`export` writes the model as its library saves it, pruned weights at zero."""

    def export(self, loaded, out: Path, *, force: bool, protect) -> Path:
        """Write a level for a task that does not compact (see :attr:`compacts`)."""
        raise NotImplementedError

    def data_info(self, spec: TrunkSpec) -> DatasetInfo:
        raise NotImplementedError

    def load_data(self, spec: TrunkSpec, data_dir: str | Path | None = None) -> Dataset:
        raise NotImplementedError

    def experiment_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        """An experiment's raw values with this task's defaults filled in where none were given."""
        return values


TASKS: Registry[Task] = Registry("task")


class Classification(Task):
    """Labelled examples (images or text), the classes of the data; test accuracy."""

    name = "classification"

    def data_info(self, spec: TrunkSpec) -> DatasetInfo:
        loader = resolve_dataset(spec.data)
        if getattr(loader, "labelled", True) is False:
            raise SpecError(
                f"{spec.data} is running text without labels, for causal language models (hf:PATH of a gpt2, "
                f"opt, llama, qwen2 or mistral folder); model {spec.model!r} is a classifier"
            )
        return loader.info

    def load_data(self, spec: TrunkSpec, data_dir: str | Path | None = None) -> Dataset:
        """The dataset, normalised with the pretrained weights' statistics where they have them; text
        tokenised with the model's tokenizer."""
        self.data_info(spec)
        if getattr(resolve_dataset(spec.data), "is_text", False):
            tokenizer = resolve_model(spec.model).tokenizer(spec.data)
            return load_dataset(spec.data, data_dir=data_dir, val_size=spec.val_size, tokenizer=tokenizer)
        if resolve_model(spec.model).is_text:
            raise SpecError(f"model {spec.model!r} reads text; {spec.data!r} holds images")
        return load_dataset(
            spec.data, data_dir=data_dir, val_size=spec.val_size, stats=input_stats(spec.model, spec.weights)
        )


class LanguageModelling(Task):
    """Running text cut into windows of ``--sequence-length`` tokens; test perplexity. One-shot by
    default: the dense level evaluates the given weights, each level prunes the previous level's
    weights (``--treatment finetune``) and trains ``--iterations`` (0: none) before it is evaluated."""

    name = "language-modelling"
    metric = "test_ppl"
    metric_name = "test perplexity"
    higher_is_better = False
    trains_dense = False
    compacts = False

    def export(self, loaded, out: Path, *, force: bool, protect) -> Path:
        """A save_pretrained folder with the zeros, the masks beside it (:mod:`prunelab.compress.lm_export`)."""
        from prunelab.compress.lm_export import export_language_model

        return export_language_model(loaded, out, force=force, protect=protect)

    def sequence_length(self, spec: TrunkSpec) -> int:
        """``--sequence-length``, else the model's positions up to :data:`DEFAULT_SEQUENCE_LENGTH`."""
        if spec.sequence_length is not None:
            return spec.sequence_length
        positions = resolve_model(spec.model).max_positions()
        return min(positions or DEFAULT_SEQUENCE_LENGTH, DEFAULT_SEQUENCE_LENGTH)

    def data_info(self, spec: TrunkSpec) -> DatasetInfo:
        loader = resolve_dataset(spec.data)
        if not hasattr(loader, "load_corpus"):
            raise SpecError(
                f"model {spec.model!r} is a language model; {spec.data} holds images (give text: text:PATH, "
                "jsonl:PATH, csv:PATH or hf-disk:DIR)"
            )
        length = self.sequence_length(spec)
        source = resolve_model(spec.model)
        check_positions(source.max_positions(), length, repr(spec.model))
        return DatasetInfo(
            name=spec.data,
            input_shape=(length,),
            num_classes=source.vocab_size(),
            mean=(),
            std=(),
            augment=False,
            default_val_size=0,
            description=f"{spec.data} as windows of {length} tokens for {spec.model}",
            how_to_get=how_to_get(loader),
        )

    def load_data(self, spec: TrunkSpec, data_dir: str | Path | None = None) -> Dataset:
        info = self.data_info(spec)
        source = resolve_model(spec.model)
        return load_lm_dataset(
            spec.data, source.tokenizer(spec.data), info.input_shape[0], info.num_classes, data_dir
        )

    def experiment_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        """One-shot unless told otherwise: no training (0 iterations), each level starting from the
        previous level's pruned (and, by SparseGPT, updated) weights."""
        from prunelab.training import TrainConfig

        out = dict(values)
        out.setdefault("treatment", "finetune")
        train = out.get("train")
        if isinstance(train, TrainConfig):
            if train.epochs is None and train.iterations is None:
                out["train"] = train.model_copy(update={"iterations": 0})
        elif isinstance(train, dict) or train is None:
            train = dict(train or {})
            if train.get("epochs") is None and train.get("iterations") is None:
                train["iterations"] = 0
            out["train"] = train
        return out


TASKS.add("classification", Classification())
TASKS.add("language-modelling", LanguageModelling())


def perplexity(loss: float | None) -> float | None:
    """``exp`` of a mean next-token cross-entropy (nats)."""
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf
