"""The benchmark scripts run: each once on the CPU at a tiny size (a GPU session, which runs them through
benchmarks/gpu_checks.sh, must not be the first to find a crash), and every option gpu_checks.sh passes is one
its script takes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# (script and arguments, a line its output must hold)
RUNS = [
    ("loss_step.py --device cpu --steps 20 --rounds 2", r"^aevlp\s+\d+\.\d\s+\d+\.\d\d$"),
    ("loss_step.py --device cpu --steps 20 --rounds 2 --path fused --losses an,gr,role", r"^total\s+.*\(3 losses"),
    ("linear_sweep.py --device cpu --epochs 1 --ref-steps 20", r"^ratio: \d+\.\dx$"),
    ("linear_sweep.py --select --epochs 1 --seeds 2", r"^stage 1 \(grid, 128 configs x 1 epochs\)"),
    ("ab_sweep.py 1", r"\(\d+ processes, 1 epochs\)$"),
    ("feature_extraction.py --device cpu --images 8 --size 64", r"^cpu\s+ratio\s+\d+\.\d\dx$"),
    ("e2e_throughput.py --device cpu --images 16 --image-size 32", r"^speedup \d+\.\d\dx$"),
    ("e2e_throughput.py --lockstep 2 --device cpu --images 16 --image-size 32 --variants separate,fast",
     r"^input pipeline alone: \d+\.\d images/s"),
    ("e2e_lockstep.py --models 2 --image-size 32 --images 16 --variants separate,fast,lanes --processes 2",
     r"^lanes\s+\d+\.\d"),
]


def _run(command: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, *shlex.split(command)], cwd=BENCH, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("command", "line"), RUNS, ids=[c for c, _ in RUNS])
def test_benchmark_runs_on_the_cpu(command: str, line: str) -> None:
    out = _run(command)
    assert re.search(line, out, flags=re.M), out[-3000:]


@pytest.mark.slow
@pytest.mark.clip
def test_pseudo_stage_runs_on_digits(tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    env = {**os.environ, "SPMLBENCH_HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "spmlbench", "prepare", "digits"], check=True, capture_output=True,
                   env=env, timeout=300)
    out = _run("pseudo_stage.py --images 8 --device cpu", env)
    assert re.search(r"^damp spml-tiny-clip on cpu: 8 images x \d+ views", out, flags=re.M), out


def test_every_option_gpu_checks_passes_is_one_its_script_takes() -> None:
    steps = re.findall(r'^step \S+ \d+ "\$py" (.+)$', (BENCH / "gpu_checks.sh").read_text(), flags=re.M)
    scripts = [s for s in steps if s.startswith("benchmarks/")]
    assert len(scripts) == 6  # loss_step, two linear sweeps, features, e2e throughput, lockstep
    for step in scripts:
        script, *args = shlex.split(step)
        text = (BENCH.parent / script).read_text()
        if "--lockstep" in args:  # e2e_throughput.py hands its arguments to e2e_lockstep.py
            text += (BENCH / "e2e_lockstep.py").read_text()
        for option in (a for a in args if a.startswith("--")):
            assert f'"{option}"' in text, f"gpu_checks.sh passes {option} to {script}, which does not take it"
