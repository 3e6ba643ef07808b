"""CI (.ci/run) installs as README.md says and runs every test, as README.md says CI does."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_every_test_with_the_readme_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'pytest -q -m "slow or not slow"' in ci  # a later -m overrides addopts' 'not slow'
    assert 'pytest -m "slow or not slow"' in readme and "as CI runs it" in readme
    install = re.search(r'^pip install -e "(\.\[[a-z,]+\])"$', ci, flags=re.M)
    assert install and f'pip install -e "{install.group(1)}"' in readme


def test_default_run_leaves_slow_tests_out_and_every_test_has_a_limit() -> None:
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    assert "-m 'not slow'" in opts["addopts"]
    assert 60 <= int(opts["timeout"]) <= 900


def test_torch_is_a_range_not_a_pin() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"torch(vision)?\b", d)]
    assert sorted(torch) == ["torch>=2.13,<3", "torchvision>=0.28,<1"]
