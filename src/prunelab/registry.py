"""One registry per concept (models, datasets, optimizers, ...), as in OpenLTH and timm.

A new method is added by registering one object under a name; nothing else is edited.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prunelab.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind; unknown names get an error listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._forms: dict[str, tuple[Callable[[str], T | None], str]] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return decorator

    def add(self, name: str, obj: T, description: str | None = None) -> None:
        """Register ``obj``; its description is ``description``, else its ``description`` attribute,
        else the first line of its docstring (what listings and ``--help`` show)."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        if description is not None:
            self._descriptions[name] = description

    def add_form(self, usage: str, parse: Callable[[str], T | None], description: str) -> None:
        """Register a family of entries named by a pattern (``N:M`` for ``2:4``, ``4:8``, ...):
        ``parse(name)`` gives the entry a name stands for, or None when it is not of that form."""
        if usage in self._forms:
            raise ValueError(f"{self.kind} form {usage!r} is registered twice")
        self._forms[usage] = (parse, description)

    def forms(self) -> list[tuple[str, str]]:
        """(usage, description) of each registered form."""
        return [(usage, description) for usage, (_, description) in self._forms.items()]

    def _parsed(self, name: object) -> T | None:
        if not isinstance(name, str):
            return None
        for parse, _ in self._forms.values():
            obj = parse(name)
            if obj is not None:
                return obj
        return None

    def describe(self, name: str) -> str:
        if name in self._descriptions:
            return self._descriptions[name]
        obj = self.get(name)
        text = getattr(obj, "description", None)
        if isinstance(text, str) and text:
            return text
        doc = getattr(obj, "__doc__", None) or ""
        return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        obj = self._parsed(name)
        if obj is None:
            raise UnknownNameError(self.unknown_message(name))
        return obj

    def unknown_message(self, name: str) -> str:
        valid = ", ".join([*self.names(), *(usage for usage, _ in self.forms())])
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {valid}."

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items or self._parsed(name) is not None

    def __len__(self) -> int:
        return len(self._items)
