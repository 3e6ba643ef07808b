"""``spmlbench losses``: every registered loss with its paper, defaults and whether it keeps state."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from spmlbench.cli.app import app, console
from spmlbench.cli.help import HELPERS
from spmlbench.cli.parse import load_plugin_options

if TYPE_CHECKING:
    from spmlbench.losses.cards import LossCard

# Switches and the log epsilon are listed by --json but left out of the table's short column.
_HIDDEN_IN_TABLE = {"eps", "use_k", "use_v", "schedule", "lag", "linear_init"}


def _key_hparams(card: LossCard, dataset: str | None) -> str:
    from spmlbench.hparams import fmt

    shown: dict[str, Any] = dict(card.defaults)
    resolved = None if dataset is None else card.resolved_for(dataset)
    if resolved is not None:
        shown.update(resolved)
    parts = []
    for key, value in shown.items():
        if key in _HIDDEN_IN_TABLE:
            continue
        per_ds = {ds: t[key] for ds, t in card.per_dataset.items() if key in t}
        if value is None or (per_ds and dataset is None):
            text = ", ".join(f"{ds} {fmt(v)}" for ds, v in per_ds.items())
            other = "required" if value is None else fmt(value)
            parts.append(f"{key}=per dataset ({text}; else {other})")
        else:
            parts.append(f"{key}={fmt(value)}")
    return "; ".join(parts) or "-"


def _as_json(cards: list[LossCard], dataset: str | None) -> list[dict[str, Any]]:
    rows = []
    for card in cards:
        resolved = None if dataset is None else card.resolved_for(dataset)
        rows.append({"name": card.name, "title": card.title, "paper": card.paper, "year": card.year,
                     "citation": card.citation, "defaults": card.defaults if resolved is None else resolved,
                     "per_dataset": card.per_dataset, "stateful": card.stateful, "scheduled": card.scheduled,
                     "uses_clean_labels": card.uses_clean_labels, "origin": card.origin, "fused": card.fused,
                     "pseudo_labels": card.pseudo, "source": card.source(dataset) if dataset else ""})
    return rows


@app.command("losses", rich_help_panel=HELPERS)
def losses(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON instead of a table."),
    dataset: str = typer.Option(None, "--dataset", help="Show defaults resolved for this dataset (voc, coco, nuswide, cub)."),
    check: list[str] = typer.Option(None, "--check", metavar="<loss.param=value>",
                                    help="Validate hyperparameter overrides as --set takes them (exit 2 if invalid)."),
    plugin: list[str] = typer.Option([], "--plugin", metavar="<file.py|module>",
                                     help="Also list the losses of this plugin file or module (repeatable)."),
) -> None:
    """List every loss: registry name, paper, year, key hyperparameters with defaults, stateful or not."""
    from spmlbench.losses.cards import listed_cards

    load_plugin_options(plugin)  # plugins (and entry points) load the registry: their cards come from it
    if check:
        from spmlbench.losses import check_override, fmt

        for text in check:
            hp = check_override(text)  # ConfigError -> one line, exit 2 (cli.main)
            console.print(f"{text}: ok ({hp.loss}: {', '.join(f'{k}={fmt(v)}' for k, v in hp.as_dict().items())})",
                          markup=False, highlight=False, soft_wrap=True)
        return
    cards = listed_cards()
    if as_json:
        typer.echo(json.dumps(_as_json(cards, dataset), indent=2))
        return
    table = Table(title="spmlbench losses" + (f" (defaults for {dataset})" if dataset else ""))
    for col in ("name", "paper", "year", "key hyperparameters (defaults)", "stateful"):
        table.add_column(col, overflow="fold")
    notes = []
    for card in cards:
        name = card.name
        paper = card.paper if not card.origin or card.origin.startswith("spmlbench/") else f"{card.paper} (plugin)"
        table.add_row(name, paper, str(card.year or "-"), _key_hparams(card, dataset),
                      "yes" if card.stateful else "no")
        if dataset and card.source(dataset):
            notes.append(f"{name} on {dataset}: {card.source(dataset)}")
        if not card.origin.startswith("spmlbench/"):
            notes.append(f"{name}: defined in {card.origin}")
        if card.pseudo:
            notes.append(f"{name}: needs the clip extra and 'spmlbench pseudo-labels DATASET --source {card.pseudo}' "
                         "(citations: --json)")
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print("Override with --set LOSS.PARAM=VALUE; validate with spmlbench losses --check LOSS.PARAM=VALUE.")
