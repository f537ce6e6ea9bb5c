"""The results store: every path of a results root, typed level metrics, a lock, and the one reader.

Layout (all of it spelled out here, as OpenLTH's ``foundations/paths.py`` does)::

    ROOT/trunks/<trunk-id>/seed-<s>/dense/              dense level 0, shared by every experiment
    ROOT/trunks/<trunk-id>/seed-<s>/rewind-<k>it/       trunk weights at iteration k (late rewinding)
    ROOT/experiments/<experiment-id>/spec.json          the spec, its id, trunk id, label, every seed run
    ROOT/experiments/<experiment-id>/seed-<s>/level-<k>/
        mask.safetensors, weights.safetensors, metrics.json, checkpoint.pt while training
    ROOT/experiments/<experiment-id>/seed-<s>/level-<k>/controls/<name>/   the same, per control

An :class:`Artifact` is one trained model in one folder; ``metrics.json`` is written last, so its
presence means the artifact is complete. :class:`LevelMetrics` is what ``metrics.json`` holds, with
a format version and what the numbers depend on (torch version, device, threads, training step).
:class:`Store` reads experiments back as :class:`StoredExperiment`, which ``show``, ``report``,
the analyses, ``export`` and ``bench`` all use.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.errors import CheckpointError, PrunelabError
from prunelab.experiments.spec import ExperimentSpec
from prunelab.io import (
    atomic_write_json,
    check_folder_path,
    check_tensors_file,
    load_tensors,
    save_tensors,
    save_torch,
    user_path,
    write_error,
)
from prunelab.pruning import Mask, prunable_names
from prunelab.spec import build_spec
from prunelab.training import EvalRecord

DEFAULT_ROOT = Path("~/.prunelab/runs")

#: Version of ``metrics.json``. 1: the untyped dict of prunelab <= 0.1 (no ``format`` key, no
#: environment); 2: :class:`LevelMetrics`, test metrics only where the test set was evaluated.
FORMAT = 2


def results_root(root: str | Path | None = None) -> Path:
    """``--root``, else ``$PRUNELAB_HOME``, else ``~/.prunelab/runs``."""
    if root:
        return user_path(root)
    env = os.environ.get("PRUNELAB_HOME")
    return user_path(env) if env else DEFAULT_ROOT.expanduser()


# metrics -------------------------------------------------------------------------------------------
def _record(values: Mapping[str, Any]) -> EvalRecord:
    """An EvalRecord from JSON; metrics a newer or older format lacks are None, but every format
    has the iteration, epoch and learning rate (a KeyError/ValueError otherwise: damaged metrics)."""
    fields = {f.name: values.get(f.name) for f in dataclasses.fields(EvalRecord)}
    fields = {k: None if v is None else float(v) for k, v in fields.items()}
    fields.update(iteration=int(values["iteration"]), epoch=float(values["epoch"]), lr=float(values["lr"]))
    return EvalRecord(**fields)


@dataclass(frozen=True)
class LevelMetrics:
    """What one trained level (or trunk, or control branch) achieved, and what that depends on."""

    level: int
    seed: int
    density: float
    layer_density: dict[str, float]
    iterations: int
    wall_time: float
    final: EvalRecord
    early_stop: EvalRecord
    history: tuple[EvalRecord, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    """torch and prunelab versions, device, threads, training step kind, evaluation interval."""
    stopped_early: str | None = None
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What the training plug-ins reported, by name (the early-bird ticket's epoch, FLOPs saved)."""

    @property
    def early_stop_iteration(self) -> int:
        """Iteration of minimum validation loss: the lottery-ticket papers' learning-speed measure."""
        return self.early_stop.iteration

    @classmethod
    def from_result(cls, result, *, level: int, seed: int, mask: Mask) -> LevelMetrics:
        """From a :class:`~prunelab.training.TrainResult` and the mask it trained with."""
        return cls(
            level=level,
            seed=seed,
            density=mask.density(),
            layer_density=mask.layer_density(),
            iterations=result.iterations,
            wall_time=result.wall_time,
            final=result.final,
            early_stop=result.early_stop,
            history=tuple(result.history),
            environment=dict(result.environment),
            stopped_early=result.stopped_early,
            plugins=dict(getattr(result, "reports", {}) or {}),
        )

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["history"] = [dataclasses.asdict(r) for r in self.history]
        values["early_stop_iteration"] = self.early_stop_iteration
        values["format"] = FORMAT
        return values

    @classmethod
    def from_json(cls, values: Any, source: str | Path = "metrics") -> LevelMetrics:
        """Read format 1 or 2; anything else is a :class:`CheckpointError` naming ``source``."""
        try:
            version = values.get("format", 1)
            if version > FORMAT:
                raise CheckpointError(
                    f"{source} has metrics format {version}, newer than this prunelab reads ({FORMAT}); "
                    "upgrade prunelab"
                )
            return cls(
                level=int(values["level"]),
                seed=int(values["seed"]),
                density=float(values["density"]),
                layer_density={str(k): float(v) for k, v in values["layer_density"].items()},
                iterations=int(values["iterations"]),
                wall_time=float(values["wall_time"]),
                final=_record(values["final"]),
                early_stop=_record(values["early_stop"]),
                history=tuple(_record(r) for r in values.get("history", ())),
                environment=dict(values.get("environment") or {}),
                stopped_early=values.get("stopped_early"),
                plugins=dict(values.get("plugins") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"{source} does not hold level metrics ({type(exc).__name__}: {exc})"
            ) from None

    def value(self, metric: str, at: str = "final") -> float | None:
        """``metric`` (test_acc, val_loss, ...) of the final or the early-stop record; ``*_ppl`` is a
        language model's perplexity, ``exp`` of the mean next-token loss."""
        record = self.final if at == "final" else self.early_stop
        if metric.endswith("_ppl"):
            from prunelab.experiments.tasks import perplexity

            return perplexity(getattr(record, metric.removesuffix("_ppl") + "_loss"))
        return getattr(record, metric)


def weight_entries(mask: Mask, prunable: Iterable[str]) -> Mask:
    """``mask`` without the entries of parameters other than the prunable weights (BatchNorm scales)."""
    names = set(prunable)
    if all(n in names for n in mask.names()):
        return mask
    return Mask({n: m for n, m in mask.items() if n in names})


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Each state_dict entry's shape: what a stored weights file of ``model`` must hold."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# one trained model in one folder ------------------------------------------------------------------
class Artifact:
    """One trained model in a folder: weights, optional mask, metrics, and an in-progress checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def done(self) -> bool:
        return (self.dir / "metrics.json").is_file()

    def metrics(self) -> LevelMetrics:
        path = self.dir / "metrics.json"
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} cannot be read: {exc}") from None
        return LevelMetrics.from_json(values, path)

    def weights(self, like: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
        """The final weights; with ``like`` (entry -> shape of the architecture), a file holding other
        entries or shapes is a :class:`CheckpointError` (before ``load_state_dict`` could fail)."""
        path = self.dir / "weights.safetensors"
        weights = load_tensors(path)
        if like is not None:
            got = {k: tuple(v.shape) for k, v in weights.items()}
            if got != dict(like):
                wrong = sorted(set(got) ^ set(like)) or [k for k in got if got[k] != like[k]]
                raise CheckpointError(
                    f"{path} does not hold this architecture's weights (entries {wrong[:4]} differ)"
                )
        return weights

    def check_files(self) -> None:
        """Check the files a finished artifact holds (weights, and its mask when it has one) without
        loading them; a damaged one raises :class:`CheckpointError` naming it."""
        check_tensors_file(self.dir / "weights.safetensors")
        if self.mask_path.is_file():
            check_tensors_file(self.mask_path)

    def damage_message(self, exc: BaseException) -> str:
        """What is wrong with this artifact and which folder to remove to recompute it."""
        return Damage(str(exc), self.dir).message()

    @property
    def mask_path(self) -> Path:
        return self.dir / "mask.safetensors"

    def finish(self, weights: dict[str, torch.Tensor], metrics: LevelMetrics) -> None:
        """Weights first, metrics last: metrics.json existing means the artifact is complete."""
        save_tensors(self.dir / "weights.safetensors", weights)
        atomic_write_json(self.dir / "metrics.json", metrics.to_json())
        (self.dir / "checkpoint.pt").unlink(missing_ok=True)

    def save_checkpoint(self, state: dict) -> None:
        save_torch(self.dir / "checkpoint.pt", state)

    def load_checkpoint(self) -> dict | None:
        path = self.dir / "checkpoint.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise CheckpointError(
                f"checkpoint {path} cannot be read safely ({type(exc).__name__}); delete it to restart this level"
            ) from None


# locking -------------------------------------------------------------------------------------------
class ExperimentLocked(PrunelabError):
    """Another live process is writing this experiment."""


@contextmanager
def locked(
    directory: Path,
    *,
    wait: bool = False,
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.5,
    name: str = ".lock",
) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (released if the process dies); ``name``, its file,
    tells apart the locks of parts written apart (a seed's branches).

    If another live process holds it: with ``wait``, wait for it (telling ``on_wait`` once, naming
    the holder); else refuse, naming the holder. A read-only folder is an :class:`OutputError`.
    """
    path = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held for the lifetime of the lock
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                if not wait:
                    what = directory if name == ".lock" else f"{directory} ({name.removeprefix('.lock-')})"
                    raise ExperimentLocked(
                        f"{what} is being written by {holder}; wait for it or stop it"
                    ) from None
                if not told and on_wait is not None:
                    on_wait(f"waiting for {holder}, which is writing {directory} (--no-wait to stop instead)")
                    told = True
                time.sleep(poll)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
            )
            handle.flush()
        except OSError as exc:
            raise write_error(path, exc) from None
        yield
    finally:
        handle.close()


