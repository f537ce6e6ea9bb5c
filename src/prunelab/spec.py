"""Validated, frozen specifications (OpenLTH-style hyperparameter records, checked by pydantic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from prunelab.errors import SpecError
from prunelab.registry import Registry


class FrozenSpec(BaseModel):
    """Base for hyperparameter records: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def non_default(self) -> dict[str, Any]:
        """The fields that differ from their defaults (what identifies a configuration)."""
        return self.model_dump(exclude_defaults=True, mode="json")


S = TypeVar("S", bound=FrozenSpec)


def build_spec(cls: type[S], **values: Any) -> S:
    """Construct ``cls``; validation failures become one readable :class:`SpecError`."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise SpecError(format_validation_error(cls.__name__, exc)) from None


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


def known(registry: Registry, name: str) -> str:
    """Field validator helper: ``name`` must be registered (ValueError lists the valid ones)."""
    if name not in registry:
        raise ValueError(registry.unknown_message(name))
    return name


def registered(registry: Registry | Callable[[], Registry]) -> type[str]:
    """A ``str`` field type that must name an entry of ``registry`` (or of ``registry()``, for
    registries that cannot be imported where the spec is defined)."""

    def check(name: str) -> str:
        return known(
            registry() if callable(registry) and not isinstance(registry, Registry) else registry, name
        )

    return Annotated[str, AfterValidator(check)]  # type: ignore[return-value]
