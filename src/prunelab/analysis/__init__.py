"""Analysis and reports: mask similarity, effective and neuron sparsity, weight stability,
ensembles, tables, plots and a self-contained HTML report (the analyses of Paganini & Forde 2020, Reddy, Vaddiraju & Datta, Ou Yang & Xu).

Every function takes experiments as ids, id prefixes, labels or folders (``root`` as for
``prunelab show``), or as already loaded :class:`~prunelab.experiments.store.StoredExperiment`.
"""

from prunelab.analysis.effective import (
    effective_levels,
    effective_mask,
    effective_sparsity,
    neuron_sparsity,
    unit_densities,
)
from prunelab.analysis.ensemble import (
    EnsembleResult,
    Predictions,
    agreement_matrix,
    ensemble,
    ensemble_accuracy,
    ensemble_table,
    predict_proba,
)
from prunelab.analysis.report import write_report
from prunelab.analysis.similarity import (
    compare_masks,
    hamming,
    jaccard,
    similarity_across_levels,
    similarity_between,
)
from prunelab.analysis.stability import Trajectories, stability_summary, weight_stability, weight_trajectories
from prunelab.analysis.tables import (
    accuracy_table,
    layer_sparsity_table,
    learning_table,
    parameters_table,
    winning_table,
)
from prunelab.table import Table, records_table

__all__ = [
    "EnsembleResult",
    "Predictions",
    "Table",
    "Trajectories",
    "accuracy_table",
    "agreement_matrix",
    "compare_masks",
    "effective_levels",
    "effective_mask",
    "effective_sparsity",
    "ensemble",
    "ensemble_accuracy",
    "ensemble_table",
    "hamming",
    "jaccard",
    "layer_sparsity_table",
    "learning_table",
    "neuron_sparsity",
    "parameters_table",
    "predict_proba",
    "records_table",
    "similarity_across_levels",
    "similarity_between",
    "stability_summary",
    "unit_densities",
    "weight_stability",
    "weight_trajectories",
    "winning_table",
    "write_report",
]
