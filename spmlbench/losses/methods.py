"""Methods composed into registered losses: every method a head declares (:mod:`spmlbench.heads`) becomes the
loss of the method's name, whose hyperparameters are the loss's plus the head's options.

``boostlu_ll_r`` is head ``boostlu`` x loss ``ll_r``: LL-R's formula, state and schedule, with the hyperparameters
``delta_rel`` ... and ``alpha``; ``--set boostlu_ll_r.alpha=3`` reaches the head. A method named like its loss
(``mime``: MIME's head x MIME's loss) is that loss trained with its paper's head.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.heads import DEFAULT_HEAD, HEADS, HeadDef, Method, method_of
from spmlbench.hparams import HParams
from spmlbench.losses.registry import LOSSES, LossDef

METADATA = ("title", "paper", "year", "citation", "order", "reference", "step_cost")  # what a method may state


def composed_params(name: str, loss_params: type[HParams], options: type[HParams] | None) -> type[HParams]:
    """The hyperparameter dataclass of method ``name``: the loss's fields, then the head's options (each part
    checked by its own ``check()``)."""
    if options is None and loss_params.loss == name:
        return loss_params
    bases = (loss_params,) if options is None else (loss_params, options)

    def check(self: Any) -> None:
        for base in bases:
            base.check(self)

    title = "".join(part.title() for part in name.split("_")) + "Params"
    cls = type(title, bases, {"loss": name, "check": check, "__module__": __name__, "__qualname__": title,
                              "__doc__": f"Method {name}: {', '.join(b.__name__ for b in bases)}."})
    return dataclasses.dataclass(frozen=True)(cls)


def _origin(head: HeadDef, base: LossDef) -> tuple[str, str]:
    """``(file, source hash)`` of a composition: the head's file; a hash of the head's and the loss's sources
    unless both are built in (a plugin head's hash is its file's sha, the same wherever its text is shipped)."""
    if not head.source_hash:
        return head.origin, base.source_hash
    return head.origin, hashlib.sha256(f"{head.source_hash}:{base.source_hash}".encode()).hexdigest()[:16]


def compose(head: HeadDef, method: Method, base: LossDef) -> LossDef:
    """The registered loss of ``method``: ``base`` (the loss as its file registered it) with the head's options
    and the metadata the method states."""
    unknown = set(method.meta) - set(METADATA)
    if unknown:
        raise ConfigError(f"{head.origin}: method {method.name!r}: unknown metadata {sorted(unknown)}; "
                          f"use {', '.join(METADATA)}")
    clash = set(head.option_names()) & {f.name for f in dataclasses.fields(base.params)}
    if clash:
        raise ConfigError(f"{head.origin}: method {method.name!r}: head option(s) {sorted(clash)} are also "
                          f"hyperparameters of loss {base.name!r}; rename them")
    meta = dict(method.meta)
    if method.name != base.name:
        meta.setdefault("title", f"{base.title} ({head.name} head)")
    origin, source_hash = _origin(head, base)
    if method.name == base.name:  # the loss trained with its paper's head: still that loss's file
        origin = base.origin
    return dataclasses.replace(base, name=method.name, params=composed_params(method.name, base.params, head.options),
                               origin=origin, source_hash=source_hash, **meta)


def compose_named(name: str) -> None:
    """Register method ``name`` when it is ``<head>_<loss>`` of a registered head and loss and not yet
    registered (``boostlu_an``): :meth:`LossRegistry.get` calls this for a name it does not hold."""
    comp = method_of(name)
    if comp.head.name == DEFAULT_HEAD or comp.loss == name or not LOSSES.is_registered_loss(comp.loss):
        return
    LOSSES.add_method(compose(comp.head, comp.method, LOSSES.as_registered(comp.loss)), listed=False)


def compose_methods(heads: list[HeadDef] | None = None) -> None:
    """Register the loss of every method of ``heads`` (default: every registered head)."""
    for head in heads if heads is not None else [HEADS.get(n) for n in HEADS.names()]:
        for method in head.methods:
            LOSSES.add_method(compose(head, method, LOSSES.as_registered(method.loss)))
