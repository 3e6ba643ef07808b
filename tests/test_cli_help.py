"""Help screens: commands in a new user's order, options in panels, flags without a value label,
allowed values and defaults visible; docs/cli.md lists every option of the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spmlbench.cli.help_doc import command_names, help_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

RUN_PANELS = {
    "Selection": ["--datasets", "--losses", "--plugin", "--seeds", "--mode", "--backbone", "--experiment"],
    "Training": ["--epochs", "--batch-size", "--lr", "--recipe", "--select", "--lr-grid", "--batch-grid", "--val",
                 "--early-stop", "--set", "--grid", "--device",
                 "--reference-loop"],
    "End to end": ["--exact", "--workers", "--image-size", "--weights", "--lockstep", "--keep-checkpoints"],
    "Output": ["--out", "--force", "--verify", "--home", "--dry-run"],
    "Scale-out": ["--processes", "--executor", "--address", "--gpus-per-job", "--cpus-per-job"],
}


def panels(text: str) -> dict[str, str]:
    """Panel title -> the panel's text, in screen order."""
    out: dict[str, str] = {}
    for m in re.finditer(r"╭─ (.+?) ─+╮\n(.*?)╰", text, flags=re.S):
        out[m.group(1)] = m.group(2)
    return out


def option_line(text: str, flag: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"│ {re.escape(flag)}\b", line))


def test_root_help_lists_commands_in_a_new_users_order() -> None:
    text = help_text([])
    got = panels(text)
    assert list(got) == ["Options", "Pipeline (in the order a run needs them)", "Helpers"]
    pipeline = re.findall(r"│ (\S+)\s{2,}", got["Pipeline (in the order a run needs them)"])
    assert pipeline == ["prepare", "features", "pseudo-labels", "run", "report"]
    assert command_names()[:8] == ["prepare", "features", "pseudo-labels", "run", "report", "datasets", "losses", "cite"]
    assert "version" in got["Helpers"] and "pin-zenodo" in got["Helpers"] and "cite" in got["Helpers"]


def test_run_help_panels_in_order_with_their_options() -> None:
    text = help_text(["run"], width=160)
    got = panels(text)
    assert list(got) == [*RUN_PANELS, "Help"]
    for panel, flags in RUN_PANELS.items():
        found = re.findall(r"│ (--[a-z-]+)", got[panel])
        assert found == flags, panel


def test_flags_show_no_value_and_choices_show_values() -> None:
    text = help_text(["run"], width=160)
    assert "<bool>" not in text
    force = option_line(text, "--force")
    assert re.match(r"│ --force\s{2,}re-run jobs", force), force
    assert "--drop-checkpoints" in option_line(text, "--keep-checkpoints")
    assert "<clean|observed>" in option_line(text, "--val") and "[default: clean]" in option_line(text, "--val")
    assert "<linear|e2e|linear-init>" in option_line(text, "--mode")
    assert "<local|ray>" in option_line(text, "--executor") and "[default: local]" in option_line(text, "--executor")
    assert "[default: (digits)]" in option_line(text, "--datasets")  # a None default is still explained
    assert not re.search(r"│ --dataset\b", text)  # the old name is a hidden alias
    assert "[default: (the loss's recipe)]" in option_line(text, "--epochs")


@pytest.mark.parametrize("command", ["", "prepare", "features", "run", "report", "datasets", "losses", "version"])
def test_no_command_shows_a_bool_label(command: str) -> None:
    text = help_text([command] if command else [], width=160)
    assert "<bool>" not in text and "--help" in text


def test_report_format_values_are_the_renderers() -> None:
    from spmlbench.report.render import FORMATS

    line = option_line(help_text(["report"], width=160), "--format")
    assert f"<{'|'.join(FORMATS)}>" in line and "[default: console]" in line


def test_pipeline_commands_have_no_unpaneled_option() -> None:
    for cmd in ("prepare", "features", "run", "report"):
        assert "Options" not in panels(help_text([cmd], width=160)), cmd


def test_docs_cli_md_lists_every_option() -> None:
    """docs/cli.md holds each command's screen; regenerate it (see its header) when an option changes."""
    doc = DOC.read_text()
    for cmd in command_names():
        section = doc.split(f"## `spmlbench {cmd} --help`", 1)
        assert len(section) == 2, f"docs/cli.md lacks {cmd}; run python -m spmlbench.cli.help_doc > docs/cli.md"
        body = section[1].split("\n## ", 1)[0]
        live = set(re.findall(r"│ (--[a-z-]+)", help_text([cmd])))
        assert set(re.findall(r"│ (--[a-z-]+)", body)) == live, (
            f"docs/cli.md is stale for {cmd}; run python -m spmlbench.cli.help_doc > docs/cli.md")
