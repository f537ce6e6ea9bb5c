"""prunelab: neural-network pruning on one engine.

Masks live beside a plain ``nn.Module`` (its ``state_dict`` stays standard); datasets are held as
tensors; models, datasets, optimizers and schedules are registered by name.
"""

from prunelab.data import DATASETS, Dataset, load_dataset
from prunelab.errors import PrunelabError
from prunelab.models import MODELS, build_model
from prunelab.pruning import Mask, from_torch_prune, sparsity_report
from prunelab.training import TrainConfig, Trainer, TrainResult, evaluate, train

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "MODELS",
    "Dataset",
    "Mask",
    "PrunelabError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "evaluate",
    "from_torch_prune",
    "load_dataset",
    "sparsity_report",
    "train",
]
