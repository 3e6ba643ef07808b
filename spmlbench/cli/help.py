"""How ``--help`` reads: the help-panel names shared by every command, the command order, allowed values.

Every option names its panel with ``rich_help_panel=`` one of the constants below; options that
take one of a fixed set of values show it with ``metavar=choices(...)``; flags show no value
(:class:`HelpGroup` blanks Typer's ``<bool>`` type label, ``--help`` included).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

# option panels of `run` (and, where they fit, of the other commands)
SELECTION = "Selection"
TRAINING = "Training"
E2E = "End to end"
OUTPUT = "Output"
SCALE_OUT = "Scale-out"
# panels of the other commands
SOURCE = "Source"
PROTOCOL = "Protocol"
COMPUTE = "Compute"
HELP = "Help"
PANEL_ORDER = (SELECTION, SOURCE, PROTOCOL, TRAINING, COMPUTE, E2E, OUTPUT, SCALE_OUT, HELP)
# command panels of `spmlbench --help`
PIPELINE = "Pipeline (in the order a run needs them)"
HELPERS = "Helpers"

HOME_DEFAULT = "$SPMLBENCH_HOME or the platform data dir"  # every --home
# Library constants the help screens show, copied so that ``spmlbench --help`` imports neither torch nor
# pandas (tests/test_cli_imports.py checks each against its source).
REPORT_FORMATS = ("console", "md", "latex", "csv", "html")  # spmlbench.report.render.FORMATS
RUN_MODES = ("linear", "e2e", "linear-init")  # spmlbench.modes.MODES
DEFAULT_DATASET = "digits"  # spmlbench.experiments.plan.DEFAULT_DATASET
DEFAULT_SEEDS = (0, 1, 2)  # spmlbench.experiments.plan.DEFAULT_SEEDS
LINEAR_RECIPES = ("cole", "paper")  # spmlbench.experiments.recipes.LINEAR_RECIPES
SELECT_RULES = ("first-seed", "each-seed", "mean")  # spmlbench.experiments.recipes.SELECT_RULES
PROTOCOL_SEED = 1200  # spmlbench.data.protocol.PROTOCOL_SEED
COMMAND_ORDER = ("prepare", "features", "pseudo-labels", "run", "report", "datasets", "losses", "cite", "runs", "version")  # a new user's path; then the rest


def choices(values: Iterable[Any]) -> str:
    """The metavar of an option taking one of ``values``: ``<a|b|c>`` (Typer's own style for choices)."""
    return "<" + "|".join(str(v) for v in values) + ">"


def plain_flags(params: Iterable[Any]) -> None:
    """Blank the type label of every boolean flag (``--force``, not ``--force <bool>``)."""
    for p in params:
        if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
            p.metavar = ""


def order_panels(cmd: Any, ctx: typer.Context) -> None:
    """Options in :data:`PANEL_ORDER` (stable within a panel); ``--help`` last, in its own panel, once the
    command's options have panels. Display only: click matches options by name, not position."""
    if not any(getattr(p, "rich_help_panel", None) for p in cmd.params):
        return
    help_option = cmd.get_help_option(ctx)
    if help_option is not None:
        help_option.rich_help_panel = HELP
    rank = {name: i for i, name in enumerate(PANEL_ORDER)}
    cmd.params.sort(key=lambda p: rank.get(getattr(p, "rich_help_panel", None) or "", -1))


class HelpGroup(TyperGroup):
    """The ``spmlbench`` group: commands listed in :data:`COMMAND_ORDER` first, flags shown as flags."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        """Commands in a new user's order (prepare, features, run, report), then the rest as registered."""
        names = super().list_commands(ctx)
        first = [n for n in COMMAND_ORDER if n in names]
        return first + [n for n in names if n not in first]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        """The command, its options in panel order and its flags' type label blanked for the help screen."""
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            order_panels(cmd, ctx)
            plain_flags(cmd.get_params(ctx))
        return cmd

    def get_params(self, ctx: typer.Context) -> list[Any]:
        """The group's own options (its ``--help``), flags blanked."""
        params = super().get_params(ctx)
        plain_flags(params)
        return params
