"""The results store's reader: a results root's experiments read back, and each experiment's spec written.

What lives where is :mod:`~prunelab.experiments.paths`' (the one module that spells the layout);
what ``metrics.json`` holds is :mod:`~prunelab.experiments.metrics`'; one trained model's folder is an
:class:`~prunelab.experiments.artifact.Artifact`; the locks are :mod:`prunelab.locks`'. :class:`Store`
reads experiments back as :class:`StoredExperiment`, which ``show``, ``report``, the analyses,
``export`` and ``bench`` all use.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunelab.errors import CheckpointError, PrunelabError
from prunelab.experiments.artifact import Artifact, Damage, DamagedResults, state_shapes
from prunelab.experiments.metrics import LevelMetrics, weight_entries
from prunelab.experiments.paths import Paths, root_of, spec_file
from prunelab.io import atomic_write_json, check_folder_path, user_path
from prunelab.pruning.mask import Mask, prunable_names
from prunelab.spec import build_spec

if TYPE_CHECKING:
    from prunelab.experiments.spec import ExperimentSpec

DEFAULT_ROOT = Path("~/.prunelab/runs")


def results_root(root: str | Path | None = None) -> Path:
    """``--root``, else ``$PRUNELAB_HOME``, else ``~/.prunelab/runs``."""
    if root:
        return user_path(root)
    env = os.environ.get("PRUNELAB_HOME")
    return user_path(env) if env else DEFAULT_ROOT.expanduser()


# the store -----------------------------------------------------------------------------------------
class Store:
    """A results root: the artifacts where :class:`~prunelab.experiments.paths.Paths` puts them, and
    reading experiments back."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = check_folder_path(results_root(root), "the results folder")
        self.paths = Paths(self.root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # layout ---------------------------------------------------------------------------------------
    def trunk_dir(self, trunk: str, seed: int) -> Path:
        return self.paths.trunk(trunk, seed)

    def dense(self, trunk: str, seed: int) -> Artifact:
        return Artifact(self.paths.dense(trunk, seed))

    def trunk_point(self, trunk: str, seed: int, iteration: int) -> Artifact:
        """The trunk's weights after ``iteration`` iterations (a rewind point)."""
        return Artifact(self.paths.trunk_point(trunk, seed, iteration))

    def experiment_dir(self, experiment: str) -> Path:
        return self.paths.experiment(experiment)

    def spec_path(self, experiment: str) -> Path:
        return self.paths.spec(experiment)

    def level(self, experiment: str, seed: int, level: int) -> Artifact:
        """A pruned level (``level`` >= 1) of an experiment."""
        return Artifact(self.paths.level(experiment, seed, level))

    def control(self, experiment: str, seed: int, level: int, name: str) -> Artifact:
        return Artifact(self.paths.control(experiment, seed, level, name))

    # writing --------------------------------------------------------------------------------------
    def write_spec(self, spec: ExperimentSpec) -> None:
        """spec.json, whose seeds are every seed ever run: a later ``--seeds 5`` adds to 0-2."""
        ident = spec.experiment_id()
        path = self.spec_path(ident)
        seeds = tuple(spec.seeds)
        if path.is_file():
            try:
                earlier = json.loads(path.read_text())["spec"].get("seeds", [])
                seeds = tuple(dict.fromkeys([*earlier, *seeds]))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass  # an unreadable spec.json is rewritten from this spec
        whole = spec.model_copy(update={"seeds": tuple(sorted(seeds))})
        atomic_write_json(
            path,
            {
                "id": ident,
                "trunk": spec.trunk_id(),
                "label": spec.label(),
                "spec": whole.model_dump(mode="json"),
                "fingerprints": spec.fingerprints(),
            },
        )

    # reading --------------------------------------------------------------------------------------
    def read(self, directory: Path) -> StoredExperiment:
        """The experiment in ``directory`` (under this root) with every finished level.

        A damaged ``spec.json`` is a :class:`DamagedResults` error; a damaged level is recorded in
        ``StoredExperiment.damage`` (with its path and what is wrong), never taken for a missing one.
        """
        from prunelab.experiments.spec import ExperimentSpec

        path = spec_file(directory)
        try:
            meta = json.loads(path.read_text())
            values, trunk = meta["spec"], str(meta["trunk"])
            if not isinstance(values, dict):
                raise TypeError("its spec is not a table")
        except FileNotFoundError:
            raise PrunelabError(f"{directory} is not an experiment folder (it has no spec.json)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DamagedResults(
                f"{path} is damaged ({type(exc).__name__}: {exc}); restore it, or remove {directory} and "
                "rerun the experiment"
            ) from None
        try:
            spec = build_spec(ExperimentSpec, **values)
        except PrunelabError as exc:
            raise DamagedResults(f"{path} holds a spec this prunelab cannot read: {exc}") from None
        exp = StoredExperiment(self, directory, spec, trunk, {}, {c: {} for c in spec.controls})
        recorded = meta.get("fingerprints")
        exp.fingerprints = dict(recorded) if isinstance(recorded, dict) else {}

        def read_metrics(art: Artifact, key: tuple[int, int, str | None]) -> LevelMetrics | None:
            try:
                return art.metrics()
            except CheckpointError as exc:
                exp.damage[key] = Damage(str(exc), art.dir)
                return None

        for seed in spec.seeds:
            dense = self.dense(trunk, seed)
            if not dense.done or (metrics := read_metrics(dense, (seed, 0, None))) is None:
                continue
            exp.levels[seed] = {0: metrics}
            for level in range(1, spec.pruning.rounds + 1):
                art = exp.artifact(seed, level)
                if not art.done or (metrics := read_metrics(art, (seed, level, None))) is None:
                    break
                exp.levels[seed][level] = metrics
                for name in spec.controls:
                    branch = exp.artifact(seed, level, name)
                    if branch.done and (metrics := read_metrics(branch, (seed, level, name))) is not None:
                        exp.controls[name].setdefault(seed, {})[level] = metrics
        return exp

    def scan(self) -> tuple[list[StoredExperiment], dict[str, str]]:
        """Every experiment under the root that can be read, and the folders that cannot (id -> why)."""
        good, bad = [], {}
        for path in self.paths.spec_files():
            try:
                good.append(self.read(path.parent))
            except PrunelabError as exc:
                bad[path.parent.name] = str(exc)
        return good, bad

    def stored(self, experiment: str) -> StoredExperiment | None:
        """Experiment ``experiment`` read back, or None when it has no ``spec.json`` yet."""
        directory = self.experiment_dir(experiment)
        return self.read(directory) if spec_file(directory).is_file() else None

    def experiments(self) -> list[StoredExperiment]:
        """Every experiment that can be read (see :meth:`scan` for the damaged ones)."""
        return self.scan()[0]

    def find(self, ref: str | Path) -> StoredExperiment:
        """An experiment by id, unique id prefix, label, or folder path."""
        path = Path(ref)
        try:
            is_folder = spec_file(path).is_file()
        except OSError:  # a name too long to be a path is an id or a label
            is_folder = False
        if is_folder:
            return Store(root_of(path.resolve())).read(path)
        every, damaged = self.scan()
        found = [e for e in every if e.id.startswith(str(ref)) or e.spec.label() == str(ref)]
        if len(found) == 1:
            return found[0]
        broken = [why for ident, why in damaged.items() if ident.startswith(str(ref))]
        if not found and broken:
            raise DamagedResults(broken[0])
        known = ", ".join(f"{e.id} ({e.spec.label()})" for e in every) or "none yet"
        shown = str(ref) if len(str(ref)) <= 60 else str(ref)[:57] + "..."
        if not found:
            raise PrunelabError(f"no experiment {shown!r} under {self.root}; experiments there: {known}")
        raise PrunelabError(
            f"{shown!r} matches {len(found)} experiments; give more of the id. Experiments: {known}"
        )


def find_experiment(ref: str | Path, root: str | Path | None = None) -> StoredExperiment:
    """``Store(root).find(ref)``: an experiment by id, unique id prefix, label, or folder."""
    return Store(root).find(ref)


@dataclass
class StoredExperiment:
    """An experiment read back: its spec and the metrics of every finished level, per seed."""

    store: Store
    directory: Path
    spec: ExperimentSpec
    trunk: str
    levels: dict[int, dict[int, LevelMetrics]]  # seed -> level -> metrics
    controls: dict[str, dict[int, dict[int, LevelMetrics]]]  # control -> seed -> level -> metrics
    damage: dict[tuple[int, int, str | None], Damage] = field(default_factory=dict)  # (seed, level, control)
    fingerprints: dict[str, str] = field(default_factory=dict)
    """Content hashes of the model file, weights file and data it ran with (see TrunkSpec.fingerprints)."""

    @property
    def id(self) -> str:
        return self.directory.name

    def check_files(self, seed: int) -> None:
        """Check every file the finished levels and controls of ``seed`` rely on (the dense trunk's
        weights, each level's weights and mask), as :meth:`weights` and :meth:`mask` would read them;
        the first damaged one raises :class:`DamagedResults` naming it and the folder to remove."""
        arts = [self.artifact(seed, level) for level in sorted(self.levels.get(seed, {}))]
        arts += [
            self.artifact(seed, level, name)
            for name, seeds in self.controls.items()
            for level in sorted(seeds.get(seed, {}))
        ]
        for art in arts:
            try:
                art.check_files()
            except CheckpointError as exc:
                raise DamagedResults(f"experiment {self.id}: {art.damage_message(exc)}") from None

    def require_intact(self, seed: int | None = None) -> None:
        """Refuse to summarise an experiment (or one seed of it) with damaged results, naming them."""
        found = [d for (s, _, _), d in sorted(self.damage.items(), key=str) if seed is None or s == seed]
        if found:
            more = f" (and {len(found) - 1} more damaged)" if len(found) > 1 else ""
            raise DamagedResults(f"experiment {self.id}: {found[0].message()}{more}")

    def status(self) -> str:
        if self.damage:
            return f"damaged ({len(self.damage)} file{'s' if len(self.damage) > 1 else ''})"
        want = self.spec.pruning.rounds + 1
        done = sum(min(len(v), want) for v in self.levels.values())
        total = want * len(self.spec.seeds)
        return "done" if done == total else f"{done}/{total} levels"

    def seeds(self) -> list[int]:
        """Seeds with at least the dense level finished."""
        return sorted(self.levels)

    def artifact(self, seed: int, level: int, control: str | None = None) -> Artifact:
        """Where a level (0: the shared dense trunk) or one of its control branches lives."""
        if level == 0:
            if control is not None:
                raise PrunelabError("level 0 is the dense network; it has no control branches")
            return self.store.dense(self.trunk, seed)
        if control is not None:
            return self.store.control(self.id, seed, level, control)
        return self.store.level(self.id, seed, level)

    def check_level(self, seed: int, level: int, control: str | None = None) -> None:
        """Refuse, naming what exists, a seed, level or control without results, or damaged ones."""
        for (s, lv, c), damage in self.damage.items():
            if s == seed and ((c is None and lv <= level) or (lv == level and c == control)):
                raise DamagedResults(f"experiment {self.id}: {damage.message()}")
        if seed not in self.levels:
            raise PrunelabError(
                f"experiment {self.id} ({self.spec.label()}) has no results for seed {seed}; "
                f"seeds with results: {self.seeds() or 'none yet'}"
            )
        finished = sorted(self.levels[seed])
        if level not in finished:
            raise PrunelabError(
                f"experiment {self.id} ({self.spec.label()}) seed {seed} has no finished level {level}; "
                f"finished levels: {finished[0]}..{finished[-1]}"
            )
        if control is not None:
            if control not in self.spec.controls:
                raise PrunelabError(
                    f"experiment {self.id} has no control {control!r}; its controls: {list(self.spec.controls)}"
                )
            if level not in self.controls[control].get(seed, {}):
                raise PrunelabError(
                    f"experiment {self.id} seed {seed} level {level} has no finished {control} control"
                )

    def metrics(self, seed: int, level: int, control: str | None = None) -> LevelMetrics:
        self.check_level(seed, level, control)
        return self.controls[control][seed][level] if control else self.levels[seed][level]

    def weights(self, seed: int, level: int, control: str | None = None) -> dict[str, torch.Tensor]:
        """Final weights of a level (pruned ones exactly zero)."""
        self.check_level(seed, level, control)
        art = self.artifact(seed, level, control)
        try:
            return art.weights(like=self._shapes)
        except CheckpointError as exc:
            raise DamagedResults(f"experiment {self.id}: {art.damage_message(exc)}") from None

    @cached_property
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """The state_dict entries and shapes of the experiment's architecture (built once)."""
        return state_shapes(self.build_model())

    def mask(self, seed: int, level: int, control: str | None = None, *, full: bool = False) -> Mask:
        """The mask a level trained with, over the prunable weights; level 0 keeps every one of them.

        ``full``: as stored, with the entries a method prunes beside the weights (network slimming
        prunes a removed channel's BatchNorm scale and shift), which loading a level applies; the
        analyses compare the weights' entries only.
        """
        self.check_level(seed, level, control)
        if level == 0:
            return Mask.ones(self.build_model())
        art = self.artifact(seed, level, control)
        if not art.mask_path.is_file():  # a control that trains with the ticket's own mask
            art = self.artifact(seed, level)
        try:
            mask = Mask.load(art.mask_path)
        except PrunelabError as exc:
            raise DamagedResults(f"experiment {self.id}: {art.damage_message(exc)}") from None
        return mask if full else weight_entries(mask, self._prunable)

    @cached_property
    def _prunable(self) -> frozenset[str]:
        return frozenset(prunable_names(self.build_model()))

    def build_model(self) -> nn.Module:
        """An untrained model of the experiment's architecture (its layers and shapes)."""
        self._check_model_file()
        return self.spec.build_model(pretrained=False)

    @cached_property
    def _model_file_checked(self) -> bool:
        recorded = self.fingerprints.get("model")
        now = self.spec.fingerprints().get("model") if recorded else None
        if recorded and now != recorded:
            warnings.warn(
                f"experiment {self.id}: {self.spec.model} changed since it ran (content hash {recorded}, "
                f"now {now}); its stored weights are loaded into the current code's architecture",
                stacklevel=4,
            )
        return True

    def _check_model_file(self) -> None:
        """Say once if the user's model file changed since the experiment ran."""
        _ = self._model_file_checked
