"""One trained experiment level, compacted: what ``export``, ``count`` and ``bench`` start from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunelab.compress.compact import CompactResult, compact
from prunelab.experiments import LoadedLevel, load_level
from prunelab.models import example_input


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
