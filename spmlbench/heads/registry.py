"""The head registry: every model head registers itself where it is defined, with what it consumes, the modes it
trains in, its options and the methods (named compositions with a loss) it takes part in.

A head is one module (``spmlbench/heads/builtin/<name>.py``):

1. its options, if any: a frozen :class:`~spmlbench.hparams.HParams` dataclass (BoostLU's ``alpha``); they join
   the hyperparameters of every method the head is in (``--set boostlu_ll_r.alpha=3``);
2. ``build(dim, num_classes, seed, options) -> nn.Module``: the head, initialised from the seed;
3. :func:`register_head` with what it consumes (``pooled`` features ``(B, D)`` or the backbone's last feature
   ``map`` ``(B, D, h, w)``), its modes, and its methods (:class:`Method`: a name users type, the loss it trains
   with, and in linear mode the trainer when it is not the cached-input one).

The losses package composes each declared method into a registered loss of that name
(:mod:`spmlbench.losses.methods`); trainers, planner and report ask :func:`method_of` for capabilities.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.hparams import HParams
from spmlbench.modes import MODES
from spmlbench.registry import Registry, code_origin

CONSUMES = ("pooled", "map")
DEFAULT_HEAD = "linear"  # the head of every plain loss
CACHED = "cached"  # the linear-mode trainer of a head on cached inputs (pooled features or layer4 maps)
Build = Callable[[int, int, int, Any], Any]  # (dim, num_classes, seed, options or None) -> nn.Module


@dataclasses.dataclass(frozen=True)
class Method:
    """A named composition: this head with ``loss`` (a registered loss). ``trainer``: linear mode's trainer when
    the method's loop differs (SMILE's two-model step); ``meta``: the loss metadata the method states itself
    (title, paper, year, citation, order, reference, step_cost)."""

    name: str
    loss: str
    trainer: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class HeadDef:
    """One registered head: how to build it, what it consumes and where it trains."""

    name: str
    title: str
    build: Build
    consumes: str = "pooled"
    modes: tuple[str, ...] = ("e2e",)
    options: type[HParams] | None = None
    # a change the head needs in the backbone (``nn.Module -> nn.Module``; MIME freezes batch norm and the stem)
    backbone: Callable[[Any], Any] | None = None
    # LinearInit's linear head loads into it (its parameters are named and shaped like ``nn.Linear``'s)
    loads_linear: bool = False
    methods: tuple[Method, ...] = ()
    citation: str = ""
    origin: str = ""
    source_hash: str = ""  # sha256 (16 hex) of a head defined outside the package (a plugin file); "" built in

    def option_names(self) -> tuple[str, ...]:
        """The hyperparameters the head reads (its options' fields)."""
        return tuple(f.name for f in dataclasses.fields(self.options)) if self.options is not None else ()

    def make_options(self, values: Any = None) -> Any:
        """The head's options from ``values``: an object with the option fields (a method's hyperparameters) as
        is, or a mapping / None (the options' defaults for what it leaves out)."""
        if values is not None and not isinstance(values, Mapping):
            return values
        if self.options is None:
            return None
        given = dict(values or {})
        return self.options(**{k: given[k] for k in self.option_names() if k in given})


HEADS: Registry[HeadDef] = Registry("head")


def register_head(name: str, *, build: Build, title: str = "", consumes: str = "pooled",
                  modes: tuple[str, ...] = ("e2e",), options: type[HParams] | None = None,
                  methods: tuple[Method, ...] = (), **flags: Any) -> HeadDef:
    """Register head ``name`` (see the module docstring); returns its :class:`HeadDef`."""
    caller = sys.modules.get(sys._getframe(1).f_globals.get("__name__", ""))  # the head's file registers it
    origin, source_hash = code_origin(caller if caller is not None else build)
    if not name.isidentifier() or name != name.lower():
        raise ConfigError(f"{origin}: head name {name!r}: must be a lowercase identifier, e.g. 'attn_pool'")
    if consumes not in CONSUMES:
        raise ConfigError(f"{origin}: head {name!r}: consumes={consumes!r}; use one of {CONSUMES}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"{origin}: head {name!r}: modes={modes!r}; use some of {MODES}")
    if options is not None and not (isinstance(options, type) and issubclass(options, HParams)):
        raise ConfigError(f"{origin}: head {name!r}: options must be a frozen dataclass subclassing "
                          "spmlbench.hparams.HParams")
    head = HeadDef(name=name, title=title or name, build=build, consumes=consumes, modes=tuple(modes),
                   options=options, methods=tuple(methods), origin=origin, source_hash=source_hash, **flags)
    if name in HEADS:
        if HEADS.get(name).origin != origin:
            raise ConfigError(f"head {name!r} from {origin}: that name is already registered by "
                              f"{HEADS.get(name).origin}; give the new head another name")
        HEADS.remove(name)
    HEADS.add(name, head)
    return head
