"""``spmlbench run --dry-run``: the plan as a person reads it; nothing is written."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from spmlbench.cli.app import console
from spmlbench.experiments.plan import Plan, RunRequest
from spmlbench.experiments.selection import first_stage, planned_stages


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _train_rows(dataset: str, home: str | None) -> int | None:
    """Training rows of ``dataset``: its labels when prepared, else its data manifest's expected count."""
    from spmlbench.data.manifest import load_manifest
    from spmlbench.data.registry import get_adapter
    from spmlbench.data.store import load_labels
    from spmlbench.paths import labels_path

    if labels_path(dataset, home).exists():
        return int((load_labels(dataset, home)["split"] == "train").sum())
    adapter = get_adapter(dataset)
    counts = load_manifest(adapter.manifest).expected_counts if adapter.manifest else {}
    return int(counts["train"]) if "train" in counts else None


def show_plan(plan: Plan, request: RunRequest, out: Path) -> None:
    """Print the jobs, cells, missing inputs and a cost estimate of ``plan``."""
    from spmlbench.experiments.run_manifest import manifest_path, new_manifest

    say = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    jobs = plan.jobs
    trained = first_stage(jobs, plan.select)
    rows = list(dict.fromkeys((c.group, c.row) for c in plan.cells))
    datasets = list(dict.fromkeys(c.dataset for c in plan.cells))
    modes = sorted({j.mode for j in jobs})
    title = f"experiment {plan.experiment}" if plan.experiment else "run"
    rid = new_manifest(plan, request, command="")["run_id"]  # built in memory only
    say(f"Plan ({title}; dry run, nothing written): mode {', '.join(modes)}; datasets {', '.join(datasets)}")
    points = Counter(len(c.jobs) for c in plan.cells)
    seeds = len({c.seed for c in plan.cells})
    say(f"  {_count(len(plan.cells), 'table cell')} ({_count(len(rows), 'row')} x {_count(len(datasets), 'dataset')} x "
        f"{_count(seeds, 'seed')}), "
        f"{_count(len(jobs), 'job')}; (lr, batch) points per cell: "
        + ", ".join(f"{k} ({v} cells)" for k, v in sorted(points.items())))
    planned, stages = planned_stages(jobs, plan.select)
    say(f"  trains {_count(planned, 'job')} ({plan.select}): {stages}")
    epochs = sum(j.epochs for j in trained)
    cost = []
    for ds in datasets:
        n = _train_rows(ds, request.home)
        ds_epochs = sum(j.epochs for j in trained if j.dataset == ds)
        if n is not None:
            cost.append(f"{ds}: {ds_epochs} config-epochs x {n:,} training images = {ds_epochs * n:,} image-passes")
    say(f"  cost (before selection's remaining seeds): {epochs} config-epochs; " + ("; ".join(cost) or "unknown size"))
    if plan.dumps:
        say(f"  prediction dumps: {_count(len(plan.dumps), 'job')}")
    if plan.missing:
        say("Missing inputs:")
        for m in plan.missing:
            tag = " (made by 'spmlbench run', offline)" if m.auto else ""
            say(f"  - {m.message()}{tag}")
    else:
        say("Missing inputs: none")
    if plan.provisional:
        say(f"  job ids are provisional until {', '.join(plan.provisional)} is prepared (its labels resolve some "
            "hyperparameters)")
    say(f"Run id {rid}: its manifest will be {manifest_path(out, rid)}"
        + (" (job ids may change once the data is prepared)" if plan.provisional else ""))
