"""Run a plan: write its manifest, train under the selection rule, record what each cell reports.

The explicit side-effect steps after :func:`spmlbench.experiments.plan.plan_run` (pure) and
:func:`spmlbench.experiments.inputs.ensure_inputs`: the run manifest is written before anything trains (an
interrupted run is listed, its cells not yet selected) and again once the selection is made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spmlbench.experiments.jobs import JobSpec
from spmlbench.experiments.plan import Plan, RunRequest
from spmlbench.experiments.run_manifest import new_manifest, with_selection, write_manifest
from spmlbench.experiments.selection import first_stage, run_selected


def run_plan(plan: Plan, request: RunRequest, out_dir: str | os.PathLike[str],
             run: Callable[[list[JobSpec]], Any], *, command: str = "",
             options: Mapping[str, Any] | None = None) -> tuple[list[Any], list[JobSpec], dict[str, Any]]:
    """Train ``plan`` with ``run`` (a runner: local or Ray) under ``plan.select``; returns the runner's
    summaries (one per stage), the jobs the cells report and the run's manifest (``<out>/runs/<id>.json``)."""
    out = Path(out_dir)
    stage1 = first_stage(plan.jobs, plan.select)
    manifest = new_manifest(plan, request, command=command, options=options, trained=stage1)
    write_manifest(out, manifest)
    summaries, chosen = run_selected(plan.jobs, out, plan.select, run)
    manifest = with_selection(manifest, chosen, [*stage1, *chosen])
    write_manifest(out, manifest)
    return summaries, chosen, manifest
