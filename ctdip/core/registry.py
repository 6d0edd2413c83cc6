"""A small name -> object registry, the extension points' one mechanism (operator backends in
``ctdip.core.operators.backend``, scan layouts in ``ctdip.core.data.layouts``).

Entries are objects with a ``name`` that satisfy a ``typing.Protocol``; modules register their
own entries when imported. The built-in modules are imported on the first query, and the listing
order is fixed whatever the import order was: built-in entries in the order their modules are
named, then others in registration order. That order is what the registry's users walk (layout
detection) and print (lists of choices in error messages).
"""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Registered ``T``s by name. ``builtins``: the modules whose import registers the built-in
    entries, in listing order; ``reserved``: names no entry may take."""

    def __init__(self, what: str, protocol: type, builtins: tuple[str, ...], reserved: tuple[str, ...] = ()):
        self.what, self.protocol = what, protocol
        self.builtins, self.reserved = builtins, reserved
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``entry.name``; a taken name needs ``replace=True``."""
        if not isinstance(entry, self.protocol):
            raise TypeError(f"{entry!r} does not implement the {self.protocol.__name__} protocol")
        name = entry.name  # type: ignore[attr-defined]
        if not name or name in self.reserved or (name in self._entries and not replace):
            raise ValueError(f"{self.what} name {name!r} is reserved or already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (a no-op for a name not registered)."""
        self._entries.pop(name, None)

    def _rank(self, entry: T) -> int:
        module = type(entry).__module__
        return self.builtins.index(module) if module in self.builtins else len(self.builtins)

    def all(self) -> dict[str, T]:
        """The entries by name in listing order (built-ins first, see the module docstring)."""
        if not self._loaded:
            self._loaded = True
            for module in self.builtins:
                importlib.import_module(module)
        return dict(sorted(self._entries.items(), key=lambda kv: self._rank(kv[1])))

    def names(self) -> tuple[str, ...]:
        """The entries' names in listing order."""
        return tuple(self.all())

    def get(self, name: str) -> T:
        """The entry called ``name``; ``KeyError`` when there is none."""
        return self.all()[name]
