"""The Typer application object shared by every command module."""

from __future__ import annotations

import typer
from rich.console import Console

from spmlbench.cli.help import HELPERS, HelpGroup

app = typer.Typer(
    name="spmlbench",
    cls=HelpGroup,
    help="Single-positive multi-label learning benchmarks: prepare data, run every loss, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(emoji=False)  # user text (paths, errors) may hold ":x:"-like codes
err_console = Console(stderr=True, emoji=False)


@app.callback()
def root() -> None:
    """Single-positive multi-label learning benchmarks: prepare data, run every loss, report."""


@app.command(rich_help_panel=HELPERS)
def version() -> None:
    """Print the spmlbench, torch and torchvision versions."""
    import torch
    import torchvision

    from spmlbench import __version__

    console.print(f"spmlbench {__version__}  torch {torch.__version__}  torchvision {torchvision.__version__}")
