"""Summaries of a stored experiment across its seeds: the per-level rows and the winning ticket."""

from __future__ import annotations

from prunelab.errors import SpecError
from prunelab.experiments.store import StoredExperiment
from prunelab.stats import mean_std


def level_rows(exp: StoredExperiment, metric: str = "test_acc") -> list[dict]:
    """One row per level: density and the metric's mean/std over seeds, for the ticket and each control.

    ``ticket``, ``early_stop`` and each control's entry are ``(mean, std)``, or None without results.
    """
    rows = []
    for level in range(exp.spec.pruning.rounds + 1):
        runs = [lv[level] for lv in exp.levels.values() if level in lv]
        if not runs:
            break
        row = {
            "level": level,
            "density": mean_std(r.density for r in runs)[0],
            "seeds": len(runs),
            "ticket": mean_std(r.value(metric) for r in runs),
            "early_stop": mean_std(r.early_stop_iteration for r in runs),
        }
        for name, per_seed in exp.controls.items():
            values = [s[level].value(metric) for s in per_seed.values() if level in s]
            row[name] = mean_std(values) if values else None
        rows.append(row)
    return rows


def check_tolerance(tolerance: float) -> float:
    """A winning-ticket tolerance: a fraction of accuracy in [0, 1] (0.005 = half a point)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance <= 1:
        raise SpecError(
            f"tolerance must be in [0, 1] (a fraction of accuracy, 0.005 = 0.5 points), got {tolerance!r}"
        )
    return float(tolerance)


def winning_ticket(exp: StoredExperiment, tolerance: float = 0.005) -> dict | None:
    """The sparsest level whose mean test accuracy is within ``tolerance`` of dense (0.005 = 0.5 points)."""
    tolerance = check_tolerance(tolerance)
    rows = level_rows(exp)
    if not rows:
        return None
    dense = rows[0]
    winners = [r for r in rows[1:] if r["ticket"][0] >= dense["ticket"][0] - tolerance]
    if not winners:
        return None
    best = min(winners, key=lambda r: r["density"])
    return {
        "level": best["level"],
        "density": best["density"],
        "test_acc": best["ticket"][0],
        "dense_test_acc": dense["ticket"][0],
        "early_stop": best["early_stop"][0],
        "dense_early_stop": dense["early_stop"][0],
        "tolerance": tolerance,
    }
