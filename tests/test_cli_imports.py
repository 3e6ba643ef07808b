"""``spmlbench --help`` stays light: no torch, pandas or numpy behind the help screens, and the library
constants the CLI copies for them (spmlbench/cli/help.py) equal their sources."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "pandas", "numpy", "scipy", "sklearn", "matplotlib")

PROBE = """
import sys
from spmlbench.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("argv, heavy", [(["--help"], HEAVY), (["run", "--help"], HEAVY), (["report", "--help"], HEAVY),
                                         (["pseudo-labels", "--help"], HEAVY), (["cite", "gr,an"], ("torch",))])
def test_help_screens_import_no_heavy_library(argv: list[str], heavy: tuple[str, ...]) -> None:
    res = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=heavy)], capture_output=True,
                         text=True, timeout=120)
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("HEAVY"))
    assert line == "HEAVY []", (argv, line)
    assert "Usage" in res.stdout or "@inproceedings" in res.stdout


def test_the_copied_constants_equal_the_library_ones() -> None:
    from spmlbench.cli import help as h
    from spmlbench.data.protocol import PROTOCOL_SEED
    from spmlbench.experiments.jobs import MODES
    from spmlbench.experiments.plan import DEFAULT_DATASET, DEFAULT_SEEDS
    from spmlbench.experiments.recipes import LINEAR_RECIPES, SELECT_RULES
    from spmlbench.report.render import FORMATS

    assert h.REPORT_FORMATS == tuple(FORMATS)
    assert h.RUN_MODES == tuple(MODES)
    assert (h.DEFAULT_DATASET, tuple(h.DEFAULT_SEEDS)) == (DEFAULT_DATASET, tuple(DEFAULT_SEEDS))
    assert (h.LINEAR_RECIPES, h.SELECT_RULES) == (tuple(LINEAR_RECIPES), tuple(SELECT_RULES))
    assert h.PROTOCOL_SEED == PROTOCOL_SEED == 1200
