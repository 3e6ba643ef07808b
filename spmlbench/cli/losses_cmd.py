"""``spmlbench losses``: every registered loss with its paper, defaults and whether it keeps state."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from spmlbench.cli.app import app, console
from spmlbench.cli.help import HELPERS
from spmlbench.errors import ConfigError
from spmlbench.cli.parse import load_plugin_options

# Switches and the log epsilon are listed by --json but left out of the table's short column.
_HIDDEN_IN_TABLE = {"eps", "use_k", "use_v", "schedule", "lag", "linear_init"}


def _key_hparams(name: str, dataset: str | None) -> str:
    from spmlbench.losses import fmt, loss_info, resolve_hparams

    info = loss_info(name)
    shown: dict[str, Any] = dict(info.defaults)
    if dataset is not None and _resolvable(name, dataset):
        shown.update(resolve_hparams(name, dataset).as_dict())
    parts = []
    for key, value in shown.items():
        if key in _HIDDEN_IN_TABLE:
            continue
        per_ds = {ds: t[key] for ds, t in info.per_dataset.items() if key in t}
        if value is None or (per_ds and dataset is None):
            text = ", ".join(f"{ds} {fmt(v)}" for ds, v in per_ds.items())
            other = "required" if value is None else fmt(value)
            parts.append(f"{key}=per dataset ({text}; else {other})")
        else:
            parts.append(f"{key}={fmt(value)}")
    return "; ".join(parts) or "-"


def _resolvable(name: str, dataset: str) -> bool:
    from spmlbench.losses import resolve_hparams

    try:
        resolve_hparams(name, dataset)
    except ConfigError:  # a required value without a default for this dataset
        return False
    return True


def _as_json(dataset: str | None) -> list[dict[str, Any]]:
    from spmlbench.losses import defaults_source, list_losses, loss_info, resolve_hparams

    rows = []
    for name in list_losses():
        info = loss_info(name)
        defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in info.defaults.items()}
        if dataset is not None and _resolvable(name, dataset):
            defaults = resolve_hparams(name, dataset).as_dict()
        rows.append({"name": name, "title": info.title, "paper": info.paper, "year": info.year,
                     "citation": info.citation, "defaults": defaults, "per_dataset": info.per_dataset,
                     "stateful": info.stateful, "scheduled": info.scheduled,
                     "uses_clean_labels": info.uses_clean_labels, "origin": info.origin, "fused": info.fused,
                     "pseudo_labels": info.pseudo,
                     "source": defaults_source(name, dataset) if dataset else ""})
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
    from spmlbench.losses import check_override, defaults_source, fmt, list_losses, loss_info

    load_plugin_options(plugin)
    if check:
        for text in check:
            hp = check_override(text)  # ConfigError -> one line, exit 2 (cli.main)
            console.print(f"{text}: ok ({hp.loss}: {', '.join(f'{k}={fmt(v)}' for k, v in hp.as_dict().items())})",
                          markup=False, highlight=False, soft_wrap=True)
        return
    if as_json:
        typer.echo(json.dumps(_as_json(dataset), indent=2))
        return
    table = Table(title="spmlbench losses" + (f" (defaults for {dataset})" if dataset else ""))
    for col in ("name", "paper", "year", "key hyperparameters (defaults)", "stateful"):
        table.add_column(col, overflow="fold")
    notes = []
    for name in list_losses():
        info = loss_info(name)
        paper = info.paper if not info.origin or info.origin.startswith("spmlbench/") else f"{info.paper} (plugin)"
        table.add_row(name, paper, str(info.year or "-"), _key_hparams(name, dataset),
                      "yes" if info.stateful else "no")
        if dataset and defaults_source(name, dataset):
            notes.append(f"{name} on {dataset}: {defaults_source(name, dataset)}")
        if not info.origin.startswith("spmlbench/"):
            notes.append(f"{name}: defined in {info.origin}")
        if info.pseudo:
            notes.append(f"{name}: needs the clip extra and 'spmlbench pseudo-labels DATASET --source {info.pseudo}' "
                         "(citations: --json)")
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print("Override with --set LOSS.PARAM=VALUE; validate with spmlbench losses --check LOSS.PARAM=VALUE.")
