"""Command-line interface: a thin layer over the library (each command in its own module)."""

from __future__ import annotations

import os
import signal
import sys

from spmlbench.cli.app import app, err_console
from spmlbench.cli.signals import Interrupted, interrupts_as_exceptions
from spmlbench.errors import SpmlError, os_error_message

# Importing a command module registers its commands on ``app``.
from spmlbench.cli import losses_cmd  # noqa: F401,E402
from spmlbench.cli import data_cmd  # noqa: F401,E402
from spmlbench.cli import features_cmd  # noqa: F401,E402
from spmlbench.cli import pseudo_cmd  # noqa: F401,E402
from spmlbench.cli import run_cmd  # noqa: F401,E402
from spmlbench.cli import report_cmd  # noqa: F401,E402
from spmlbench.cli import manifest_cmd  # noqa: F401,E402
from spmlbench.cli import cite_cmd  # noqa: F401,E402


PIPE_COLUMNS = 160  # output width when stdout is a file or pipe and COLUMNS is unset


RESUME = "finished work is kept, re-run the same command to resume"


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``spmlbench``: usage errors exit 2 (Typer); SpmlError or an environment error
    (OSError: read-only, full, a file where a folder belongs) -> one line on stderr, exit 2;
    Ctrl-C / SIGTERM -> cleanup (workers stopped, locks released), the resume hint, exit 130 / 143.

    Tables sent to a file or pipe (``spmlbench report > report.txt``) would be cut to rich's
    80-column default; unless ``COLUMNS`` is set, a non-terminal stdout gets ``PIPE_COLUMNS``.
    """
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        os.environ["COLUMNS"] = str(PIPE_COLUMNS)
    try:
        with interrupts_as_exceptions():
            app(args=argv, prog_name="spmlbench")
    except SpmlError as exc:
        _fail(f"error: {exc}", exc.exit_code)
    except OSError as exc:
        _fail(f"error: {os_error_message(exc)}", 2)
    except Interrupted as exc:
        _fail(f"{'interrupted' if exc.signum == signal.SIGINT else 'terminated'}; {RESUME}", exc.exit_code)
    except KeyboardInterrupt:
        _fail(f"interrupted; {RESUME}", 130)


def _fail(line: str, code: int) -> None:
    err_console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
    sys.exit(code)
