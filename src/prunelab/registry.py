"""One registry per concept (models, datasets, optimizers, ...), as in OpenLTH and timm.

A new method is added by registering one object under a name; nothing else is edited. A registry
made with ``builtins="prunelab.pruning"`` imports every module of that package the first time it
is read (not when it is made, nor when the package is imported), so a module dropped into the
package registers its entries without a line anywhere else, and what was registered never depends
on which module happened to be imported first.

Each name has one spelling: a name that differs from a registered one only in ``-``/``_`` or case
(``early_bird`` beside ``early-bird``) is refused when it is registered, naming both.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prunelab.errors import UnknownNameError

T = TypeVar("T")


def spelling(name: str) -> str:
    """What two names that are one name share: lower case, ``_`` as ``-``."""
    return name.lower().replace("_", "-")


def import_package(package: str) -> None:
    """Import every module of ``package`` (sorted by name), which registers what they define."""
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


class Registry(Generic[T]):
    """Maps names to objects of one kind; unknown names get an error listing the valid ones."""

    def __init__(self, kind: str, *, builtins: str | None = None) -> None:
        self.kind = kind
        self.builtins = builtins
        self._loading = builtins is None  # True once the built-in modules are (being) imported
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._forms: dict[str, tuple[Callable[[str], T | None], str]] = {}

    def _entries(self) -> dict[str, T]:
        """The entries, the built-in modules imported first (once)."""
        if not self._loading:
            self._loading = True
            import_package(self.builtins)
        return self._items

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return decorator

    def add(self, name: str, obj: T, description: str | None = None) -> None:
        """Register ``obj``; its description is ``description``, else its ``description`` attribute,
        else the first line of its docstring (what listings and ``--help`` show). A name registered
        already, or spelled like one (``a_b`` beside ``a-b``), is refused naming both."""
        same = next((n for n in self._items if spelling(n) == spelling(name)), None)
        if same == name:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if same is not None:
            raise ValueError(
                f"{self.kind} {name!r} is spelled like the registered {same!r}: one name, one spelling"
            )
        self._items[name] = obj
        if description is not None:
            self._descriptions[name] = description

    def unregister(self, name: str) -> T:
        """Remove ``name`` (a test's own entry) and return what it named."""
        if name not in self._items:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        self._descriptions.pop(name, None)
        return self._items.pop(name)

    def add_form(self, usage: str, parse: Callable[[str], T | None], description: str) -> None:
        """Register a family of entries named by a pattern (``N:M`` for ``2:4``, ``4:8``, ...):
        ``parse(name)`` gives the entry a name stands for, or None when it is not of that form."""
        if usage in self._forms:
            raise ValueError(f"{self.kind} form {usage!r} is registered twice")
        self._forms[usage] = (parse, description)

    def forms(self) -> list[tuple[str, str]]:
        """(usage, description) of each registered form."""
        self._entries()
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
        items = self._entries()
        if name in items:
            return items[name]
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
        return list(self._entries())

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries().items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries() or self._parsed(name) is not None

    def __len__(self) -> int:
        return len(self._entries())
