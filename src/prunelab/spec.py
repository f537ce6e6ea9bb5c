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
from pydantic.fields import FieldInfo

from prunelab.errors import SpecError, UnknownNameError
from prunelab.registry import Registry


class FrozenSpec(BaseModel):
    """Base for hyperparameter records: immutable, unknown fields refused.

    ``flag_prefix`` is put before the flag of each field when the spec is nested in another
    (``synflow-`` gives ``--synflow-rounds``); the top-level specs have none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    flag_prefix: ClassVar[str] = ""

    def non_default(self) -> dict[str, Any]:
        """The fields that differ from their defaults (what identifies a configuration)."""
        return self.model_dump(exclude_defaults=True, mode="json")

    @model_validator(mode="before")
    @classmethod
    def _text_forms(cls, values: Any) -> Any:
        """Lists and mappings may be given as text, as on the command line: ``"fc3,fc2"`` for a
        tuple, ``"fc3=0.1,conv1=0"`` for a mapping."""
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for name, info in cls.model_fields.items():
            text = out.get(name)
            if not isinstance(text, str):
                continue
            container = container_of(info.annotation)
            if container is tuple:
                out[name] = tuple(x.strip() for x in text.split(",") if x.strip())
            elif container is dict:
                out[name] = _pairs(name, text)
        return out


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


def _pairs(name: str, text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name} {text!r}: write name=value pairs, e.g. 'fc3=0.1,conv1=0'")
        pairs[key.strip()] = value.strip()
    return pairs


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
    metavar: str | None = None


@dataclass(frozen=True)
class RegistryRef:
    """Field metadata: the value names an entry of this registry (read by the CLI for choices and help)."""

    registry: Registry | Callable[[], Registry]
    listing: str | None = None  # the command that lists the entries with descriptions

    def get(self) -> Registry:
        r = self.registry
        return r if isinstance(r, Registry) else r()


def field_metadata(info: FieldInfo, kind: type) -> Any:
    """The first metadata object of type ``kind`` on a field (or None)."""
    return next((m for m in info.metadata if isinstance(m, kind)), None)


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
        field = ".".join(str(p) for p in err["loc"]) or what
        got = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(
            f"{field}: {msg} (got {got!r})"
            if "input" in err and not isinstance(got, dict)
            else f"{field}: {msg}"
        )
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
