"""Command-line interface: a thin layer over the library (each command in its own module)."""

from __future__ import annotations

import os
import sys

from spmlbench.cli.app import app, err_console
from spmlbench.errors import SpmlError

# Importing a command module registers its commands on ``app``.
from spmlbench.cli import losses_cmd  # noqa: F401,E402
from spmlbench.cli import data_cmd  # noqa: F401,E402
from spmlbench.cli import features_cmd  # noqa: F401,E402
from spmlbench.cli import run_cmd  # noqa: F401,E402
from spmlbench.cli import report_cmd  # noqa: F401,E402
from spmlbench.cli import manifest_cmd  # noqa: F401,E402


PIPE_COLUMNS = 160  # output width when stdout is a file or pipe and COLUMNS is unset


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``spmlbench``: usage errors exit 2 (Typer); SpmlError -> one line on stderr, exit 2.

    Tables sent to a file or pipe (``spmlbench report > report.txt``) would be cut to rich's
    80-column default; unless ``COLUMNS`` is set, a non-terminal stdout gets ``PIPE_COLUMNS``.
    """
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        os.environ["COLUMNS"] = str(PIPE_COLUMNS)
    try:
        app(args=argv, prog_name="spmlbench")
    except SpmlError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; finished work is kept, re-run the same command to resume")
        sys.exit(130)
