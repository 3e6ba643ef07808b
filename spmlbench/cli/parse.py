"""Parsing of the comma lists and plugin options that several commands take."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spmlbench.errors import ConfigError


def _split(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{what} {text!r}: empty list; give comma-separated values")
    return list(dict.fromkeys(items))


def parse_losses(text: str) -> list[str]:
    """``all`` or a comma list of registry names (unknown names raise ConfigError)."""
    from spmlbench.losses import LOSSES, list_losses

    if text.strip() == "all":
        return list_losses()
    names = _split(text, "losses")
    for n in names:
        LOSSES.get(n)
    return names


def parse_numbers(text: str | None, what: str, kind: type) -> list[Any] | None:
    """``--lr-grid 1e-3,1e-4`` / ``--batch-grid 8,16``: a comma list of numbers (None when not given)."""
    if text is None:
        return None
    try:
        return [kind(t) for t in _split(text, what)]
    except ValueError:
        raise ConfigError(f"--{what} {text!r}: expected comma-separated numbers, e.g. "
                          f"{'1e-3,1e-4' if kind is float else '8,16'}") from None


def parse_seeds(text: str) -> list[int]:
    """Comma list of whole numbers in [0, 2**32) (numpy's seed range), ASCII digits only."""
    out = []
    for s in _split(text, "seeds"):
        if not (s.isascii() and s.isdigit()) or int(s) >= 2**32:
            raise ConfigError(f"--seeds {text!r}: {s!r} is not a whole number in [0, 2**32); e.g. --seeds 0,1,2")
        out.append(int(s))
    return out


def load_plugin_options(plugins: Sequence[str]) -> list[str]:
    """Load the entry-point plugins and each ``--plugin`` (file or module); the loss names they added."""
    from spmlbench.losses.plugins import load_plugins

    return load_plugins(plugins)
