"""The package's shape, checked: the import layers (import-linter's contract in pyproject.toml), no import
cycles between modules, no module over 400 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def test_import_layers_contract_is_kept() -> None:
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_no_import_cycles_between_modules() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("spmlbench")
    cycles = set()
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(module + "."):
                continue  # a package's __init__ importing its own submodules
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain and not module.startswith(imported + "."):
                cycles.add(" -> ".join((module, *chain)))
    assert not cycles, "\n".join(sorted(cycles))


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "spmlbench").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_private_module_imported_from_another_package() -> None:
    """A module named ``_x`` is its package's own: no other package of spmlbench imports it."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("spmlbench")
    bad = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            private = [i for i, part in enumerate(imported.split(".")) if part.startswith("_")]
            if private:
                owner = ".".join(imported.split(".")[:private[0]])  # the package holding the private module
                if not (module == owner or module.startswith(owner + ".")):
                    bad.append(f"{module} -> {imported}")
    assert not bad, "\n".join(bad)
