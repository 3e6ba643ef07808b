"""Hyperparameter dataclasses: coercion of user values, range checks, ``loss.param=value`` parsing.

Every loss has one frozen dataclass (a subclass of :class:`HParams`) whose field defaults are the
paper defaults. :func:`make_hparams` builds one from per-dataset defaults plus user overrides,
coercing strings/ints to the field types, and every invalid value raises
:class:`~spmlbench.errors.ConfigError` naming the loss, the parameter and the allowed range.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import traceback
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from spmlbench.errors import ConfigError, LossError

H = TypeVar("H", bound="HParams")


def fmt(value: Any) -> str:
    """Format a hyperparameter value compactly (``-1`` not ``-1.0``; lists as ``[0, 2]``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


@dataclasses.dataclass(frozen=True)
class HParams:
    """Base of every loss's hyperparameter dataclass; subclasses set ``loss`` and ``check()``."""

    loss: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Validate values (subclasses); raise ConfigError via :meth:`require`."""

    def require(self, name: str, ok: bool, rule: str) -> None:
        """Raise ``ConfigError("<loss>.<name>=<value>: must be <rule>; ...")`` unless ``ok``."""
        if ok:
            return
        value = getattr(self, name)
        if isinstance(value, float) and not math.isfinite(value):
            rule = f"a finite number {rule}"  # 1e400 reads as inf: "must be > 0" alone misleads
        default = _field_default(type(self), name)
        fix = f"use a value in range, e.g. the default {self.loss}.{name}={fmt(default)}"
        if default is None:
            fix = f"pass {self.loss}.{name}=<value>"
        raise ConfigError(f"{self.loss}.{name}={fmt(value)}: must be {rule}; {fix}")

    def positive(self, *names: str) -> None:
        """Require each named field to be finite and > 0."""
        for n in names:
            v = getattr(self, n)
            self.require(n, v is not None and math.isfinite(v) and v > 0, "> 0")

    def nonnegative(self, *names: str) -> None:
        """Require each named field to be finite and >= 0."""
        for n in names:
            v = getattr(self, n)
            self.require(n, v is not None and math.isfinite(v) and v >= 0, ">= 0")

    def as_dict(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (lists for tuple fields), e.g. for JSON records."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default
    return None


def _coerce(loss: str, name: str, kind: Any, value: Any, length: int | None) -> Any:
    """Convert ``value`` to the field type ``kind`` (float, int, bool, tuple of floats, optional)."""
    bad = ConfigError(f"{loss}.{name}={fmt(value)}: must be {_kind_word(kind, length)}; "
                      f"fix the value of {loss}.{name}")
    origin = typing.get_origin(kind)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(loss, name, args[0], value, length)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            low = text.lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise bad
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise bad from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if origin is tuple or kind is tuple:
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            raise bad
        return tuple(_coerce(loss, name, float, v, None) for v in value)
    return value


def _kind_word(kind: Any, length: int | None) -> str:
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if typing.get_origin(kind) is tuple or kind is tuple:
        return (f"a list of {length} numbers" if length else "a list of numbers") + ", written [a,b,...]"
    return "a valid value"


def coerce_values(cls: type[H], defaults: Mapping[str, Any] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The values ``cls`` gets from per-dataset ``defaults`` then user ``overrides``, coerced to the field
    types but not yet checked by ``cls.check()``.

    Unknown names or values of the wrong type raise ConfigError listing the known ones.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for source in (defaults or {}), (overrides or {}):
        for key, value in source.items():
            if key not in fields:
                known = ", ".join(fields) or "(none)"
                raise ConfigError(f"{cls.loss}.{key}: unknown hyperparameter; known: {known}")
            length = fields[key].metadata.get("length")
            values[key] = _coerce(cls.loss, key, hints[key], value, length)
    return values


def make_hparams(cls: type[H], defaults: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> H:
    """Build ``cls`` from per-dataset ``defaults`` then user ``overrides`` (validated, coerced).

    Unknown names and out-of-range values raise ConfigError; a ``check()`` that raises anything else
    (a plugin's bug) raises :class:`~spmlbench.errors.LossError` naming its file and line, which fails
    that loss's jobs only.
    """
    values = coerce_values(cls, defaults, overrides)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's check() that raises: one line naming its file and line
        path = getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__
        line = raising_line(exc, str(path)) or "?"
        given = ", ".join(f"{k}={fmt(v)}" for k, v in values.items()) or "the defaults"
        raise LossError(f"{path}:{line}: {cls.loss} hyperparameters ({given}): check() raised "
                        f"{type(exc).__name__}: {exc}; fix check() or the values", cls.loss) from None


def unchecked_hparams(cls: type[H], defaults: Mapping[str, Any] | None = None,
                      overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every field of ``cls`` (its defaults < ``defaults`` < ``overrides``), coerced but not checked: the
    hyperparameters of a job whose ``check()`` raises, so that the job exists and fails when it is built."""
    values = coerce_values(cls, defaults, overrides)
    out = {f.name: values.get(f.name, f.default) for f in dataclasses.fields(cls)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def raising_line(exc: BaseException, path: str) -> int | None:
    """The last line of file ``path`` in the traceback of ``exc`` (None when the file is not in it)."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == path and f.lineno]
    return lines[-1] if lines else None


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``"loss.param=value"`` into ``(loss, param, value)``; the value is JSON if it parses.

    ``"gr.beta=[0,10,-2,-8]"`` -> ``("gr", "beta", [0, 10, -2, -8])``; strings that are not JSON
    are returned as given (the dataclass coerces them).
    """
    key, sep, raw = text.partition("=")
    loss, dot, param = key.strip().partition(".")
    if not sep or not dot or not loss or not param or not raw.strip():
        raise ConfigError(f"{text!r}: expected LOSS.PARAM=VALUE; e.g. gr.q3=1.5")
    try:
        value: Any = json.loads(raw.strip())
    except json.JSONDecodeError:
        value = raw.strip()
    return loss, param.strip(), value