def is_locked(directory: Path, name: str = ".lock") -> bool:
    """Whether a live process holds ``directory``'s lock ``name`` now (without taking it)."""
    path = directory / name
    if not path.is_file():
        return False
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


# the store -----------------------------------------------------------------------------------------
class Store:
    """A results root: where each artifact lives, and reading experiments back."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = check_folder_path(results_root(root), "the results folder")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # layout ---------------------------------------------------------------------------------------
    def trunk_dir(self, trunk: str, seed: int) -> Path:
        return self.root / "trunks" / trunk / f"seed-{seed}"

    def dense(self, trunk: str, seed: int) -> Artifact:
        return Artifact(self.trunk_dir(trunk, seed) / "dense")

    def trunk_point(self, trunk: str, seed: int, iteration: int) -> Artifact:
        """The trunk's weights after ``iteration`` iterations (a rewind point)."""
        return Artifact(self.trunk_dir(trunk, seed) / f"rewind-{iteration}it")

    def experiment_dir(self, experiment: str) -> Path:
        return self.root / "experiments" / experiment

    def spec_path(self, experiment: str) -> Path:
        return self.experiment_dir(experiment) / "spec.json"

    def level(self, experiment: str, seed: int, level: int) -> Artifact:
        """A pruned level (``level`` >= 1) of an experiment."""
        return Artifact(self.experiment_dir(experiment) / f"seed-{seed}" / f"level-{level:02d}")

    def control(self, experiment: str, seed: int, level: int, name: str) -> Artifact:
        return Artifact(self.level(experiment, seed, level).dir / "controls" / name)

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
        path = directory / "spec.json"
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
        base = self.root / "experiments"
        good, bad = [], {}
        for spec_file in sorted(base.glob("*/spec.json")) if base.is_dir() else []:
            try:
                good.append(self.read(spec_file.parent))
            except PrunelabError as exc:
                bad[spec_file.parent.name] = str(exc)
        return good, bad

    def experiments(self) -> list[StoredExperiment]:
        """Every experiment that can be read (see :meth:`scan` for the damaged ones)."""
        return self.scan()[0]

    def find(self, ref: str | Path) -> StoredExperiment:
        """An experiment by id, unique id prefix, label, or folder path."""
        path = Path(ref)
        try:
            is_folder = (path / "spec.json").is_file()
        except OSError:  # a name too long to be a path is an id or a label
            is_folder = False
        if is_folder:
            return Store(path.resolve().parent.parent).read(path)
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


class DamagedResults(CheckpointError):
    """A results file that exists but cannot be read: named with what to remove to recompute it."""


@dataclass(frozen=True)
class Damage:
    """A damaged artifact: what is wrong (with the file's path) and the folder to remove to redo it."""

    problem: str
    folder: Path

    def message(self) -> str:
        return f"{self.problem}; remove {self.folder} and rerun the experiment to recompute it"


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
