"""BibTeX of the suite and of every built-in method (``spmlbench/data_manifests/citations.toml``).

``spmlbench cite`` prints them; a method whose name the file does not hold (a plugin loss) is cited
from the text its ``register_loss(citation=...)`` gives, as a ``@misc`` entry.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from spmlbench.paths import shipped
from spmlbench.errors import ConfigError, DataError

CITATIONS_FILE = "citations.toml"


@dataclass(frozen=True)
class Citations:
    """The parsed citations file: the suite's entry, each paper's entry, each loss's paper keys."""

    suite: str
    papers: dict[str, str]
    losses: dict[str, tuple[str, ...]]
    heads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # a head's papers (its methods compose a loss)


@lru_cache(maxsize=4)
def _load(path: str) -> Citations:
    try:
        with open(path, "rb") as fh:
            raw: dict[str, Any] = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{path}: cannot read the citations file ({exc})") from None
    papers = {key: str(entry["bibtex"]).strip() for key, entry in raw.get("papers", {}).items()}
    losses = {name: tuple(keys) for name, keys in raw.get("losses", {}).items()}
    heads = {name: tuple(keys) for name, keys in raw.get("heads", {}).items()}
    for kind, table in (("loss", losses), ("head", heads)):
        for name, keys in table.items():
            for key in keys:
                if key not in papers:
                    raise DataError(f"{path}: {kind} {name!r} cites {key!r}, which has no [papers.{key}] entry")
    return Citations(suite=str(raw["suite"]).strip(), papers=papers, losses=losses, heads=heads)


def load_citations() -> Citations:
    """The citations of ``spmlbench/data_manifests/citations.toml`` (cached)."""
    return _load(str(shipped(CITATIONS_FILE)))


def cited_losses() -> list[str]:
    """The loss names the citations file holds BibTeX for."""
    return list(load_citations().losses)


def misc_entry(name: str, text: str) -> str:
    """A ``@misc`` BibTeX entry for a method known only by its citation text (a plugin loss)."""
    key = re.sub(r"[^A-Za-z0-9_]", "_", name)
    note = text.replace("{", "(").replace("}", ")")
    return "@misc{" + key + ",\n  title = {" + name + "},\n  note  = {" + note + "}\n}"


def bibtex(names: Sequence[str], extra: Mapping[str, str] | None = None, suite: bool = True,
           compositions: Mapping[str, tuple[str, str]] | None = None) -> list[str]:
    """The BibTeX entries to cite for ``names`` (each paper once, in first-cited order), then the suite's.

    ``extra`` maps a name the file does not hold to its citation text (a ``@misc`` entry is made);
    ``compositions`` maps a method the file does not hold to its (head, loss): the head's papers
    (``[heads]``; else its citation text in ``extra`` under the head's name), then the loss's. A name found
    in none raises ConfigError.
    """
    cites = load_citations()
    extra = dict(extra or {})
    out: list[str] = []
    seen: set[str] = set()

    def cite(keys: Sequence[str]) -> None:
        for key in keys:
            if key not in seen:
                seen.add(key)
                out.append(cites.papers[key] if key in cites.papers else misc_entry(key, extra[key]))

    for name in names:
        if name not in cites.losses and name in (compositions or {}):
            head, loss = (compositions or {})[name]
            cite(cites.heads.get(head, (head,) if head in extra else ()))
            name = loss
        if name in cites.losses:
            cite(cites.losses[name])
        elif name in extra:
            cite([name])
        else:
            raise ConfigError(f"{name!r}: no citation known; known losses: {', '.join(cites.losses)} "
                              "(a plugin loss: add --plugin FILE)")
    if suite:
        out.append(cites.suite)
    return out
