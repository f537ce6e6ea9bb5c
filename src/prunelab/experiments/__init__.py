"""Lottery-ticket experiments: specs, treatments and controls, resumable runs, the results store.

The names below are imported from their modules on first use, so that a light module of this
package (:mod:`~prunelab.experiments.paths`) is imported without the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("Artifact",), "artifact"),
    **dict.fromkeys(("Branch", "LevelInputs", "Start"), "branches"),
    **dict.fromkeys(("CONTROLS", "Control"), "controls"),
    **dict.fromkeys(("LoadedLevel", "load_level"), "load"),
    **dict.fromkeys(("LevelMetrics",), "metrics"),
    **dict.fromkeys(("ExperimentResult", "ExperimentRunner"), "runner"),
    **dict.fromkeys(
        (
            "ExperimentSpec",
            "PruneSpec",
            "TreatmentSpec",
            "TrunkSpec",
            "load_spec_file",
            "parse_seeds",
            "read_spec_file",
        ),
        "spec",
    ),
    **dict.fromkeys(("Store", "StoredExperiment", "find_experiment", "results_root"), "store"),
    **dict.fromkeys(("TREATMENTS", "Treatment"), "treatments"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
