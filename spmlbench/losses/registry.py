"""The loss registry: every loss registers itself where it is defined, with its formula and metadata.

A loss is one module (``spmlbench/losses/builtin/<name>.py``, or a researcher's plugin file):

1. its hyperparameter dataclass (a frozen :class:`~spmlbench.hparams.HParams`),
2. its plain per-config formula ``formula(hp, logits, observed[, step])`` written as the paper
   writes it (autograd; ``(B, C)`` logits -> per-entry ``(B, C)`` matrix, averaged over B x C, or a
   scalar that already holds the reference reduction),
3. :func:`register_loss` with its metadata (title, paper, year, citation, flags; ``version``: raise it
   when a correction changes the loss's numbers, so records of the old formula are not reused).

Optional: a hand-written batched form (``batched=``, for state with a row per training image) and a
fused value-and-gradient accelerator (``fused=``, a ``"module:Class"`` string imported on first use).

The built-in modules (and so torch) are imported on the registry's first lookup, not when the package is
imported: ``spmlbench losses`` lists them from their cached cards (:mod:`spmlbench.losses.cards`) without torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
import threading
from collections.abc import Callable
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.hparams import HParams
from spmlbench.registry import Registry, code_origin

BUILTIN_PACKAGE = "spmlbench.losses.builtin"
VECTORIZE = ("broadcast", "loop")
Formula = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class LossDef:
    """One registered loss: how to build it and what ``spmlbench losses`` shows about it."""

    name: str
    params: type[HParams]
    formula: Formula
    title: str
    paper: str
    year: int
    citation: str
    stateful: bool = False  # keeps per-training-row state across batches (ROLE, LL-Cp, EM-APL)
    scheduled: bool = False  # changes with the epoch (GR, LL, SPLC, EM-APL)
    uses_clean_labels: bool = False  # trains on the clean labels (the BCE upper bound)
    pseudo: str | None = None  # needs a CLIP pseudo-label cache (``spmlbench pseudo-labels DS --source <this>``)
    batched: type | str | None = None  # hand-written batched form (state); None: derived from the formula
    fused: type | str | None = None  # optional fused value-and-gradient batched form
    single: type | str | None = None  # one-config wrapper with extra accessors (GR's k, v)
    vectorize: str = "broadcast"  # derived batched form: (M, 1, 1) hyperparameters, or a loop over configs
    # relative CPU cost of one batched call per training step (AN = 1; benchmarks/loss_step.py);
    # only balances configs over processes (spmlbench.train.parallel)
    step_cost: float = 1.0
    order: int = 1000  # position in listings (built-ins 10..160; plugins after them)
    # the released function the reference tester (tests/reference/) compares this loss with, as
    # "owner/repo@commit:path"; "" when there is none
    reference: str = ""
    origin: str = ""  # the file that registered the loss
    source_hash: str = ""  # sha256 (16 hex) of a plugin's file; "" for built-ins (part of job ids)
    # a built-in's formula version (part of job ids when > 1): raise it when a correction changes the loss's
    # numbers, so finished records of the old formula are not reused; plugins are told apart by source_hash
    version: int = 1

    @property
    def builtin(self) -> bool:
        """Whether the loss ships with spmlbench."""
        return not self.source_hash

    def resolve(self, what: str) -> type | None:
        """The class for ``batched``, ``fused`` or ``single`` (importing a ``"module:Class"`` string)."""
        ref = getattr(self, what)
        if ref is None or isinstance(ref, type):
            return ref
        module, _, attr = ref.partition(":")
        __import__(module)
        return getattr(sys.modules[module], attr)


class LossRegistry(Registry[LossDef]):
    """Registered losses, listed by ``order`` then registration order; the first lookup imports every module
    of ``builtins`` (each registers its loss), then composes the methods the heads declare
    (:mod:`spmlbench.losses.methods`), each registered here under its name too."""

    def __init__(self, kind: str, builtins: str | None = None, methods: str | None = None) -> None:
        super().__init__(kind)
        self._builtins = builtins
        self._methods = methods  # the module composing the heads' methods (``compose_methods``, ``compose_named``)
        self._ready = builtins is None
        self._loading = False
        self._lock = threading.RLock()
        self._as_registered: dict[str, LossDef] = {}  # each loss as its own file registered it
        self._unlisted: set[str] = set()  # methods composed on first use (``<head>_<loss>``)

    @property
    def loaded(self) -> bool:
        """Whether the built-in losses are registered (their modules imported, torch with them)."""
        return self._ready

    def ensure_loaded(self) -> None:
        """Import every built-in loss module once (sorted by name, ``_*`` helpers left to their users), then
        compose the heads' methods."""
        if self._ready or self._builtins is None:
            return
        with self._lock:
            if self._ready or self._loading:  # done by another thread, or a built-in's import looking up
                return
            self._loading = True
            try:
                package = importlib.import_module(self._builtins)
                for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                    if not mod.name.startswith("_"):
                        importlib.import_module(f"{self._builtins}.{mod.name}")
                if self._methods is not None:
                    importlib.import_module(self._methods).compose_methods()
                self._ready = True
            finally:
                self._loading = False

    def add_def(self, definition: LossDef) -> None:
        """Register ``definition``; the same loss registered again from the same file replaces itself."""
        if not definition.builtin:
            self.ensure_loaded()  # a plugin's name is checked against the built-ins
        old = self._entries.get(definition.name)
        if old is not None:
            if old.origin != definition.origin:
                raise ConfigError(f"loss {definition.name!r} from {definition.origin}: that name is already "
                                  f"registered by {old.origin}; give the new loss another name")
            del self._entries[definition.name]
        self._entries[definition.name] = definition
        self._as_registered[definition.name] = definition

    def add_method(self, definition: LossDef, listed: bool = True) -> None:
        """Register a method's loss (its name may be its loss's: that loss trained with its paper's head);
        ``listed=False``: a ``<head>_<loss>`` composed on first use, which lookups find and listings leave out
        (so that what is listed does not depend on what a process looked up)."""
        old = self._entries.get(definition.name)
        own = self._as_registered.get(definition.name)
        if old is not None and old is not own and old.origin != definition.origin:
            raise ConfigError(f"method {definition.name!r} from {definition.origin}: that name is already "
                              f"registered by {old.origin}; give the new method another name")
        if own is not None and own.formula is not definition.formula:
            raise ConfigError(f"method {definition.name!r} from {definition.origin}: a loss of that name is "
                              f"registered by {own.origin}; give the method another name")
        self._entries.pop(definition.name, None)
        self._entries[definition.name] = definition
        if listed:
            self._unlisted.discard(definition.name)
        else:
            self._unlisted.add(definition.name)

    def forget_composed(self) -> None:
        """Drop the ``<head>_<loss>`` methods composed on first use (a plugin file loaded again may have changed
        their head or loss: the next lookup composes them anew, with the new source hash)."""
        for name in self._unlisted:
            self._entries.pop(name, None)
        self._unlisted.clear()

    def get(self, name: str) -> LossDef:
        """The loss or method ``name``; ``<head>_<loss>`` composes that head with that loss on first use; an
        unknown name raises ConfigError listing the known ones."""
        self.ensure_loaded()
        if name not in self._entries and self._methods is not None:
            importlib.import_module(self._methods).compose_named(name)
        return super().get(name)

    def is_registered_loss(self, name: str) -> bool:
        """Whether a loss file registered ``name`` (a loss, not only a method)."""
        return name in self._as_registered

    def as_registered(self, name: str) -> LossDef:
        """Loss ``name`` as its own file registered it (before any method composed it with a head)."""
        if name not in self._as_registered:
            self.get(name)  # ConfigError listing the known names
            raise ConfigError(f"loss {name!r} is a method, not a loss; compose a head with its loss instead")
        return self._as_registered[name]

    def names(self) -> list[str]:
        """Registered names: built-ins in the canonical order, then plugins as registered."""
        self.ensure_loaded()
        seq = {n: i for i, n in enumerate(self._entries)}
        listed = [n for n in self._entries if n not in self._unlisted]
        return sorted(listed, key=lambda n: (self._entries[n].order, seq[n]))

    def __contains__(self, name: object) -> bool:
        self.ensure_loaded()
        return super().__contains__(name)

    def __len__(self) -> int:
        self.ensure_loaded()
        return super().__len__()

    def __iter__(self) -> Any:
        return iter(self.names())


