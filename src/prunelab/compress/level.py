"""One trained experiment level, compacted (and made sparse): what ``export``, ``count`` and ``bench`` start from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prunelab.compress.compact import CompactResult, compact
from prunelab.compress.sparse import SparseResult, sparsify, unstructured_sparsity
from prunelab.errors import PrunelabError
from prunelab.experiments import LoadedLevel, load_level
from prunelab.models import example_input

MIN_SPARSITY = 0.5  # below this share of zeros a layer is not tried sparse


@dataclass
class CompactLevel:
    loaded: LoadedLevel
    result: CompactResult

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return level_input_shape(self.loaded)

    @property
    def num_classes(self) -> int:
        return self.loaded.spec.data_info.num_classes

    def source(self) -> dict:
        """Where the compacted weights came from, for the export plan."""
        return {
            "experiment": self.loaded.experiment.id,
            "seed": self.loaded.seed,
            "level": self.loaded.level,
            "control": self.loaded.control,
            "data": self.loaded.spec.data,
            "density": self.loaded.mask.density(),
        }


def level_input_shape(loaded: LoadedLevel) -> tuple[int, int, int]:
    return tuple(loaded.spec.data_info.input_shape)  # type: ignore[return-value]


def compact_level(
    run: str | Path,
    level: int | None = None,
    *,
    seed: int | None = None,
    control: str | None = None,
    root: str | Path | None = None,
    exact: bool = True,
) -> CompactLevel:
    """Load ``level`` of experiment ``run`` (see :func:`prunelab.load_level`) and compact it."""
    loaded = load_level(run, level, seed=seed, control=control, root=root)
    example = example_input(loaded.model, level_input_shape(loaded))
    return CompactLevel(loaded, compact(loaded.model, loaded.mask, example, exact=exact))


def sparsify_level(
    item: CompactLevel,
    *,
    batch_size: int = 1,
    threads: int | None = 1,
    force: bool = False,
    repeats: int = 10,
) -> SparseResult | None:
    """The compacted model of ``item`` with its sparse enough layers swapped for sparse ones where
    faster, timed at ``batch_size`` on ``threads`` threads (see :func:`~prunelab.compress.sparse.sparsify`).

    A model with no unstructured sparsity left after compaction (no layer at least half zeros) has
    nothing to gain: refused, or with ``force`` None (the caller writes the dense model).
    """
    from prunelab.compress.latency import pinned

    zeros = unstructured_sparsity(item.result.model)
    sparsest = max(zeros, key=zeros.get) if zeros else None
    if sparsest is None or zeros[sparsest] < MIN_SPARSITY:
        if force:
            return None
        where = f"{item.loaded.experiment.id} level {item.loaded.level}"
        found = (
            f"its sparsest layer, {sparsest}, is {zeros[sparsest]:.0%} zeros"
            if sparsest
            else "it has no Linear or Conv2d layer"
        )
        raise PrunelabError(
            f"{where} has no unstructured sparsity to run sparse after compaction: {found} (a sparse layer "
            f"needs at least {MIN_SPARSITY:.0%}); nothing to gain from --sparse. Export without --sparse, or "
            "pass --force to write the dense model anyway"
        )
    model = item.result.model
    example = example_input(model, item.input_shape, batch_size, generator=torch.Generator().manual_seed(0))
    with pinned(threads):
        return sparsify(model, example, min_sparsity=MIN_SPARSITY, repeats=repeats)
