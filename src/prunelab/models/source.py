"""Where a model comes from: one ``--model`` string, resolved by registered sources.

``lenet5`` names the built-in zoo; ``torchvision:resnet18`` and ``timm:resnet18`` the vision
libraries (optional extras); ``path/to/file.py:factory`` and ``package.module:factory`` the user's
own code, which runs only because the user named it. Each source is one class registered in
:data:`SOURCES`; :func:`resolve_model` asks each in turn whether it claims the string.

A user factory gets ``num_classes`` and ``input_shape`` when its signature takes them (by name, or
through ``**kwargs``) and must return an ``nn.Module``. A source's :meth:`ModelSource.fingerprint`
(the content hash of a user's file) enters the experiment id, so editing the file never silently
mixes results.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import logging
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from torch import nn

from prunelab.errors import SpecError, UnknownNameError
from prunelab.io import content_hash, user_path
from prunelab.models.registry import MODELS, InputShape
from prunelab.models.vision import import_timm, import_torchvision
from prunelab.registry import Registry

#: Says, before user code runs (a factory, a module imported), what is being built, so that a factory
#: that hangs is visibly the user's code; the command line shows this logger's INFO lines.
log = logging.getLogger("prunelab.models")


class ModelSource(ABC):
    """One way of naming a model. Subclasses are registered in :data:`SOURCES` under a short key."""

    #: How the string looks, for help texts and listings (``torchvision:NAME``).
    usage: ClassVar[str]
    description: ClassVar[str]
    #: The initialisation applied when the spec names none: a prunelab scheme, or None to keep
    #: the weights the library or factory drew at construction (seeded, so still deterministic).
    default_init: str | None = None
    #: A pretrained-weights source (``--weights torchvision:DEFAULT``) uses this prefix.
    weights_prefix: ClassVar[str | None] = None
    #: Whether its models read token ids (text) rather than images.
    is_text: ClassVar[bool] = False
    #: What its models do, a key of :data:`prunelab.experiments.tasks.TASKS`: classification, or
    #: language-modelling (a causal LM, which decides how the data is read and evaluated).
    task: ClassVar[str] = "classification"

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    @abstractmethod
    def claims(cls, text: str) -> bool:
        """Whether ``text`` is written in this source's form."""

    @abstractmethod
    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        """A freshly constructed model (the caller seeds the RNG and initialises it); ``data`` names
        the dataset, which a text model's vocabulary may depend on."""

    def check_shape(self, input_shape: InputShape) -> None:
        """Refuse, before anything is built, inputs of a shape this source's models cannot take.

        By default any shape goes: a user's model is checked by one forward pass instead.
        """
        return None

    def tokenizer(self, data: str):
        """The tokenizer text data is encoded with for this model (text sources only)."""
        raise SpecError(
            f"model {self.text!r} reads images; text data needs a text model (hf:PATH_OR_NAME or bert-tiny)"
        )

    def fingerprint(self) -> str | None:
        """A hash of the code the model is built from, where it can change under the same name."""
        return None

    def notes(self, num_classes: int, head: str | None) -> list[str]:
        """What the build changed that a user should be told (a replaced classifier head)."""
        return []

    def pretrained(self, name: str, num_classes: int, input_shape: InputShape):
        """``(state_dict, (mean, std) or None, description)`` of the named pretrained weights."""
        raise SpecError(f"model {self.text!r} has no pretrained weights to name; give a weights file instead")

    def pretrained_stats(self, name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The input statistics the named pretrained weights were trained with, without loading them."""
        return None

    @property
    def is_builtin(self) -> bool:
        return False


SOURCES: Registry[type[ModelSource]] = Registry("model source")


def register_source(key: str) -> Callable[[type[ModelSource]], type[ModelSource]]:
    def decorator(cls: type[ModelSource]) -> type[ModelSource]:
        SOURCES.add(key, cls, cls.description)
        return cls

    return decorator


def source_forms() -> list[str]:
    """The forms a model string may take besides a zoo name, for help texts and errors."""
    return [cls.usage for _, cls in SOURCES.items() if cls is not ZooSource]


@functools.lru_cache(maxsize=256)
def resolve_model(text: str) -> ModelSource:
    """The source that builds the model named ``text``; an ``UnknownNameError`` listing the zoo
    names and the other forms when no source claims it."""
    if not isinstance(text, str) or not text.strip():
        raise UnknownNameError(f"model must be a name, got {text!r}; {_valid()}")
    for _, cls in SOURCES.items():
        if cls.claims(text):
            return cls(text)
    close = difflib.get_close_matches(text, MODELS.names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(f"unknown model {text!r}.{hint} {_valid()}")


def _valid() -> str:
    return f"Valid models: {', '.join(MODELS.names())}; or {', '.join(source_forms())}."


def _split(text: str, prefix: str) -> str:
    name = text[len(prefix) + 1 :].strip()
    if not name:
        raise SpecError(f"model {text!r}: name the model after '{prefix}:', e.g. {prefix}:resnet18")
    return name


# ---------------------------------------------------------------------------------------------
@register_source("zoo")
class ZooSource(ModelSource):
    """prunelab's own models (``prunelab models`` lists them)."""

    usage = "NAME"
    description = "a model of prunelab's zoo, by name"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.entry = MODELS.get(text)
        self.default_init = self.entry.default_init

    @classmethod
    def claims(cls, text: str) -> bool:
        return text in MODELS

    def check_shape(self, input_shape: InputShape) -> None:
        if len(input_shape) != 3:
            raise SpecError(
                f"model {self.text!r} reads images; the data has inputs of shape {input_shape} (text?)"
            )
        if min(input_shape[1:]) < self.entry.min_size:
            raise SpecError(
                f"model {self.text!r} cannot take input shape {input_shape}: its pooling needs "
                f"height and width >= {self.entry.min_size} (it accepts {self.entry.supported_input})"
            )

    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        return self.entry.factory(num_classes, input_shape)

    @property
    def is_builtin(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------
def _replaced_head_note(text: str, head: str | None, num_classes: int, original: int) -> list[str]:
    if head is None or num_classes == original:
        return []
    return [f"{text}: classifier head {head} built for {num_classes} classes (the original has {original})"]


class LibrarySource(ModelSource):
    """A model of a library, named ``PREFIX:NAME``; its pretrained weights are ``PREFIX:WEIGHTS``."""

    prefix: ClassVar[str]

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.name = _split(text, self.prefix)

    @classmethod
    def claims(cls, text: str) -> bool:
        return text.startswith(f"{cls.prefix}:")

    @property
    def weights_prefix(self) -> str:  # type: ignore[override]
        return self.prefix


@register_source("torchvision")
class TorchvisionSource(LibrarySource):
    """A torchvision classification model, e.g. ``torchvision:resnet18`` (extra ``prunelab[vision]``)."""

    prefix = "torchvision"
    usage = "torchvision:NAME"
    description = "a torchvision classification model (pip install 'prunelab[vision]')"
    IMAGENET_CLASSES = 1000

    def _models(self):
        tv = import_torchvision()
        names = tv.models.list_models(module=tv.models)
        if self.name not in names:
            close = difflib.get_close_matches(self.name, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"torchvision has no classification model {self.name!r}.{hint} Its models: {', '.join(names)}."
            )
        return tv.models

    def check_shape(self, input_shape: InputShape) -> None:
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise SpecError(
                f"model {self.text!r} takes 3-channel (RGB) images; the data has inputs of shape {input_shape}"
            )

    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        return self._models().get_model(self.name, num_classes=num_classes)

    def notes(self, num_classes: int, head: str | None) -> list[str]:
        return _replaced_head_note(self.text, head, num_classes, self.IMAGENET_CLASSES)

    def _weights(self, name: str):
        enum = self._models().get_model_weights(self.name)
        members = ["DEFAULT", *enum.__members__]
        if name not in members:
            raise SpecError(
                f"torchvision:{self.name} has no weights {name!r}; choose one of: {', '.join(members)}"
            )
        return enum.DEFAULT if name == "DEFAULT" else enum[name]

    def pretrained_stats(self, name: str):
        transforms = self._weights(name).transforms()
        return tuple(transforms.mean), tuple(transforms.std)

    def pretrained(self, name: str, num_classes: int, input_shape: InputShape):
        from prunelab.models.weights import cached_download

        weights = self._weights(name)
        state = cached_download(weights.url, f"torchvision:{self.name} weights {weights}")
        return state, self.pretrained_stats(name), f"torchvision {weights}"


@register_source("timm")
class TimmSource(LibrarySource):
    """A timm model, e.g. ``timm:resnet18`` (extra ``prunelab[timm]``)."""

    prefix = "timm"
    usage = "timm:NAME"
    description = "a timm model (pip install 'prunelab[timm]')"

    def _timm(self):
        timm = import_timm()
        if not timm.is_model(self.name):
            close = difflib.get_close_matches(self.name, timm.list_models(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"timm has no model {self.name!r}.{hint} `timm.list_models()` lists them.")
        return timm

    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        return self._timm().create_model(
            self.name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0]
        )

    def notes(self, num_classes: int, head: str | None) -> list[str]:
        cfg = self._timm().models.get_pretrained_cfg(self.name)
        original = getattr(cfg, "num_classes", None) if cfg is not None else None
        return _replaced_head_note(self.text, head, num_classes, original or num_classes)

    def pretrained_stats(self, name: str):
        cfg = self._timm().models.get_pretrained_cfg(
            self.name if name == "DEFAULT" else f"{self.name}.{name}"
        )
        if cfg is None:
            raise SpecError(f"timm:{self.name} has no pretrained weights {name!r}")
        return tuple(cfg.mean), tuple(cfg.std)

    def pretrained(self, name: str, num_classes: int, input_shape: InputShape):
        timm = self._timm()
        tag = self.name if name == "DEFAULT" else f"{self.name}.{name}"
        try:
            model = timm.create_model(tag, pretrained=True, in_chans=input_shape[0])
        except Exception as exc:  # hub and network failures come in many types
            raise SpecError(
                f"timm:{tag} pretrained weights are not in the Hugging Face cache and could not be "
                f"downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                f"run once online, or put them in the cache ($HF_HOME/hub, default ~/.cache/huggingface/hub)"
            ) from None
        return model.state_dict(), self.pretrained_stats(name), f"timm {tag}"


# ---------------------------------------------------------------------------------------------
def call_factory(text: str, factory: object, num_classes: int, input_shape: InputShape) -> nn.Module:
    """Call a user factory with the arguments its signature takes; it must return an ``nn.Module``.

    The factory is the user's code: an exception it raises, or an exit (``sys.exit``, ``exit()``: a
    ``SystemExit`` or another ``BaseException`` but Ctrl-C) is one SpecError naming it."""
    if not callable(factory):
        raise SpecError(f"model {text!r}: {factory!r} is not callable")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    offered = {"num_classes": num_classes, "input_shape": tuple(input_shape)}
    kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
    announce(f"building model {text}: calling {text.rpartition(':')[2]}({_arguments(kwargs)}), your code")
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise SpecError(f"model {text!r}: the factory raised {type(exc).__name__}: {exc}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit and the like: the user's code ended, not prunelab
        raise SpecError(f"the factory {text} {_exited(exc)} before returning a model") from None
    if not isinstance(model, nn.Module):
        raise SpecError(f"model {text!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def _exited(exc: BaseException) -> str:
    """``exited (SystemExit 0)``: how user code ended without an ordinary exception."""
    if isinstance(exc, SystemExit):
        return f"exited (SystemExit {exc.code})"
    return f"exited ({type(exc).__name__}{f' {exc}' if str(exc) else ''})"


def _arguments(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


_announced: set[str] = set()


def announce(line: str) -> None:
    """Log ``line`` once per process (a run builds its model many times)."""
    if line not in _announced:
        _announced.add(line)
        log.info(line)


def _attribute(text: str, module, attr: str, where: str) -> object:
    if not hasattr(module, attr):
        names = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and not inspect.ismodule(v)
        )
        raise SpecError(
            f"model {text!r}: {where} defines no {attr!r}; its callables: {', '.join(names) or '(none)'}"
        )
    return getattr(module, attr)


@register_source("file")
class FileSource(ModelSource):
    """A factory in a Python file: ``path/to/models.py:make_net``."""

    usage = "FILE.py:FACTORY"
    description = "a factory function in your own Python file (its content hash enters the experiment id)"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        file, _, self.attr = text.rpartition(":")
        self.path = user_path(file)
        if not self.attr.isidentifier():
            raise SpecError(f"model {text!r}: {self.attr!r} is not a Python name; write FILE.py:FACTORY")

    @classmethod
    def claims(cls, text: str) -> bool:
        file, sep, _ = text.rpartition(":")
        return bool(sep) and file.endswith(".py")

    def _module(self):
        if not self.path.is_file():
            raise SpecError(f"model {self.text!r}: no file {self.path}")
        key = f"prunelab_user_{self.fingerprint()}"
        if key in sys.modules:
            return sys.modules[key]
        spec = importlib.util.spec_from_file_location(key, self.path)
        if spec is None or spec.loader is None:
            raise SpecError(f"model {self.text!r}: {self.path} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        announce(f"building model {self.text}: importing {self.path}, your code")
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            del sys.modules[key]
            if isinstance(exc, KeyboardInterrupt):
                raise
            if not isinstance(exc, Exception):
                raise SpecError(f"the file {self.path} {_exited(exc)} while being imported") from None
            raise SpecError(
                f"model {self.text!r}: importing {self.path} failed: {type(exc).__name__}: {exc}"
            ) from None
        return module

    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        factory = _attribute(self.text, self._module(), self.attr, str(self.path))
        return call_factory(self.text, factory, num_classes, input_shape)

    def fingerprint(self) -> str | None:
        try:
            return content_hash(self.path)
        except OSError as exc:
            raise SpecError(f"model {self.text!r}: cannot read {self.path} ({exc.strerror or exc})") from None


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@register_source("module")
class ModuleSource(ModelSource):
    """A factory in an importable module: ``mypackage.models:make_net``."""

    usage = "MODULE:FACTORY"
    description = "a factory function in an importable Python module"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.module_name, _, self.attr = text.partition(":")

    @classmethod
    def claims(cls, text: str) -> bool:
        return bool(_DOTTED.match(text)) and text.partition(":")[0] not in SOURCES  # hf:bert is not a module

    def _module(self):
        if self.module_name not in sys.modules:
            announce(f"building model {self.text}: importing module {self.module_name}, your code")
        try:
            return importlib.import_module(self.module_name)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            if not isinstance(exc, Exception):
                raise SpecError(
                    f"the module {self.module_name} {_exited(exc)} while being imported"
                ) from None
            raise SpecError(
                f"model {self.text!r}: importing module {self.module_name!r} failed: {type(exc).__name__}: {exc}"
            ) from None

    def build(self, num_classes: int, input_shape: InputShape, *, data: str | None = None) -> nn.Module:
        factory = _attribute(self.text, self._module(), self.attr, f"module {self.module_name}")
        return call_factory(self.text, factory, num_classes, input_shape)

    def fingerprint(self) -> str | None:
        file = getattr(self._module(), "__file__", None)
        return content_hash(file) if file else None
