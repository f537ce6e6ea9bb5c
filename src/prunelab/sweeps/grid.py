"""A grid of experiments: a base spec and lists of values for any of its fields, expanded into specs.

A sweep file holds two tables: ``[base]``, what a ``prunelab run --config`` file holds, and
``[grid]``, a list of values per field, named as in the spec (``pruning.method``, ``train.lr``; a
TOML dotted key or a nested table are the same thing). A list may also hold tables for a nested
spec (``pruning = [{method = "magnitude"}, {method = "magnitude", layers = "linear"}]``), each laid
over the base's: several fields that vary together. ``cases`` is a list of tables of any fields
(``{name = "fc-only L1 US", pruning = {method = "magnitude", layers = "fc-only"}}``): named
variants, such as the columns of a paper's table. The product of the lists is expanded into
experiments, each with the base's seeds, and every one is validated before anything trains.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelab.errors import SpecError
from prunelab.experiments.spec import ExperimentSpec, read_spec_file
from prunelab.spec import FrozenSpec, build_spec, merge, unwrap

#: Fields a grid may not vary: seeds are each experiment's replicates (set them in [base]).
NOT_IN_GRID = {
    "seeds": 'seeds are the replicates inside each experiment; set them in [base] (e.g. seeds = "0-4")'
}
MAX_EXPERIMENTS = 10_000
#: The grid key whose values are tables of any fields, laid over the base together.
CASES = "cases"


@dataclass(frozen=True)
class GridPoint:
    """One experiment of a sweep: the grid's values for it (dotted field -> value) and its spec."""

    values: dict[str, Any]
    spec: ExperimentSpec

    def label(self) -> str:
        return _label(self.values)


def _label(values: Mapping[str, Any]) -> str:
    """The grid values, short: ``magnitude, 0.01`` (a table value as ``method=magnitude layers=linear``)."""
    return ", ".join(short(v) for v in values.values())


