"""Model zoo: every family module registers its models in :data:`MODELS` on import.

Use :func:`build_model` to get a seeded, initialised network by name; see :func:`describe_models`
for the list with parameter counts.
"""

from prunelab.models import alexnet, conv, lenet, resnet, vgg  # noqa: F401  (registration)
from prunelab.models.init import INITS, initialise
from prunelab.models.registry import (
    MODELS,
    ModelEntry,
    build_model,
    count_parameters,
    describe_models,
    model_names,
    register_model,
)

__all__ = [
    "INITS",
    "MODELS",
    "ModelEntry",
    "build_model",
    "count_parameters",
    "describe_models",
    "initialise",
    "model_names",
    "register_model",
]
