"""``spmlbench cite``: the BibTeX of the methods in a table (or those named) and of the suite."""

from __future__ import annotations

from typing import Optional

import typer

from spmlbench.cli.app import app
from spmlbench.cli.help import HELPERS


@app.command(rich_help_panel=HELPERS)
def cite(
    losses: Optional[list[str]] = typer.Argument(None, help="Loss names (comma lists allowed); default: every "
                                                "built-in method.", metavar="LOSS,...", show_default=False),
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="Cite every method of this experiment "
                                             "(table1, ablation-gr, ... or a .toml path)."),
    plugin: list[str] = typer.Option([], "--plugin", metavar="<file.py|module>",
                                     help="Your own losses: cited from their register_loss(citation=...) text."),
    suite: bool = typer.Option(True, "--suite/--no-suite", help="Also print the entry of spmlbench itself."),
) -> None:
    """Print the BibTeX of each method (each paper once) and of spmlbench, ready for a .bib file."""
    from spmlbench.cli.parse import load_plugin_options
    from spmlbench.data.citations import bibtex, cited_losses

    names = [n.strip() for text in (losses or []) for n in text.split(",") if n.strip()]
    if experiment is not None:
        from spmlbench.experiments.spec import load_experiment

        exp = load_experiment(experiment)
        names += [loss for group in exp.groups for loss in group.losses]
    if not names and experiment is None:
        names = cited_losses()
    added = load_plugin_options(plugin) if plugin else []
    extra: dict[str, str] = {}
    compositions: dict[str, tuple[str, str]] = {}
    unknown = [n for n in dict.fromkeys(names + added) if n not in cited_losses()]
    if unknown:
        from spmlbench.heads import method_of
        from spmlbench.losses import LOSSES, loss_info

        for name in unknown:
            LOSSES.get(name)  # ConfigError naming the known losses
            comp = method_of(name)
            if comp.loss != name:  # <head>_<loss>: the head's papers, then the loss's
                compositions[name] = (comp.head.name, comp.loss)
                extra[comp.head.name] = comp.head.citation or comp.head.title
                if comp.loss not in cited_losses():
                    extra[comp.loss] = loss_info(comp.loss).citation
            else:
                extra[name] = loss_info(name).citation
    for entry in bibtex(list(dict.fromkeys(names + added)), extra, suite=suite, compositions=compositions):
        typer.echo(entry + "\n")
