"""The pruning methods users name (``--method``), one object each in :data:`METHODS`.

Two contracts, as in Torch-Pruning (importance apart from pruner):

* a *scorer* (:class:`~prunelab.pruning.scorers.Scorer`) only scores: one number per weight, which a
  structure reduces to one per unit (a channel, a head, a coupled group). The methods that rank a
  scorer's scores are :class:`Method` records, registered beside their scorer
  (``Method(scorer="magnitude", description=..., structure="structured-input", unit_norm="l2",
  structured_only=True)``); :func:`prunelab.prune` ranks and cuts for all of them alike;
* a method that chooses its mask itself is one :class:`PruningMethod` subclass in one file, its
  whole story there: its mask selection (:meth:`PruningMethod.select`), its settings
  (``Settings``: a ``[pruning.<name>]`` table and ``--<name>-<setting>`` flags), the training-time
  plug-ins its dense training and its levels run with (:meth:`~PruningMethod.dense_hooks`,
  :meth:`~PruningMethod.level_hooks`, whose reports say what was found in ``show`` and the report),
  and its checks. Network slimming, early-bird tickets, sparse variational dropout, Bayesian
  compression and structure selection act during training (:class:`TrainingMethod`); SparseGPT and
  Wanda calibrate a language model block by block.

No module outside a method's file names it: the runner, the store, the trainer and the command line
ask the registry. The registry imports every module of :mod:`prunelab.pruning` the first time it is
read, so a method is added by one file that registers it (``@register_method("name")``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from prunelab.errors import SpecError
from prunelab.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunelab.pruning.context import PruneContext
    from prunelab.pruning.mask import Mask
    from prunelab.spec import FrozenSpec

__all__ = ["METHODS", "Method", "PruningMethod", "TrainingMethod", "register_method", "settings_key"]


def settings_key(name: str) -> str:
    """The settings table of an entry named ``name``: ``early-bird`` -> ``[pruning.early_bird]``
    (a field name; its flags are ``--early-bird-*``, the naming rule of every flag)."""
    return name.replace("-", "_")


class PruningMethod:
    """What ``--method NAME`` does each round; subclasses override :meth:`select` and what they need.

    Class attributes, read by ``prunelab methods``, the spec and the runner: ``description``;
    ``structure``, the grouping it prunes by default (``--structure`` overrides it where the method
    allows); ``structured_only``; ``Settings``, its own hyperparameters or None; ``needs``, the
    :class:`~prunelab.pruning.context.PruneContext` inputs it reads (the runner supplies only those);
    ``requires``, what a model must have, in words; ``updates_weights`` when it also refits the kept
    weights (into ``context.updates``); ``calibration``, the spec field counting the training examples
    it calibrates on (``calibration_images``, ``calibration_sequences``), or None.
    """

    name: str = ""  # set by registration
    description: str = ""
    structure: str = "unstructured"
    structured_only: bool = False
    Settings: ClassVar[type[FrozenSpec] | None] = None
    needs: frozenset[str] = frozenset()
    requires: str = ""
    updates_weights: bool = False
    calibration: str | None = None
    batches: int = 10
    """Training batches it reads when it needs data but counts no calibration examples."""

    def settings(self, spec) -> Any:
        """This method's settings in ``spec`` (its ``[pruning.<name>]`` table), or None."""
        return getattr(spec, settings_key(self.name)) if self.Settings is not None else None

    def check(self, spec) -> None:
        """Refuse, before any model is built, a :class:`~prunelab.pruning.spec.PruneSpec` this
        method cannot run (a method that prunes once, given several rounds)."""

    def select(
        self,
        model: nn.Module,
        mask: Mask | None,
        spec,
        context: PruneContext,
        generator: torch.Generator | None,
    ) -> Mask:
        """The new mask of one round: ``mask`` (None: dense) less what the method prunes."""
        raise NotImplementedError

    def dense_hooks(self, spec) -> list:
        """The training plug-ins (:class:`~prunelab.training.plugins.TrainPlugin`) the dense training
        runs with (an experiment's trunk trains with them, a trunk of its own). Default: none."""
        return []

    def level_hooks(self, spec) -> list:
        """The plug-ins each pruned level, and each control beside it, retrains with. Default: none."""
        return []

    def hooks_text(self) -> str:
        """What it runs during training, in words (``prunelab methods``); empty: nothing."""
        return ""

    def scored_by(self):
        """The scorer class ranking its units, or None for a method that selects them itself."""
        return None

    def needs_of(self, spec) -> frozenset[str]:
        """The context inputs one round reads under ``spec``."""
        return self.needs

    def calibration_field(self, spec) -> str | None:
        """The spec field counting the examples one round calibrates on, or None."""
        return self.calibration

    def settings_tables(self) -> dict[str, type]:
        """The settings tables this method reads: its own (the scorer's for a :class:`Method`)."""
        return {settings_key(self.name): self.Settings} if self.Settings is not None else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass(frozen=True, kw_only=True, repr=False)
