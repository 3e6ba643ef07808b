"""A researcher's own losses and heads, without forking: plugin files, importable modules and entry points.

``spmlbench run --losses gr,an,mine --plugin my_losses.py`` imports ``my_losses.py`` (a file path or an
importable module name), whose ``register_loss`` calls add its losses to the registry, and whose
``register_head`` calls add heads (``--losses myhead_an``: any loss on that head; docs/adding-a-method.md).
Installed packages register through the entry-point group ``spmlbench.losses`` (each entry point names a module
to import).

A plugin file travels as its source text (:class:`PluginSource`) to the worker processes and Ray tasks
that train its losses or its heads' methods (:func:`install`), and its sha256 is part of the job id of every
job of them, so an edited plugin re-runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import linecache
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path

from spmlbench.errors import ConfigError
from spmlbench.hparams import raising_line
from spmlbench.losses.registry import LOSSES
from spmlbench.registry import PLUGIN_MARK, plugin_of

ENTRY_POINT_GROUP = "spmlbench.losses"


@dataclasses.dataclass(frozen=True)
class PluginSource:
    """One plugin file: where it came from, its text and its sha256 (16 hex characters)."""

    path: str
    text: str
    sha: str

    @property
    def module(self) -> str:
        """The module name it is imported under (one per file and version)."""
        stem = "".join(ch if ch.isalnum() else "_" for ch in Path(self.path).stem)
        return f"spmlbench_plugin_{stem}_{self.sha}"


def source_of(path: str | Path) -> PluginSource:
    """Read plugin file ``path`` (ConfigError naming the file when it cannot be read)."""
    p = Path(path).expanduser().resolve()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the plugin ({exc.strerror or exc}); pass an existing .py file "
                          "or an importable module name") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the plugin is not UTF-8 text; save it as UTF-8") from None
    return PluginSource(str(p), text, hashlib.sha256(text.encode()).hexdigest()[:16])


def install(source: PluginSource) -> list[str]:
    """Import ``source`` (once per version) and return the names of the losses it registered."""
    if source.module in sys.modules:
        known = [n for n in LOSSES.names() if LOSSES.get(n).source_hash == source.sha]
        if known:
            return known
    before = set(LOSSES.names())
    module = types.ModuleType(source.module)
    module.__file__ = source.path
    setattr(module, PLUGIN_MARK, source)
    linecache.cache[source.path] = (len(source.text), None, source.text.splitlines(True), source.path)
    try:
        code = compile(source.text, source.path, "exec")
    except SyntaxError as exc:
        raise ConfigError(f"{source.path}:{exc.lineno}: the plugin does not compile ({exc.msg}); fix that line") from None
    sys.modules[source.module] = module
    try:
        exec(code, module.__dict__)
    except ConfigError:
        del sys.modules[source.module]
        raise
    except Exception as exc:  # noqa: BLE001 - any error in a researcher's file becomes one line
        del sys.modules[source.module]
        line = _plugin_line(exc, source.path)
        raise ConfigError(f"{source.path}:{line}: import error in the plugin: {type(exc).__name__}: {exc}; "
                          "fix the plugin") from None
    LOSSES.forget_composed()
    names = [n for n in LOSSES.names() if n not in before or LOSSES.get(n).origin == source.path]
    if not names + _new_heads(source.path):
        raise ConfigError(f"{source.path}: the plugin registered no loss and no head; call "
                          "spmlbench.losses.register_loss(...) in it (see docs/adding-a-loss.md), or "
                          "spmlbench.heads.register_head(...) (docs/adding-a-method.md)")
    return names


def _new_heads(origin: str) -> list[str]:
    """The heads registered from file ``origin``; the methods they declare are composed (when the losses are
    already loaded: else their first lookup composes every head's)."""
    from spmlbench.heads import HEADS  # the heads import torch: a listing from the cached cards does not

    heads = [HEADS.get(n) for n in HEADS.names() if HEADS.get(n).origin == origin]
    if heads and LOSSES.loaded:
        from spmlbench.losses.methods import compose_methods

        compose_methods(heads)
    return [h.name for h in heads]


def _plugin_line(exc: BaseException, path: str) -> int | str:
    """The last line of ``path`` in the traceback of ``exc`` (``?`` when the file is not in it)."""
    return raising_line(exc, path) or "?"


def load_plugin(spec: str) -> list[str]:
    """Import a plugin: a ``.py`` file path, or an importable module name; returns its loss names."""
    if spec.endswith(".py") or Path(spec).expanduser().is_file():
        return install(source_of(spec))
    missing = ConfigError(f"--plugin {spec}: no such file or importable module; pass a .py file path or the "
                          "name of an installed module")
    if not all(part.isidentifier() for part in spec.split(".")):
        raise missing  # '../x', 'a/b': a path that is not there, not a module name (a relative-import TypeError, before)
    before = set(LOSSES.names())
    try:
        module = importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise missing from None
        raise ConfigError(f"--plugin {spec}: import error in the plugin: {exc}; install what it needs") from None
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        where = getattr(sys.modules.get(spec), "__file__", spec) or spec
        raise ConfigError(f"{where}:{_plugin_line(exc, str(where))}: import error in the plugin: "
                          f"{type(exc).__name__}: {exc}; fix the plugin") from None
    file = str(Path(module.__file__).resolve()) if getattr(module, "__file__", None) else spec
    names = [n for n in LOSSES.names() if n not in before or LOSSES.get(n).origin == file]
    if not names + _new_heads(file):  # '--plugin os' was accepted silently
        raise ConfigError(f"--plugin {spec}: the module registered no loss and no head; call "
                          "spmlbench.losses.register_loss(...) or spmlbench.heads.register_head(...) in it (see "
                          "docs/adding-a-loss.md), or drop the --plugin")
    return names


def load_entry_points() -> list[str]:
    """Import every module of the ``spmlbench.losses`` entry-point group; returns the loss names added."""
    names: list[str] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        before = set(LOSSES.names())
        try:
            ep.load()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}): import error: "
                              f"{type(exc).__name__}: {exc}; fix or uninstall that package") from None
        names += [n for n in LOSSES.names() if n not in before]
    return names


def load_plugins(specs: Sequence[str] = (), entry_points: bool = True) -> list[str]:
    """Entry-point plugins (when ``entry_points``), then each of ``specs``; the loss names they registered."""
    names = load_entry_points() if entry_points else []
    for spec in specs:
        names += [n for n in load_plugin(spec) if n not in names]
    return names


def sources_for(losses: Iterable[str]) -> list[PluginSource]:
    """The plugin files that define ``losses`` (method names) or their heads (built-ins and installed modules need
    none), for workers."""
    from spmlbench.heads import method_of

    installed = {(s.path, s.sha): s for s in (plugin_of(m) for m in list(sys.modules.values()))
                 if isinstance(s, PluginSource)}
    out: dict[str, PluginSource] = {}
    for name in losses:
        loss, head = LOSSES.get(name), method_of(name).head
        for source in (plugin_of(loss.formula), installed.get((head.origin, head.source_hash))):
            if isinstance(source, PluginSource):
                out[source.path] = source
    return list(out.values())


def install_all(sources: Iterable[PluginSource]) -> None:
    """Install plugin files shipped from the caller (a worker process or a Ray task)."""
    for source in sources:
        install(source)
