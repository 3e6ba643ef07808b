"""docs/cli.md: every command's ``--help`` screen as a new user sees it.

Regenerate after changing an option: ``python -m spmlbench.cli.help_doc > docs/cli.md``
(tests/test_cli_help.py fails while the file and the code disagree).
"""

from __future__ import annotations

import os
import sys

WIDTH = 110  # columns of the captured screens

INTRO = """# Command-line reference

`spmlbench --help` and each command's `--help`, captured at {width} columns. Options are grouped in
panels (run: Selection, Training, End to end, Output, Scale-out); `<a|b>` lists the allowed values,
`[default: x]` is the value used when the option is not given (`(text)`: a default that depends on
other settings), and flags take no value. Regenerate with
`python -m spmlbench.cli.help_doc > docs/cli.md`.
"""


def command_names() -> list[str]:
    """The commands in the order ``spmlbench --help`` lists them."""
    import typer

    from spmlbench.cli import app

    group = typer.main.get_command(app)
    return list(group.list_commands(typer.Context(group)))


def help_text(args: list[str], width: int = WIDTH) -> str:
    """The help screen of ``spmlbench <args> --help`` at ``width`` columns, trailing spaces stripped."""
    from typer.testing import CliRunner

    from spmlbench.cli import app

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        result = CliRunner().invoke(app, [*args, "--help"], prog_name="spmlbench", terminal_width=width)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    lines = [line.rstrip() for line in result.output.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines).rstrip() + "\n"


def help_doc(width: int = WIDTH) -> str:
    """The whole of docs/cli.md."""
    out = [INTRO.format(width=width)]
    for args in [[], *[[name] for name in command_names()]]:
        title = " ".join(["spmlbench", *args, "--help"])
        out += [f"## `{title}`", "", "```text", help_text(args, width).rstrip("\n"), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(help_doc())
