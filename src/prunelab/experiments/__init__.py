"""Lottery-ticket experiments: specs, treatments and controls, resumable runs, the results store."""

from prunelab.experiments.branches import Branch, LevelInputs, Start
from prunelab.experiments.controls import CONTROLS, Control
from prunelab.experiments.load import LoadedLevel, load_level
from prunelab.experiments.runner import ExperimentResult, ExperimentRunner
from prunelab.experiments.spec import (
    ExperimentSpec,
    PruneSpec,
    TreatmentSpec,
    TrunkSpec,
    load_spec_file,
    parse_seeds,
    read_spec_file,
)
from prunelab.experiments.store import (
    Artifact,
    LevelMetrics,
    Store,
    StoredExperiment,
    find_experiment,
    results_root,
)
from prunelab.experiments.treatments import TREATMENTS, Treatment

__all__ = [
    "CONTROLS",
    "TREATMENTS",
    "Artifact",
    "Branch",
    "Control",
    "ExperimentResult",
    "ExperimentRunner",
    "ExperimentSpec",
    "LevelInputs",
    "LevelMetrics",
    "LoadedLevel",
    "PruneSpec",
    "Start",
    "Store",
    "StoredExperiment",
    "Treatment",
    "TreatmentSpec",
    "TrunkSpec",
    "find_experiment",
    "load_level",
    "load_spec_file",
    "parse_seeds",
    "read_spec_file",
    "results_root",
]
