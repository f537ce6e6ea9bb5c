"""Lottery-ticket experiments: specs, weight treatments, resumable runs, summaries."""

from prunelab.experiments.load import LoadedLevel, load_level
from prunelab.experiments.runner import ExperimentResult, ExperimentRunner
from prunelab.experiments.spec import (
    ExperimentSpec,
    PruneSpec,
    TreatmentSpec,
    load_spec_file,
    parse_seeds,
)
from prunelab.experiments.store import results_root
from prunelab.experiments.treatments import TREATMENTS, Treatment

__all__ = [
    "TREATMENTS",
    "ExperimentResult",
    "ExperimentRunner",
    "ExperimentSpec",
    "LoadedLevel",
    "PruneSpec",
    "Treatment",
    "TreatmentSpec",
    "load_level",
    "load_spec_file",
    "parse_seeds",
    "results_root",
]
