"""Summary statistics over seeds, computed the same way everywhere."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); (NaN, NaN) for none, which plots draw as gaps."""
    data = [float(v) for v in values]
    if not data:
        return math.nan, math.nan
    return statistics.fmean(data), statistics.stdev(data) if len(data) > 1 else 0.0