class Method(PruningMethod):
    """A method that ranks a scorer's scores: ``scorer`` (a :data:`~prunelab.pruning.scorers.SCORERS`
    name) scores the weights, ``structure`` groups them into units by default (``--structure``
    overrides it), ``unit_norm`` reduces a unit's scores to one, and ``structured_only`` methods are
    defined by their units (``l2-structured``) and refuse ``structure="unstructured"``."""

    scorer: str
    description: str
    structure: str = "unstructured"
    unit_norm: str = "l1"
    structured_only: bool = False

    def scored_by(self):
        from prunelab.pruning.scorers import SCORERS

        return SCORERS.get(self.scorer)

    @property
    def Settings(self):
        return self.scored_by().Settings

    @property
    def needs(self) -> frozenset[str]:
        return self.scored_by().needs

    @property
    def requires(self) -> str:
        return self.scored_by().requires

    @property
    def batches(self) -> int:
        return self.scored_by().batches

    @property
    def calibration(self) -> str | None:
        return self.scored_by().calibration

    def settings(self, spec) -> Any:
        return getattr(spec, settings_key(self.scorer)) if self.Settings is not None else None

    def settings_tables(self) -> dict[str, type]:
        return {settings_key(self.scorer): self.Settings} if self.Settings is not None else {}

    def configured(self, spec):
        """The scorer, with its settings from ``spec``."""
        return self.scored_by()(self.settings(spec))

    def select(self, model, mask, spec, context, generator) -> Mask:
        from prunelab.pruning.ranking import rank

        return rank(self, model, mask, spec, context, generator)


class TrainingMethod(PruningMethod):
    """A method that acts while its dense training runs: ``plugin`` (a
    :class:`~prunelab.training.plugins.TrainPlugin` of the same file) joins that training with this
    method's settings, and :meth:`select` reads what it left (scales, zeros, a report)."""

    plugin: ClassVar[type | None] = None
    once: ClassVar[str | None] = "learns what it prunes in one dense training"
    """Why it prunes in one round only (None: it takes several rounds)."""

    def make_plugin(self, spec):
        """A fresh plug-in (they hold state) with this method's settings."""
        return self.plugin(self.settings(spec))

    def dense_hooks(self, spec) -> list:
        self.check(spec)
        return [self.make_plugin(spec)]

    def hooks_text(self) -> str:
        return f"dense training: {self.plugin.plugin_name}" if self.plugin is not None else ""

    def check(self, spec) -> None:
        """Refuse rounds > 1 for a method that prunes :attr:`once`."""
        if self.once is not None and spec.rounds != 1:
            raise SpecError(f"method {spec.method!r} {self.once}: use rounds 1 (got {spec.rounds})")

    @staticmethod
    def nonzero_within(model: nn.Module, mask: Mask | None, spec) -> Mask:
        """``mask`` (None: dense) with the exact zeros of the layers ``spec`` selects pruned too:
        what a training that trains zeros into the weights (sparse VD, gradual pruning) leaves."""
        from prunelab.pruning.layers import select_layers
        from prunelab.pruning.mask import Mask

        base = mask if mask is not None else Mask.ones(model)
        base.check_fits(model)
        return base.and_nonzero(
            model, [layer.param for layer in select_layers(model, spec.layers, spec.exclude)]
        )


METHODS: Registry[PruningMethod] = Registry("pruning method", builtins="prunelab.pruning")

M = TypeVar("M", bound=type[PruningMethod])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register one instance of a :class:`PruningMethod` subclass under ``name``."""

    def decorator(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
            raise TypeError(f"pruning method {name!r} must be a PruningMethod subclass, got {cls!r}")
        method = cls()
        method.name = name
        METHODS.add(name, method)
        return cls

    return decorator


def add_method(name: str, method: PruningMethod) -> None:
    """Register a :class:`Method` record (or any method instance) under ``name``."""
    object.__setattr__(method, "name", name)
    METHODS.add(name, method)