def short(value: Any) -> str:
    """A grid value in a few words: a case by its name, a table as ``k=v`` pairs, a list comma-separated."""
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return value["name"]
    if isinstance(value, Mapping):
        return " ".join(f"{k}={short(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(map(short, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fields(spec: type[FrozenSpec], prefix: str = "") -> list[str]:
    """Every field name of ``spec``, nested ones dotted (``pruning``, ``pruning.method``, ...)."""
    out = []
    for name, info in spec.model_fields.items():
        out.append(prefix + name)
        base = unwrap(info.annotation)[0]
        if isinstance(base, type) and issubclass(base, FrozenSpec):
            out += _fields(base, f"{prefix}{name}.")
    return out


def check_field(key: str) -> None:
    """Refuse a grid key that names no field of :class:`ExperimentSpec`, listing the valid ones."""
    if key in NOT_IN_GRID:
        raise SpecError(f"grid key {key!r}: {NOT_IN_GRID[key]}")
    spec: type[FrozenSpec] = ExperimentSpec
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        info = spec.model_fields.get(part)
        if info is None:
            names = list(spec.model_fields)
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" Did you mean {'.'.join([*parts[:i], close[0]])!r}?" if close else ""
            owner = f"{where} has no field {part!r}" if where else f"{part!r} is not an experiment field"
            valid = ", ".join(_fields(ExperimentSpec) if not where else [f"{where}.{n}" for n in names])
            raise SpecError(f"grid key {key!r}: {owner}.{hint} Valid fields: {valid}")
        base = unwrap(info.annotation)[0]
        if i + 1 < len(parts):
            if not (isinstance(base, type) and issubclass(base, FrozenSpec)):
                raise SpecError(f"grid key {key!r}: {'.'.join(parts[: i + 1])} has no fields of its own")
            spec = base


def _leaves(table: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of a table's values (nested tables walked)."""
    out = []
    for name, value in table.items():
        if isinstance(value, Mapping) and value:
            out += _leaves(value, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def _check_cases(cases: list) -> None:
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping) or not case:
            raise SpecError(
                f"grid key 'cases': entry {i + 1} must be a table of settings, e.g. "
                f'{{name = "L1 US", pruning = {{method = "magnitude"}}}}; got {case!r}'
            )
        for key in _leaves(case):
            check_field(key)


def flatten(grid: Mapping[str, Any], prefix: str = "") -> dict[str, list]:
    """``{"pruning": {"method": [...]}}`` and ``{"pruning.method": [...]}`` -> ``{"pruning.method": [...]}``.

    A table holding a non-list that is not a table is refused: every grid entry is a list.
    """
    out: dict[str, list] = {}
    for name, value in grid.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and key != CASES:
            if not value:
                raise SpecError(f"grid key {key!r} holds an empty table; give a list of values")
            out |= flatten(value, f"{key}.")
        elif isinstance(value, list | tuple):
            if not value:
                raise SpecError(f"grid key {key!r} has an empty list; give at least one value")
            out[key] = list(value)
        else:
            raise SpecError(
                f"grid key {key!r} must be a list of values, got {value!r}; put a single value in [base] "
                f"or write {key} = [{value!r}]"
            )
    return out


def _nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested tables: ``{"pruning.method": "random"}`` -> ``{"pruning": {"method": "random"}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == CASES:
            out = merge(out, value)
            continue
        *path, last = key.split(".")
        target = out
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return out


def base_values(base: ExperimentSpec | Mapping[str, Any] | None) -> dict[str, Any]:
    """The base settings as a table (a spec's non-default fields, or the table as given)."""
    if base is None:
        return {}
    if isinstance(base, ExperimentSpec):
        return base.model_dump(mode="json", exclude_defaults=True)
    if not isinstance(base, Mapping):
        raise SpecError(f"the sweep's base must be a table of settings or an ExperimentSpec, got {base!r}")
    return dict(base)


def expand(base: ExperimentSpec | Mapping[str, Any] | None, grid: Mapping[str, Any]) -> list[GridPoint]:
    """The grid's product laid over ``base``, each spec validated; the first bad combination is named.

    Experiments without a name are named after their grid values (the base's name, if any, first).
    Two combinations that are the same experiment are refused.
    """
    if not isinstance(grid, Mapping):
        raise SpecError(f"the grid must be a table of lists, got {grid!r}")
    lists = flatten(grid)
    if not lists:
        raise SpecError(
            "the grid is empty; give at least one field with a list of values, "
            'e.g. "pruning.method" = ["magnitude", "random"]'
        )
    for key, values in lists.items():
        if key == CASES:
            _check_cases(values)
        else:
            check_field(key)
    count = 1
    for v in lists.values():
        count *= len(v)
    if count > MAX_EXPERIMENTS:
        raise SpecError(f"the grid expands to {count:,} experiments; at most {MAX_EXPERIMENTS:,}")
    start = base_values(base)
    if not isinstance(start.get("name", ""), str | None):
        raise SpecError("base name must be text")
    points: list[GridPoint] = []
    seen: dict[str, GridPoint] = {}
    for combo in itertools.product(*lists.values()):
        values = dict(zip(lists, combo, strict=True))
        settings = merge(start, _nested(values))
        if "name" not in values:  # named after the grid values (a case's own name among them)
            settings["name"] = " ".join(filter(None, [start.get("name"), _label(values)]))
        try:
            spec = build_spec(ExperimentSpec, **settings)
        except SpecError as exc:
            raise SpecError(f"grid combination {_describe(values)}: {exc}") from None
        point = GridPoint(values, spec)
        ident = spec.experiment_id()
        if ident in seen:
            raise SpecError(
                f"grid combinations {_describe(seen[ident].values)} and {_describe(values)} are the same "
                f"experiment ({ident}); remove one of the values"
            )
        seen[ident] = point
        points.append(point)
    return points


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in values.items())


@dataclass(frozen=True)
class SweepFile:
    """A sweep file read: its base settings and its grid (unexpanded)."""

    path: Path
    base: dict[str, Any]
    grid: dict[str, Any]

    def expand(self) -> list[GridPoint]:
        return expand(self.base, self.grid)

    def with_base(self, updates: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(base, grid) with ``updates`` (nested, e.g. from flags) laid over the base; a field the
        grid varies is refused, since the grid's values would replace it."""
        varied = set()
        for key, values in flatten(self.grid).items():
            prefix = "" if key == CASES else f"{key}."
            for v in values:
                varied |= {prefix + k for k in _leaves(v)} if isinstance(v, Mapping) else {key}
        clash = sorted(set(_leaves(updates)) & varied)
        if clash:
            raise SpecError(
                f"{clash[0]} is varied by the grid of {self.path}; a flag can set only fields the grid "
                "leaves alone (change the grid's list instead)"
            )
        return merge(self.base, updates), self.grid


SWEEP_TABLES = ("base", "grid")


def read_sweep_file(path: str | Path) -> SweepFile:
    """A TOML or YAML sweep file: ``[base]`` (optional) and ``[grid]``; nothing else."""
    values = read_spec_file(path)
    unknown = [k for k in values if k not in SWEEP_TABLES]
    if unknown:
        raise SpecError(
            f"sweep file {path}: unknown table {unknown[0]!r}; a sweep file holds [base] (what a "
            "--config file holds) and [grid] (a list of values per field)"
        )
    if "grid" not in values:
        raise SpecError(f"sweep file {path} has no [grid] table of lists to expand")
    base, grid = values.get("base", {}), values["grid"]
    for name, table in (("base", base), ("grid", grid)):
        if not isinstance(table, Mapping):
            raise SpecError(f"sweep file {path}: [{name}] must be a table, got {table!r}")
    return SweepFile(Path(path), dict(base), dict(grid))


def grid_columns(points: Sequence[GridPoint]) -> list[str]:
    """The grid's fields, in file order."""
    return list(points[0].values) if points else []
