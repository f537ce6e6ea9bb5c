"""Compression and deployment: physically smaller models, true counts, sparse execution, latency, export.

* :func:`compact` removes the units of coupled groups (:mod:`prunelab.coupling`: channels, heads,
  groups of grouped convs) that a mask leaves unread or dead, from every layer they belong to, and
  residual blocks whose whole branch it zeroes (:mod:`prunelab.compress.blocks`), and checks the
  result against the masked model in eval and in train mode;
* :func:`count` and :func:`removal_table` give parameters and operator-level FLOPs (MACs = FLOPs/2)
  of dense, masked and compacted models;
* :func:`sparsify` runs unstructured masks with sparse layers (:class:`SparseLinear`,
  :class:`SparseConv2d`; prunelab's kernel in the formats of :mod:`prunelab.compress.formats`) where
  that is measured to be faster;
* :func:`benchmark` / :func:`bench_level` time all versions over batch sizes, :func:`plot_latency`
  draws Ou Yang & Xu's Figs. 6 and 7;
* :func:`export_compact` / :func:`load_compact` save and load a compacted model without pickle.
"""

from prunelab.compress.compact import CompactResult, compact, layer_plan
from prunelab.compress.count import (
    CountReport,
    LayerCount,
    RemovalRow,
    count,
    layer_flops,
    nonzero_flops,
    removal_table,
)
from prunelab.compress.export import export_compact, export_onnx, load_compact
from prunelab.compress.formats import FORMATS, Pattern
from prunelab.compress.latency import (
    BenchResult,
    Timing,
    Variant,
    bench_level,
    benchmark,
    pinned,
    plot_latency,
    standard_variants,
    time_interleaved,
)
from prunelab.compress.level import CompactLevel, compact_level
from prunelab.compress.sparse import (
    SemiStructuredLinear,
    SparseConv2d,
    SparseLinear,
    SparseResult,
    semi_structured_support,
    sparsify,
    unstructured_sparsity,
)

__all__ = [
    "FORMATS",
    "BenchResult",
    "CompactLevel",
    "CompactResult",
    "CountReport",
    "LayerCount",
    "Pattern",
    "RemovalRow",
    "SemiStructuredLinear",
    "SparseConv2d",
    "SparseLinear",
    "SparseResult",
    "Timing",
    "Variant",
    "bench_level",
    "benchmark",
    "compact",
    "compact_level",
    "count",
    "export_compact",
    "export_onnx",
    "layer_flops",
    "layer_plan",
    "load_compact",
    "nonzero_flops",
    "pinned",
    "plot_latency",
    "removal_table",
    "semi_structured_support",
    "sparsify",
    "standard_variants",
    "time_interleaved",
    "unstructured_sparsity",
]
