"""prunelab: neural-network pruning on one engine.

Masks live beside a plain ``nn.Module`` (its ``state_dict`` stays standard); datasets are held as
tensors; models, datasets, optimizers and schedules are registered by name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunelab.experiments import ExperimentSpec

#: Where each public name lives. Imported on first use, so that ``import prunelab`` (and the command
#: line's help and listings) does not import torch.
_EXPORTS = {
    "load_compact": "prunelab.compress",
    **dict.fromkeys(
        ("DATA_SOURCES", "DATASETS", "Dataset", "load_dataset", "resolve_dataset"), "prunelab.data"
    ),
    "PrunelabError": "prunelab.errors",
    **dict.fromkeys(
        ("ExperimentSpec", "Store", "TreatmentSpec", "TrunkSpec", "load_level"), "prunelab.experiments"
    ),
    **dict.fromkeys(("MODELS", "SOURCES", "build_model", "resolve_model"), "prunelab.models"),
    **dict.fromkeys(
        ("Mask", "PruneSpec", "from_torch_prune", "heads_mask", "prune", "random_mask", "sparsity_report"),
        "prunelab.pruning",
    ),
    "set_threads": "prunelab.threads",
    **dict.fromkeys(
        ("TrainConfig", "Trainer", "TrainHook", "TrainResult", "evaluate", "train"), "prunelab.training"
    ),
}


def __getattr__(name: str) -> Any:
    source = "load_level" if name == "load" else name  # prunelab.load is load_level
    if source in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[source]), source)
    else:  # a sub-package, as `import prunelab` once imported them all: prunelab.compress.compact
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'prunelab' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


__version__ = "0.1.0"


def run(spec: ExperimentSpec, root=None, *, data_dir=None):
    """Run (or resume, or just read back) an experiment; returns its per-seed, per-level metrics."""
    from prunelab.experiments import ExperimentRunner

    return ExperimentRunner(spec, root, data_dir=data_dir).run()


def groups(model, example, *, train: bool = True):
    """The coupled groups of ``model`` (what structured pruning removes together), traced on
    ``example``, one batch it accepts (see :func:`prunelab.coupling.discover`)."""
    from prunelab.coupling import discover

    return discover(model, example, train=train)


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
    "groups",
    "heads_mask",
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