LOSSES = LossRegistry("loss", builtins=BUILTIN_PACKAGE, methods="spmlbench.losses.methods")


def register_loss(name: str, *, params: type[HParams], formula: Formula | None = None, title: str = "",
                  paper: str = "", year: int = 0, citation: str = "", **flags: Any) -> Any:
    """Register loss ``name``: ``register_loss(name, params=P, formula=f, title=..., ...)``, or as a
    decorator on the formula (``@register_loss(name, params=P, ...)``). ``flags``: the optional
    :class:`LossDef` fields (``stateful``, ``scheduled``, ``batched``, ``fused``, ``vectorize``, ...).
    """
    def add(fn: Formula) -> Formula:
        _register(name, params, fn, title, paper, year, citation, flags)
        return fn

    if formula is None:
        return add
    return add(formula)


def _register(name: str, params: Any, formula: Any, title: str, paper: str, year: int, citation: str,
              flags: dict[str, Any]) -> None:
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    caller = frame.f_globals.get("__file__", "?")  # the module calling register_loss
    origin, source_hash = code_origin(formula) if callable(formula) else (str(caller), "")
    if not name.isidentifier() or name != name.lower():
        raise ConfigError(f"{origin}: loss name {name!r}: must be a lowercase identifier, e.g. 'my_loss'")
    from spmlbench.heads import method_of

    comp = method_of(name)
    if comp.loss != name:  # a method's name (``boostlu_ll_r``) or ``<head>_<loss>``
        raise ConfigError(f"{origin}: loss name {name!r} is method {name!r} (head {comp.head.name!r} with loss "
                          f"{comp.loss!r}); give the loss a name that does not start with a head's name")
    if not callable(formula):
        raise ConfigError(f"{origin}: loss {name!r} has no formula; pass formula=<function (hp, logits, "
                          "observed) -> per-entry loss> or use @register_loss as a decorator")
    if not (isinstance(params, type) and issubclass(params, HParams) and dataclasses.is_dataclass(params)):
        raise ConfigError(f"{origin}: loss {name!r}: params must be a frozen dataclass subclassing "
                          "spmlbench.losses.HParams")
    if params.loss and params.loss != name:
        raise ConfigError(f"{origin}: loss {name!r}: its params class {params.__name__} says loss = "
                          f"{params.loss!r}; set loss = {name!r} there")
    params.loss = name  # type: ignore[misc]
    unknown = set(flags) - {f.name for f in dataclasses.fields(LossDef)}
    if unknown:
        raise ConfigError(f"{origin}: loss {name!r}: unknown option(s) {sorted(unknown)}")
    version = flags.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{origin}: loss {name!r}: version={version!r}; use a whole number >= 1 (raise it when "
                          "the formula changes)")
    if flags.get("vectorize", "broadcast") not in VECTORIZE:
        raise ConfigError(f"{origin}: loss {name!r}: vectorize={flags['vectorize']!r}; use one of {VECTORIZE}")
    try:
        params()
    except ConfigError as exc:
        required = [f.name for f in dataclasses.fields(params) if f.default is None]  # given per dataset or by the user
        if not any(str(exc).startswith(f"{name}.{field}=None:") for field in required):
            raise ConfigError(f"{origin}: loss {name!r}: invalid default hyperparameters: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{origin}: loss {name!r}: every hyperparameter needs a default ({exc})") from None
    LOSSES.add_def(LossDef(name=name, params=params, formula=formula, title=title or name, paper=paper,
                           year=int(year), citation=citation, origin=origin, source_hash=source_hash,
                           **flags))
