"""prunelab: neural-network pruning on one engine.

Masks live beside a plain ``nn.Module`` (its ``state_dict`` stays standard); datasets are held as
tensors; models, datasets, optimizers and schedules are registered by name.
"""

from prunelab.compress import load_compact
from prunelab.data import DATA_SOURCES, DATASETS, Dataset, load_dataset, resolve_dataset
from prunelab.errors import PrunelabError
from prunelab.experiments import ExperimentSpec, Store, TreatmentSpec, TrunkSpec, load_level
from prunelab.models import MODELS, SOURCES, build_model, resolve_model
from prunelab.pruning import Mask, PruneSpec, from_torch_prune, prune, random_mask, sparsity_report
from prunelab.threads import set_threads
from prunelab.training import TrainConfig, Trainer, TrainHook, TrainResult, evaluate, train

__version__ = "0.1.0"

load = load_level


def run(spec: ExperimentSpec, root=None, *, data_dir=None):
    """Run (or resume, or just read back) an experiment; returns its per-seed, per-level metrics."""
    from prunelab.experiments import ExperimentRunner

    return ExperimentRunner(spec, root, data_dir=data_dir).run()


def sweep(base, grid, *, executor="local", root=None, data_dir=None, dry_run=False, **options):
    """Run a grid of experiments (see :func:`prunelab.sweeps.sweep`): ``base`` an ExperimentSpec or a
    table of settings, ``grid`` a list of values per field (``{"pruning.method": [...]}``)."""
    from prunelab.sweeps import sweep as run_sweep

    return run_sweep(base, grid, executor=executor, root=root, data_dir=data_dir, dry_run=dry_run, **options)


__all__ = [
    "DATASETS",
    "DATA_SOURCES",
    "MODELS",
    "SOURCES",
    "Dataset",
    "ExperimentSpec",
    "Mask",
    "PruneSpec",
    "PrunelabError",
    "Store",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "Trainer",
    "TreatmentSpec",
    "TrunkSpec",
    "build_model",
    "evaluate",
    "from_torch_prune",
    "load",
    "load_compact",
    "load_dataset",
    "load_level",
    "prune",
    "random_mask",
    "resolve_dataset",
    "resolve_model",
    "run",
    "set_threads",
    "sparsity_report",
    "sweep",
    "train",
]
