"""The installed package is whole: a wheel built from the checkout holds every shipped data file
(spmlbench/data_manifests) and works from site-packages, away from the checkout (``pip install .`` or
``pip install git+URL``, not only the editable install the README shows); a copy pip installed from git records
the commit it came from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "spmlbench" / "data_manifests"

# run from the unpacked wheel: every kind of shipped file read, and the provenance of an installed copy
PROBE = """
import sys
from pathlib import Path
import spmlbench
site = Path(sys.argv[1]).resolve()
assert Path(spmlbench.__file__).resolve().is_relative_to(site), spmlbench.__file__
from spmlbench.data.manifest import available_manifests
from spmlbench.experiments.records import git_rev
from spmlbench.experiments.recipes import e2e_recipe
from spmlbench.features.clip import CONFIGS_DIR
from spmlbench.features.pseudo import source_settings
from spmlbench.losses import resolve_hparams
from spmlbench.report.load import load_reference
print("datasets", ",".join(available_manifests()))
print("reference rows", len(load_reference()))
print("gr on voc", resolve_hparams("gr", "voc"))
print("e2e recipe", e2e_recipe("gr", "voc").batch_size)
print("vlpl", sorted(source_settings("vlpl", "voc")))
print("clip configs", len(list(CONFIGS_DIR.glob("*.json"))))
print("git_rev", git_rev())
"""


def _build_wheel(tmp: Path) -> Path:
    """A wheel of a copy of the checkout (pip builds in place: the checkout gets no build/ folder)."""
    src = tmp / "src"
    shutil.copytree(ROOT / "spmlbench", src / "spmlbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    out = tmp / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("spmlbench-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools", minversion="77")  # the build backend (the dev extra installs it)
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_shipped_data_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        packed = {n for n in zf.namelist() if n.startswith("spmlbench/data_manifests/")}
    shipped = {f"spmlbench/{p.relative_to(ROOT / 'spmlbench').as_posix()}" for p in SHIPPED.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert len(shipped) >= 16  # manifests, recipes, loss defaults, citations, experiments, results, clip
    assert packed == shipped


def test_an_installed_copy_reads_its_data_and_plans_a_run(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "project" / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    # the copy lies inside somebody's repository: its revision is not spmlbench's
    subprocess.run(["git", "init", "-q", str(tmp_path / "project")], check=True)
    env = {**os.environ, "PYTHONPATH": str(site), "SPMLBENCH_HOME": str(tmp_path / "home")}
    env.pop("SPMLBENCH_MANIFESTS", None)
    probe = subprocess.run([sys.executable, "-c", PROBE, str(site)], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in probe.stdout.splitlines())
    assert lines["datasets"] == "coco,cub,digits,nuswide,voc"
    assert int(lines["reference"].split()[-1]) > 100
    assert lines["git_rev"] == "unknown"
    assert lines["clip"] == "configs 1"
    plan = subprocess.run([sys.executable, "-m", "spmlbench", "run", "--dry-run", "--experiment", "table1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "Run id table1-" in plan.stdout
    cite = subprocess.run([sys.executable, "-m", "spmlbench", "cite", "gr"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert cite.returncode == 0 and "@" in cite.stdout, cite.stderr[-2000:]


def test_a_copy_installed_from_git_records_its_commit(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="77")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the tests do not run from a git checkout")
    site = tmp_path / "site"
    # what `pip install git+URL` does: clone the committed tree, build the wheel, install it (PEP 610 record)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), f"git+file://{ROOT}"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import spmlbench; from spmlbench.experiments.records import "
                            "git_rev; print(spmlbench.__file__); print(git_rev())"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    where, rev = probe.stdout.split()
    assert Path(where).resolve().is_relative_to(site.resolve())
    assert rev == head.stdout.strip()
