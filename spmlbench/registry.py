"""A small generic registry: name -> entry, used for losses, heads, datasets and backbones; and where a
registered piece of code comes from (:func:`code_origin`: the package, a plugin file, another file)."""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from spmlbench.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
# set on the module of a plugin file that spmlbench.losses.plugins installed: its PluginSource (path, text, sha)
PLUGIN_MARK = "__spmlbench_plugin__"


def plugin_of(obj: Any) -> Any:
    """The plugin source (``path``, ``text``, ``sha``) of the plugin file that is ``obj`` (a module) or defines it
    (a function or class), or None."""
    module = obj if inspect.ismodule(obj) else sys.modules.get(getattr(obj, "__module__", "") or "")
    return getattr(module, PLUGIN_MARK, None)


def code_origin(obj: Any) -> tuple[str, str]:
    """``(file, source hash)`` of ``obj``, a module or the function or class it defines: a plugin file's path
    and sha (the same on every machine its text is shipped to), a package file's path from the package's parent
    and no hash, another file's path and the sha256 (16 hex) of its bytes."""
    plugin = plugin_of(obj)
    if plugin is not None:
        return plugin.path, plugin.sha
    try:
        path = Path(inspect.getsourcefile(obj) or "").resolve()
    except TypeError:
        return "<unknown>", ""
    if PACKAGE_DIR in path.parents:
        return str(path.relative_to(PACKAGE_DIR.parent)), ""
    try:
        return str(path), hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return str(path), hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


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
