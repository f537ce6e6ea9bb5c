"""Models: prunelab's zoo (every family module registers its models in :data:`MODELS` on import),
and the sources a ``--model`` string may name (:data:`SOURCES`: torchvision, timm, your own code).

Use :func:`build_model` to get a seeded, initialised network from any of them; see
:func:`describe_models` for the zoo with parameter counts.
"""

from prunelab.models import alexnet, conv, lenet, resnet, vgg  # noqa: F401  (registration)
from prunelab.models.build import ResizeInputs, build_model, example_input, input_stats, model_input_shape
from prunelab.models.init import INITS, initialise
from prunelab.models.registry import (
    MODELS,
    ModelEntry,
    count_parameters,
    describe_models,
    model_names,
    register_model,
)
from prunelab.models.source import SOURCES, ModelSource, register_source, resolve_model, source_forms

# isort: split
from prunelab.models import hf  # noqa: F401  (registers hf: and bert-tiny after the others)

__all__ = [
    "INITS",
    "MODELS",
    "SOURCES",
    "ModelEntry",
    "ModelSource",
    "ResizeInputs",
    "build_model",
    "count_parameters",
    "describe_models",
    "example_input",
    "initialise",
    "input_stats",
    "model_input_shape",
    "model_names",
    "register_model",
    "register_source",
    "resolve_model",
    "source_forms",
]
