"""A small generic registry: name -> entry, used for losses, datasets and backbones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from spmlbench.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps registry names to entries; ``kind`` names what is registered, for error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an entry under ``name`` (names are unique)."""

        def deco(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return deco

    def add(self, name: str, entry: T) -> None:
        """Register ``entry`` under ``name``."""
        self.register(name)(entry)

    def remove(self, name: str) -> None:
        """Drop ``name`` (a module registering it again replaces its entry)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """Return the entry for ``name``; an unknown name raises ConfigError listing the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))  # not registration order: that depends on import order
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
