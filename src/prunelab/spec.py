"""Validated, frozen specifications (OpenLTH-style hyperparameter records, checked by pydantic).

A spec is the one place its facts live: every field has a type, a default and a description,
and the command line is generated from them (:mod:`prunelab.cli.options`). Two pieces of field
metadata steer that generation: :class:`Flag` (a field's own flag name, aliases, or how its text
is read) and the registry a name field must belong to (:func:`registered`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator

from prunelab.errors import SpecError, UnknownNameError
from prunelab.registry import Registry


class FrozenSpec(BaseModel):
    """Base for hyperparameter records: immutable, unknown fields refused.

    ``flag_prefix`` is put before the flag of each field when the spec is nested in another
    (``synflow-`` gives ``--synflow-rounds``); the top-level specs have none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    flag_prefix: ClassVar[str] = ""

    def non_default(self) -> dict[str, Any]:
        """The fields that differ from their defaults (what identifies a configuration)."""
        return self.model_dump(exclude_defaults=True, mode="json")

    @model_validator(mode="before")
    @classmethod
    def _inputs(cls, values: Any) -> Any:
        """One strict reading of values from flags, files and code alike.

        Numbers must be numbers (``rate = "0.5"`` and ``rounds = true`` are refused, not converted)
        and switches must be true or false. Lists and mappings may be given as text, as on the
        command line: ``"fc3,fc2"`` for a tuple, ``"fc3=0.1,conv1=0"`` for a mapping.
        """
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for name, info in cls.model_fields.items():
            if name not in out:
                continue
            base, _, metadata = unwrap(info.annotation)
            value = out[name]
            container = container_of(info.annotation)
            text = next((m for m in [*metadata, *info.metadata] if isinstance(m, Text)), None)
            if isinstance(value, str) and text is not None:
                value = text.parse(value)
            elif isinstance(value, str) and container is tuple:
                value = tuple(x.strip() for x in value.split(",") if x.strip())
            elif isinstance(value, str) and container is dict:
                value = _pairs(name, value, typing.get_args(base)[1])
            if container is tuple and isinstance(value, list | tuple):
                item = typing.get_args(base)[0]
                for v in value:
                    _check_scalar(name, unwrap(item)[0], v)
            elif container is dict and isinstance(value, dict):
                for k, v in value.items():
                    _check_scalar(f"{name}[{k!r}]", unwrap(typing.get_args(base)[1])[0], v)
            else:
                _check_scalar(name, base, value)
            out[name] = value
        return out


def _check_scalar(name: str, kind: Any, value: Any) -> None:
    """Refuse a value of the wrong kind for a number or switch field (before pydantic could convert it)."""
    if value is None:
        return
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {_short(value)}")
    elif kind is bool and not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_short(value)}")


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message never echoes a huge value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unwrap(annotation: Any) -> tuple[Any, bool, list[Any]]:
    """(type, optional, metadata) of a field annotation: ``Annotated[str, m] | None`` -> (str, True, [m])."""
    optional, metadata = False, []
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            metadata += list(annotation.__metadata__)
            annotation = annotation.__origin__
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                return annotation, optional, metadata
            annotation = args[0]
        else:
            return annotation, optional, metadata


def container_of(annotation: Any) -> type | None:
    """``tuple`` or ``dict`` for a field holding one (optionally), else None."""
    origin = typing.get_origin(unwrap(annotation)[0])
    return origin if origin in (tuple, dict) else None


def _pairs(name: str, text: str, kind: Any = str) -> dict[str, Any]:
    """``"fc3=0.1,conv1=0"`` -> ``{"fc3": 0.1, "conv1": 0.0}`` (values read as ``kind``)."""
    pairs = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name} {_short(text)}: write name=value pairs, e.g. 'fc3=0.1,conv1=0'")
        try:
            pairs[key.strip()] = kind(value.strip()) if kind in (int, float) else value.strip()
        except ValueError:
            raise ValueError(f"{name} {_short(text)}: {value.strip()!r} is not a number") from None
    return pairs


def merge(base: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``updates`` laid over it, nested tables merged key by key."""
    out = dict(base)
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


S = TypeVar("S", bound=FrozenSpec)


@dataclass(frozen=True)
class Flag:
    """How a spec field appears on the command line, where the naming rule is not enough.

    The rule: a field's flag is ``--`` + the nested spec's ``flag_prefix`` + its name with ``_``
    as ``-``. ``name`` replaces that (``TreatmentSpec.kind`` is ``--treatment``); ``aliases`` are
    extra spellings; ``parse`` reads the flag's text into updates of the owning spec's fields (a
    dict), for values with a short form such as ``rewind:500it``.
    """

    name: str | None = None
    aliases: tuple[str, ...] = ()
    parse: Callable[[str], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class Text:
    """Field metadata: how the field's text form reads (``seeds = "0-4"``), for files and flags alike."""

    parse: Callable[[str], Any]


@dataclass(frozen=True)
class RegistryRef:
    """Field metadata: the value names an entry of this registry (read by the CLI for choices and help)."""

    registry: Registry | Callable[[], Registry]
    listing: str | None = None  # the command that lists the entries with descriptions
    forms: Callable[[], list[str]] | None = None  # other accepted forms (``torchvision:NAME``)

    def get(self) -> Registry:
        r = self.registry
        return r if isinstance(r, Registry) else r()


def build_spec(cls: type[S], **values: Any) -> S:
    """Construct ``cls``; validation failures become one readable :class:`SpecError`
    (an :class:`UnknownNameError` when every failure is a name that is not registered)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        message = format_validation_error(cls.__name__, exc)
        if all(isinstance(e.get("ctx", {}).get("error"), _UnknownName) for e in exc.errors()):
            raise UnknownNameError(message) from None
        raise SpecError(message) from None


def format_validation_error(what: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(got, dict) and "got " not in msg:
            msg += f" (got {_short(got)})"
        lines.append(f"{field}: {msg}" if field else msg)
    return f"invalid {what}: " + "; ".join(lines)


class _UnknownName(ValueError):
    """A field validator's error for a name that is not in its registry."""


def known(registry: Registry, name: str) -> str:
    """Field validator helper: ``name`` must be registered (ValueError lists the valid ones)."""
    if name not in registry:
        raise _UnknownName(registry.unknown_message(name))
    return name


def registered(registry: Registry | Callable[[], Registry], listing: str | None = None) -> type[str]:
    """A ``str`` field type that must name an entry of ``registry`` (or of ``registry()``, for
    registries that cannot be imported where the spec is defined). ``listing`` names the command
    that shows the entries with their descriptions (``prunelab methods``)."""
    ref = RegistryRef(registry, listing)
    return Annotated[str, AfterValidator(lambda name: known(ref.get(), name)), ref]  # type: ignore[return-value]


def resolved(
    resolve: Callable[[str], object],
    registry: Registry | Callable[[], Registry],
    listing: str | None = None,
    forms: Callable[[], list[str]] | None = None,
) -> type[str]:
    """A ``str`` field naming an entry of ``registry`` or any other form ``resolve`` accepts
    (``torchvision:resnet18``, ``imagefolder:PATH``); ``forms`` lists those forms for help texts."""
    ref = RegistryRef(registry, listing, forms)

    def check(text: str) -> str:
        try:
            resolve(text)
        except UnknownNameError as exc:
            raise _UnknownName(str(exc)) from None
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return text

    return Annotated[str, AfterValidator(check), ref]  # type: ignore[return-value]
