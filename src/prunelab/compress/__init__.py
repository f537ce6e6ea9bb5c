"""Compression and deployment: physical removal, true counts, sparse execution, latency, export."""

from prunelab.compress.graph import CompactResult, compact, layer_plan

__all__ = ["CompactResult", "compact", "layer_plan"]
