from __future__ import annotations

import subprocess
import sys


def test_help_lists_commands(cli) -> None:
    res = cli("--help")
    assert res.code == 0
    assert "version" in res.out


def test_unknown_command_exits_2(cli) -> None:
    res = cli("no-such-command")
    assert res.code == 2


def test_console_script_runs() -> None:
    import torch

    out = subprocess.run([sys.executable, "-m", "spmlbench", "version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"torch {torch.__version__}" in out.stdout  # the environment's own torch


def test_tables_sent_to_a_pipe_are_not_cut_to_80_columns() -> None:
    """``spmlbench losses | cat``: with COLUMNS unset, a piped stdout gets 160 columns; COLUMNS wins."""
    import os

    from spmlbench.cli import PIPE_COLUMNS

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "spmlbench", "losses"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    widths = {len(line) for line in out.stdout.splitlines() if line.strip()}
    assert max(widths) == PIPE_COLUMNS and "key hyperparameters (defaults)" in out.stdout  # header on one line
    narrow = subprocess.run([sys.executable, "-m", "spmlbench", "losses"], capture_output=True, text=True,
                            env={**env, "COLUMNS": "100"})
    assert max(len(line) for line in narrow.stdout.splitlines()) == 100
