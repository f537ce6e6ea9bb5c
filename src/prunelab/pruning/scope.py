"""Which weights compete with each other: a scope maps each layer to the pool it is ranked in.

Every pool loses exactly ``round(rate * alive elements in the pool)``. Layerwise pruning gives each
layer its own pool; global pruning one pool (one threshold) for all; ``by-type`` pools conv layers
apart from linear ones, the middle ground of Paganini & Forde 2020.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from prunelab.pruning.layers import LayerInfo
from prunelab.registry import Registry

Scope = Callable[[LayerInfo], Hashable]

SCOPES: Registry[Scope] = Registry("scope")
SCOPES.add("layerwise", lambda layer: layer.param, "each layer is its own pool")
SCOPES.add("global", lambda layer: "all", "one pool, one threshold, for all layers")
SCOPES.add("by-type", lambda layer: layer.kind, "conv layers pooled apart from linear layers")
