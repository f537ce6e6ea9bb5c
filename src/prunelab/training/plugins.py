"""Registered trainer plug-ins: what the training-time methods run during training, one class each.

A plug-in is a :class:`~prunelab.training.hooks.TrainHook` (loss terms, gradient changes, epoch-end
decisions, layer swaps, checkpointed state) with a name, a description, what it needs of a model,
its own ``Settings`` spec, and the line that says what it found (:meth:`TrainPlugin.report_text`,
printed by the run, ``show`` and the report). Each is registered in :data:`PLUGINS` with
:func:`register_plugin`, in the file of the pruning method that runs it
(:class:`~prunelab.pruning.methods.TrainingMethod`: an experiment trains its dense trunk with it);
the trainer never looks at names, only at what a hook overrides (:attr:`TrainHook.needs_autograd`
decides the training step, :attr:`TrainHook.swaps_layers` whether the model is converted back).

A *regulariser* (``standalone``: it changes neither the mask nor the architecture the training ends
with, as network slimming's L1 push and structure selection's folded scales) can also join a training
without its pruning method: ``train.plugins`` (``prunelab train --plugins slimming``, or every
training of an experiment with ``prunelab run --plugins slimming``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from prunelab.registry import Registry
from prunelab.spec import FrozenSpec
from prunelab.training.hooks import TrainHook

__all__ = ["PLUGINS", "TrainPlugin", "register_plugin", "report_lines"]


class TrainPlugin(TrainHook):
    """A named training-time method: a hook built from its ``Settings`` (None: it has none).

    ``needs`` says in words what a model must have (shown by ``prunelab methods``);
    :meth:`identity` is what the training it joins depends on (a dense trunk trained with a plug-in
    is another trunk than the plain one).
    """

    plugin_name: ClassVar[str] = ""  # set by register_plugin
    description: ClassVar[str] = ""
    needs: ClassVar[str] = ""
    Settings: ClassVar[type[FrozenSpec] | None] = None
    not_training: ClassVar[tuple[str, ...]] = ()
    """Settings that do not change the training the plug-in joins (left out of :meth:`identity`)."""
    standalone: ClassVar[bool] = False
    """A regulariser that may join a training without its pruning method (``train.plugins``)."""

    def __init__(self, settings: FrozenSpec | None = None) -> None:
        if settings is None and self.Settings is not None:
            settings = self.Settings()
        self.settings = settings

    @property
    def name(self) -> str:
        return self.plugin_name or type(self).__name__

    def identity(self) -> dict[str, Any]:
        """The plug-in's name and non-default settings (JSON values)."""
        values = {} if self.settings is None else self.settings.non_default()
        return {"plugin": self.name, **{k: v for k, v in values.items() if k not in self.not_training}}

    @classmethod
    def report_text(cls, report: dict[str, Any]) -> str:
        """What :meth:`report` said, in one line (the run's log, ``show``, the report)."""
        return ", ".join(f"{k}={v}" for k, v in report.items())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.settings!r})" if self.settings is not None else super().__repr__()
        )


PLUGINS: Registry[type[TrainPlugin]] = Registry("training plug-in", builtins="prunelab.pruning")

P = TypeVar("P", bound=type[TrainPlugin])


def register_plugin(name: str) -> Callable[[P], P]:
    """Class decorator: register a :class:`TrainPlugin` subclass under ``name``."""

    def decorator(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, TrainPlugin)):
            raise TypeError(f"training plug-in {name!r} must be a TrainPlugin subclass, got {cls!r}")
        cls.plugin_name = name
        PLUGINS.add(name, cls)
        return cls

    return decorator


def report_lines(reports: Mapping[str, dict[str, Any]]) -> list[str]:
    """``name: what it found`` for each plug-in report of a training (as a level's metrics keep them),
    each in its plug-in's words."""
    return [
        f"{name}: {PLUGINS.get(name).report_text(report) if name in PLUGINS else TrainPlugin.report_text(report)}"
        for name, report in reports.items()
    ]


def standalone() -> list[str]:
    """The plug-ins that may join a training without their pruning method (``train.plugins``)."""
    return [name for name, cls in PLUGINS.items() if cls.standalone]
