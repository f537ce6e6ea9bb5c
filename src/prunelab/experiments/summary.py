"""Reading finished (or partial) experiments back from disk, and summarising them across seeds."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.experiments.spec import ExperimentSpec
from prunelab.experiments.store import results_root


@dataclass
class StoredExperiment:
    """An experiment folder: its spec and whatever levels have finished, per seed."""

    directory: Path
    spec: ExperimentSpec
    trunk: str
    levels: dict[int, dict[int, dict]]  # seed -> level -> metrics
    controls: dict[str, dict[int, dict[int, dict]]]  # control -> seed -> level -> metrics

    @property
    def id(self) -> str:
        return self.directory.name

    def status(self) -> str:
        want = self.spec.pruning.rounds + 1
        done = sum(min(len(v), want) for v in self.levels.values())
        total = want * len(self.spec.seeds)
        return "done" if done == total else f"{done}/{total} levels"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_experiment(directory: Path, root: Path) -> StoredExperiment:
    meta = _read(directory / "spec.json")
    if meta is None:
        raise PrunelabError(f"{directory} is not an experiment folder (no readable spec.json)")
    spec = ExperimentSpec(**meta["spec"])
    levels: dict[int, dict[int, dict]] = {}
    controls: dict[str, dict[int, dict[int, dict]]] = {c: {} for c in spec.controls}
    for seed in spec.seeds:
        dense = _read(root / "trunks" / meta["trunk"] / f"seed-{seed}" / "dense" / "metrics.json")
        if dense is None:
            continue
        levels[seed] = {0: dense}
        for level in range(1, spec.pruning.rounds + 1):
            level_dir = directory / f"seed-{seed}" / f"level-{level:02d}"
            metrics = _read(level_dir / "metrics.json")
            if metrics is None:
                break
            levels[seed][level] = metrics
            for name in spec.controls:
                c = _read(level_dir / "controls" / name / "metrics.json")
                if c is not None:
                    controls[name].setdefault(seed, {})[level] = c
    return StoredExperiment(directory, spec, meta["trunk"], levels, controls)


def list_experiments(root: str | Path | None = None) -> list[StoredExperiment]:
    base = results_root(root)
    folders = sorted((base / "experiments").glob("*/spec.json")) if (base / "experiments").is_dir() else []
    return [load_experiment(p.parent, base) for p in folders]


def find_experiment(run: str, root: str | Path | None = None) -> StoredExperiment:
    """An experiment by id, unique id prefix, label, or folder path."""
    base = results_root(root)
    path = Path(run)
    if (path / "spec.json").is_file():
        return load_experiment(path, path.parent.parent)
    found = [e for e in list_experiments(base) if e.id.startswith(run) or e.spec.label() == run]
    if len(found) == 1:
        return found[0]
    known = ", ".join(f"{e.id} ({e.spec.label()})" for e in list_experiments(base)) or "none yet"
    if not found:
        raise PrunelabError(f"no experiment {run!r} under {base}; experiments there: {known}")
    raise PrunelabError(
        f"{run!r} matches {len(found)} experiments; give more of the id. Experiments: {known}"
    )


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def level_rows(exp: StoredExperiment, metric: str = "test_acc") -> list[dict]:
    """One row per level: density and the metric's mean/std over seeds, for the run and each control."""
    rows = []
    for level in range(exp.spec.pruning.rounds + 1):
        runs = [lv[level] for lv in exp.levels.values() if level in lv]
        if not runs:
            break
        row = {
            "level": level,
            "density": statistics.fmean(r["density"] for r in runs),
            "seeds": len(runs),
            "ticket": mean_std([r["final"][metric] for r in runs]),
            "early_stop": mean_std([float(r["early_stop_iteration"]) for r in runs]),
        }
        for name, per_seed in exp.controls.items():
            row[name] = mean_std([s[level]["final"][metric] for s in per_seed.values() if level in s])
        rows.append(row)
    return rows


def winning_ticket(exp: StoredExperiment, tolerance: float = 0.005) -> dict | None:
    """The sparsest level whose mean test accuracy is within ``tolerance`` of dense (0.005 = 0.5 points)."""
    rows = level_rows(exp)
    if not rows or rows[0]["ticket"] is None:
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
