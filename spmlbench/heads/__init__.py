"""Model heads as registered components, and the methods they compose (docs/adding-a-method.md).

>>> from spmlbench.heads import method_of
>>> m = method_of("boostlu_ll_r")        # head boostlu x loss ll_r
>>> m.head.consumes, m.loss, m.supports("linear-init")
('map', 'll_r', None)

Every registered loss is a method too: the linear head with that loss (``method_of("gr").plain``).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from spmlbench.heads.registry import (
    CACHED,
    DEFAULT_HEAD,
    HEADS,
    HeadDef,
    Method,
    register_head,
)
from spmlbench.modes import E2E, LINEAR, LINEAR_INIT


def load_builtins() -> None:
    """Import every module of :mod:`spmlbench.heads.builtin` (each registers its head)."""
    from spmlbench.heads import builtin

    for mod in sorted(pkgutil.iter_modules(builtin.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{builtin.__name__}.{mod.name}")


load_builtins()


@dataclasses.dataclass(frozen=True)
class Composition:
    """What a method name stands for: a head, a loss and (linear mode) a trainer, with the capabilities the
    planner, executors, trainers and report ask about."""

    name: str
    head: HeadDef
    method: Method

    @property
    def loss(self) -> str:
        """The registered loss the method trains with."""
        return self.method.loss

    @property
    def plain(self) -> bool:
        """The linear head with a loss and no trainer of its own (batched linear training, lockstep e2e)."""
        return self.head.name == DEFAULT_HEAD and not self.method.trainer

    def linear_trainer(self) -> str | None:
        """Linear mode's trainer: the method's own, the cached-input one for a head other than the linear one,
        None for the batched linear trainer."""
        if self.method.trainer:
            return self.method.trainer
        return None if self.head.name == DEFAULT_HEAD else CACHED

    def reads_maps(self) -> bool:
        """Whether linear mode trains the head on the cached layer4 maps (a head that consumes the map)."""
        return LINEAR in self.head.modes and self.linear_trainer() == CACHED and self.head.consumes == "map"

    def supports(self, mode: str) -> str | None:
        """None when the method trains in ``mode``, else the reason, with the modes it does train in."""
        def ok(m: str) -> bool:
            return m in self.head.modes and (m != LINEAR_INIT or self.head.loads_linear)

        if ok(mode):
            return None
        modes = " or ".join(f"--mode {m}" for m in (E2E, LINEAR, LINEAR_INIT) if ok(m))
        if mode == LINEAR_INIT and E2E in self.head.modes:
            return (f"{self.name}: LinearInit's linear head does not load into the {self.head.name} head; "
                    f"run it with {modes}")
        if mode == LINEAR and self.head.consumes == "map":
            return (f"{self.name}: trains the {self.head.name} head on the backbone's feature map, which linear "
                    f"mode's pooled features do not have; run it with {modes}")
        if E2E not in self.head.modes:
            return f"{self.name}: has its own model and trainer on cached features; run it with {modes}"
        return f"{self.name}: the {self.head.name} head does not train in {mode} mode; run it with {modes}"


def method_of(name: str) -> Composition:
    """The composition a method (or loss) name stands for: a head's declared method; else ``<head>_<loss>``,
    that head with that loss (``boostlu_an``: BoostLU's head with AN; the longest head name that fits); else
    the linear head with the loss of that name."""
    heads = [HEADS.get(n) for n in HEADS.names()]
    for head in heads:
        for method in head.methods:
            if method.name == name:
                return Composition(name, head, method)
    prefixed = [h for h in heads if h.name != DEFAULT_HEAD and name.startswith(h.name + "_")]
    if prefixed:
        head = max(prefixed, key=lambda h: len(h.name))
        return Composition(name, head, Method(name, loss=name[len(head.name) + 1:]))
    return Composition(name, HEADS.get(DEFAULT_HEAD), Method(name, loss=name))


__all__ = ["CACHED", "Composition", "DEFAULT_HEAD", "HEADS", "HeadDef", "Method", "load_builtins", "method_of",
           "register_head"]
