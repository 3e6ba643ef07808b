"""The batched (config-axis) form of a loss, derived from its plain per-config formula.

``formula(hp, logits, observed[, step])`` is written for one config: logits (B, C), observed
(B, C) bool, ``hp`` the hyperparameter dataclass. Two ways to evaluate M configs at once:

- ``broadcast`` (default when every hyperparameter is a number or a switch): ``hp`` becomes an object
  whose fields are ``(M, 1, 1)`` tensors, logits are ``(M, B, C)``, and the formula's torch operations
  broadcast over the config axis; it must then reduce over the last two dims only.
- ``loop``: the formula is called once per config (``hp`` the dataclass itself): always correct, the
  last resort for formulas with host-side logic (top-k counts, schedules of lists).

The result is ``mean_bc`` of a per-entry matrix, or the formula's own reduction when it returns one
value per config. Gradients come from autograd.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, ClassVar

import torch
from torch import Tensor

from spmlbench.errors import LossError
from spmlbench.losses.base import BatchedLoss
from spmlbench.hparams import raising_line

if typing.TYPE_CHECKING:
    from spmlbench.losses.registry import LossDef

_SCALARS = (float, int, bool)


@dataclasses.dataclass(frozen=True)
class Step:
    """What a formula may read besides its inputs: the 1-based ``epoch`` of ``num_epochs`` (``started``
    False before the first ``start_epoch``), the batch's training-row ids ``index`` (B,) or None, and the
    number of classes."""

    epoch: int = 1
    num_epochs: int = 1
    started: bool = False
    index: Tensor | None = None
    num_classes: int = 0


def takes_step(formula: Any) -> bool:
    """Whether ``formula`` accepts a fourth (``step``) argument."""
    try:
        params = list(inspect.signature(formula).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 4


def broadcastable(params: type) -> bool:
    """Whether every field of the dataclass ``params`` is a number or a switch (an ``(M, 1, 1)`` column)."""
    hints = typing.get_type_hints(params)
    return all(hints[f.name] in _SCALARS for f in dataclasses.fields(params))


def reduce_value(out: Tensor, logits: Tensor, definition: LossDef | None = None) -> Tensor:
    """``mean_bc`` of a per-entry matrix (same rank as ``logits``), else ``out`` (already reduced). A matrix
    of another shape than ``logits`` (a formula returning ``(B, 3)`` for ``(B, C)``, trained silently
    before) is a :class:`LossError` naming ``definition``'s file and line."""
    if out.dim() == logits.dim():
        if out.shape != logits.shape:
            raise _loss_error(definition, f"the formula returned shape {tuple(out.shape)[-2:]} for logits "
                              f"{tuple(logits.shape)[-2:]}; return the (B, C) per-entry loss or a scalar")
        return out.mean(dim=(-2, -1))
    return out


def _loss_error(definition: LossDef | None, problem: str, line: int | None = None) -> LossError:
    """A LossError ``<file>:<line>: loss '<name>': <problem>; fix the loss`` (line: the formula's ``def``)."""
    if definition is None:
        return LossError(f"{problem}; fix the loss")
    code = getattr(definition.formula, "__code__", None)
    where = f"{definition.origin}:{line or getattr(code, 'co_firstlineno', '?')}"
    return LossError(f"{where}: loss {definition.name!r}: {problem}; fix the loss", definition.name)


class PlainBatched(BatchedLoss):
    """M configs of a loss given only by its plain formula (see the module docstring)."""

    definition: ClassVar[LossDef]
    use_step: ClassVar[bool] = False
    broadcast: ClassVar[bool] = True

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        self.started = False

    def step(self, index: Tensor | None) -> Step:
        """The :class:`Step` passed to the formula now."""
        return Step(self.epoch, self.num_epochs, self.started, index, self.num_classes)

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        super().start_epoch(epoch, num_epochs)
        self.started = True

    def columns(self, like: Tensor) -> types.SimpleNamespace:
        """The hyperparameters as ``(M, 1, 1)`` tensors (switches as bool) in ``like``'s dtype/device."""
        cols: dict[str, Tensor] = {}
        hints = typing.get_type_hints(self.hparams_cls)
        for f in dataclasses.fields(self.hparams_cls):
            if hints[f.name] is bool:
                cols[f.name] = self.const(("bool", f.name), self.values(f.name), torch.bool, like.device)
            else:
                cols[f.name] = self.col(f.name, like)
        return types.SimpleNamespace(**cols)

    def call(self, hp: Any, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        """One formula call (per-entry matrix or reduced value); whatever it raises becomes a
        :class:`LossError` naming the formula's file and the line that raised."""
        try:
            out = (self.definition.formula(hp, z, s, self.step(index)) if self.use_step
                   else self.definition.formula(hp, z, s))
        except (LossError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a researcher's formula: one line, that loss's jobs fail
            line = raising_line(exc, self.definition.origin)
            raise _loss_error(self.definition, f"the formula raised {type(exc).__name__}: {exc}", line) from None
        if not isinstance(out, Tensor):
            raise _loss_error(self.definition, f"the formula returned {type(out).__name__}, not a tensor")
        return out

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config losses ``(M,)``: the formula broadcast over the configs, or once per config."""
        z, s = self.check_inputs(logits, observed, index)
        if self.broadcast:
            value = reduce_value(self.call(self.columns(z), z, s, index), z, self.definition)
            if value.shape != (self.num_configs,):
                raise _loss_error(self.definition, f"the formula gave shape {tuple(value.shape)} for "
                                  f"{self.num_configs} configs; reduce over the last two dims only (or return the "
                                  "per-entry matrix), or register it with vectorize='loop'")
            return value
        out = []
        for m, hp in enumerate(self.hparams):
            idx = None if index is None else (index if index.dim() == 1 else index[m])
            value = reduce_value(self.call(hp, z[m], s[m if s.shape[0] > 1 else 0], idx), z[m], self.definition)
            if value.dim() != 0:
                raise _loss_error(self.definition, f"the formula gave shape {tuple(value.shape)}; return the "
                                  "(B, C) per-entry loss or a scalar")
            out.append(value)
        return torch.stack(out)


def plain_class(definition: LossDef) -> type[PlainBatched]:
    """The derived batched class of ``definition`` (a new subclass of :class:`PlainBatched`)."""
    broadcast = definition.vectorize == "broadcast" and broadcastable(definition.params)
    return type(f"{definition.params.__name__}Batched", (PlainBatched,), {
        "hparams_cls": definition.params, "definition": definition,
        "use_step": takes_step(definition.formula), "broadcast": broadcast,
        "__module__": __name__,
    })
