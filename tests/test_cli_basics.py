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
    out = subprocess.run([sys.executable, "-m", "spmlbench", "version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch 2.14.1" in out.stdout
