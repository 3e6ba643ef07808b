"""``spmlbench run``: every loss under matched seeds on cached features, then the result table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from spmlbench.cli.app import app, console, err_console
from spmlbench.cli.help import (DEFAULT_DATASET, DEFAULT_SEEDS, E2E, LINEAR_RECIPES, OUTPUT, PIPELINE, RUN_MODES,
                                SCALE_OUT, SELECT_RULES, SELECTION, TRAINING, choices)
from spmlbench.cli.parse import _split, load_plugin_options, parse_losses, parse_numbers, parse_seeds
from spmlbench.errors import ConfigError

if TYPE_CHECKING:  # the library is imported inside the command: `spmlbench --help` loads no torch
    from spmlbench.experiments.jobs import JobSpec
    from spmlbench.experiments.runner import RunProgress, RunSummary

DEFAULT_SEEDS_TEXT = ",".join(map(str, DEFAULT_SEEDS))
EXECUTORS = ("local", "ray")


@app.command(rich_help_panel=PIPELINE)
def run(
    ctx: typer.Context,
    datasets: Optional[str] = typer.Option(None, "--datasets", help="comma list of datasets to run on (narrows an experiment)",
                                           metavar="<name,...>", show_default=DEFAULT_DATASET,
                                           rich_help_panel=SELECTION),
    dataset: Optional[str] = typer.Option(None, "--dataset", hidden=True, help="old name of --datasets (one dataset)"),
    losses: str = typer.Option("all", "--losses", help="comma list of loss names, or all", metavar="<all|name,...>",
                               rich_help_panel=SELECTION),
    plugin: list[str] = typer.Option([], "--plugin", help="your own losses or heads: a .py file or module (repeatable)",
                                     metavar="<file.py|module>", rich_help_panel=SELECTION),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma list of seeds", metavar="<int,...>",
                                        show_default=f"{DEFAULT_SEEDS_TEXT} or the experiment's", rich_help_panel=SELECTION),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs for every loss", show_default="the loss's recipe",
                                         rich_help_panel=TRAINING),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="batch size", show_default="the loss's recipe",
                                             rich_help_panel=TRAINING),
    lr: Optional[float] = typer.Option(None, "--lr", help="learning rate (linear, cole: fixes the lr axis of the grid)",
                                       show_default="the grid, or the loss's recipe", rich_help_panel=TRAINING),
    recipe: str = typer.Option("cole", "--recipe", help="linear: cole (Cole et al.'s protocol, (lr, batch) selected on "
                                                        "val) or paper (each paper's budget; not comparable)",
                               metavar=choices(LINEAR_RECIPES), rich_help_panel=TRAINING),
    select: Optional[str] = typer.Option(None, "--select", help="linear, cole: first-seed (grid on the first seed, the "
                                                                  "others at its point), each-seed or mean",
                                         metavar=choices(SELECT_RULES), show_default="first-seed",
                                         rich_help_panel=TRAINING),
    lr_grid: Optional[str] = typer.Option(None, "--lr-grid", help="linear, cole: lr values to select from",
                                          metavar="<float,...>", show_default="1e-2,1e-3,1e-4,1e-5",
                                          rich_help_panel=TRAINING),
    batch_grid: Optional[str] = typer.Option(None, "--batch-grid", help="linear, cole: batch sizes to select from",
                                             metavar="<int,...>", show_default="8,16", rich_help_panel=TRAINING),
    val: str = typer.Option("clean", "--val", help="score val with clean or observed labels",
                            metavar=choices(("clean", "observed")), rich_help_panel=TRAINING),
    early_stop: str = typer.Option("paper", "--early-stop", help="paper (each loss's own rule) or none",
                                   metavar=choices(("paper", "none")), rich_help_panel=TRAINING),
    set_: list[str] = typer.Option([], "--set", help="loss.param=value (repeatable)", metavar="<loss.param=value>",
                                   rich_help_panel=TRAINING),
    grid: list[str] = typer.Option([], "--grid", help="loss.param=v1,v2,... (repeatable, cartesian)",
                                   metavar="<loss.param=v1,v2,...>", rich_help_panel=TRAINING),
    mode: Optional[str] = typer.Option(None, "--mode", help="linear (cached features), e2e or linear-init",
                                       metavar=choices(RUN_MODES), show_default="linear", rich_help_panel=SELECTION),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda", metavar=choices(("auto", "cpu", "cuda")),
                               rich_help_panel=TRAINING),
    out: Path = typer.Option(Path("results"), "--out", help="results folder", rich_help_panel=OUTPUT),
    force: bool = typer.Option(False, "--force", help="re-run jobs that already have a record", rich_help_panel=OUTPUT),
    verify: bool = typer.Option(False, "--verify", help="hash the layer4 map caches whole (default: whole up to 1 GiB, "
                                                         "sampled blocks above)", rich_help_panel=OUTPUT),
    reference_loop: bool = typer.Option(False, "--reference-loop", help="one config at a time (slow reference path)",
                                        rich_help_panel=TRAINING),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="backbone",
                                           show_default="the dataset's features; resnet50 end to end",
                                           rich_help_panel=SELECTION),
    home: Optional[str] = typer.Option(None, "--home", help="data home", show_default="$SPMLBENCH_HOME",
                                       rich_help_panel=OUTPUT),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="a named experiment spec or a .toml path",
                                             rich_help_panel=SELECTION),
    exact: bool = typer.Option(False, "--exact", help="end to end: fp32, deterministic kernels (reproduction)",
                               rich_help_panel=E2E),
    workers: Optional[int] = typer.Option(None, "--workers", help="end to end: image decode workers",
                                          show_default="by device", rich_help_panel=E2E),
    processes: str = typer.Option("auto", "--processes",
                                  help="on the CPU: split linear configs over N processes (auto: one per core for "
                                       "long runs; 1 per task with --executor ray); a number also splits a lockstep "
                                       "group without --exact (each with its share of the threads, which rounds "
                                       "differently)", metavar="<auto|N>", rich_help_panel=SCALE_OUT),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="end to end: input size",
                                             show_default="the backbone's", rich_help_panel=E2E),
    weights: Optional[str] = typer.Option(None, "--weights", help="end to end: backbone weights, default or none",
                                          metavar=choices(("default", "none")), show_default="default",
                                          rich_help_panel=E2E),
    lockstep: bool = typer.Option(True, "--lockstep/--no-lockstep",
                                  help="end to end: jobs sharing a batch order train together on one input pipeline "
                                       "(the numbers of separate runs, bit for bit on the CPU)", rich_help_panel=E2E),
    keep_checkpoints: bool = typer.Option(True, "--keep-checkpoints/--drop-checkpoints",
                                          help="end to end: keep <out>/work/<job> (best and last epoch) after the record",
                                          rich_help_panel=E2E),
    executor: str = typer.Option("local", "--executor", help="local (this process) or ray", metavar=choices(EXECUTORS),
                                 rich_help_panel=SCALE_OUT),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address, auto or HOST:PORT",
                                          metavar="<auto|HOST:PORT>", rich_help_panel=SCALE_OUT),
    gpus_per_job: Optional[float] = typer.Option(None, "--gpus-per-job", help="ray: GPUs per task", show_default="0",
                                                 rich_help_panel=SCALE_OUT),
    cpus_per_job: Optional[float] = typer.Option(None, "--cpus-per-job", help="ray: CPUs per task", show_default="1",
                                                 rich_help_panel=SCALE_OUT),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (jobs, table cells, missing inputs, "
                                                          "cost) and exit; nothing is written", rich_help_panel=OUTPUT),
) -> None:
    """Train every selected loss under matched seeds; print test mAP per loss.

    Modes: linear (heads on cached features, many configs at once), e2e (fine-tune the backbone
    on images with each loss's paper recipe) and linear-init (linear phase, then e2e).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from spmlbench.atomic import writable_dir
    from spmlbench.cli.run_view import RichRunProgress, report_run
    from spmlbench.data.store import test_class_warning
    from spmlbench.experiments.execute import run_plan
    from spmlbench.experiments.inputs import ensure_inputs
    from spmlbench.experiments.jobs import MODES, check_image_options
    from spmlbench.experiments.plan import RunRequest, plan_run
    from spmlbench.experiments.recipes import check_choice
    from spmlbench.experiments.runner import run_jobs
    from spmlbench.experiments.selection import planned_stages, untrained_groups
    from spmlbench.runtime import resolve_device

    say = lambda msg: err_console.print(msg, markup=False, highlight=False)  # noqa: E731
    load_plugin_options(plugin)
    ray_opts = _ray_options(executor, address, gpus_per_job, cpus_per_job)
    if mode is not None and mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: unknown; choose one of: {', '.join(MODES)}")
    if not experiment:
        check_image_options(mode or "linear", weights, image_size, exact)
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers {workers}: must be >= 0")
    resolve_device(device)  # before --out is made and any bar is drawn (a bad --device left both, before)
    n_processes = _parse_processes(processes)
    if n_processes is None and ray_opts is not None:
        n_processes = 1  # a ray task gets --cpus-per-job CPUs, not the whole node: split only when asked
    seed_list = parse_seeds(seeds) if seeds is not None else None
    ds_list = _split(datasets, "datasets") if datasets is not None else []
    if dataset and dataset not in ds_list:
        ds_list.insert(0, dataset)
    check_choice("recipe", recipe, LINEAR_RECIPES)
    if select is not None:
        check_choice("select", select, SELECT_RULES)
    if select is not None and recipe != "cole":
        raise ConfigError("--select: only used with --recipe cole (the paper recipes have one point); drop it")
    request = RunRequest(
        datasets=ds_list, losses=None if losses.strip() == "all" else parse_losses(losses), seeds=seed_list,
        mode=mode, backbone=backbone, experiment=experiment, epochs=epochs, batch_size=batch_size, lr=lr,
        recipe=recipe, lr_grid=parse_numbers(lr_grid, "lr-grid", float),
        batch_grid=parse_numbers(batch_grid, "batch-grid", int), val=val, early_stop=early_stop, sets=list(set_),
        grids=list(grid), weights=weights, image_size=image_size, exact=exact, home=home, select=select)
    plan = plan_run(request)  # pure: reads, writes nothing
    if dry_run:
        from spmlbench.cli.plan_view import show_plan

        show_plan(plan, request, out)
        return
    if plan.missing and ensure_inputs(plan.missing, home, say) and plan.provisional:
        plan = plan_run(request)  # job ids resolved on the data just prepared
    run_kwargs: dict[str, Any] = dict(home=home, device=device, force=force, reference_loop=reference_loop,
                                      experiment=plan.experiment, workers=workers, processes=n_processes,
                                      dumps=frozenset(plan.dumps), keep_checkpoints=keep_checkpoints,
                                      verify=verify, lockstep=lockstep)
    writable_dir(out, "--out")  # before any training: records must be writable
    planned, stages = planned_stages(plan.jobs, plan.select)
    say(f"{plan.experiment or 'run'}: {stages}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=False) as bar:
        view = RichRunProgress(bar, planned)

        def run_stage(stage: list[JobSpec]) -> RunSummary:
            if ray_opts is None:
                return run_jobs(stage, out, progress=view, **run_kwargs)
            return _run_ray(stage, out, ray_opts, view, run_kwargs)

        summaries, shown, manifest = run_plan(plan, request, out, run_stage, command=command_line(ctx),
                                              options={"device": device, "executor": executor, "force": force})
    warnings = [w for w in (test_class_warning(ds, home) for ds in sorted({j.dataset for j in plan.jobs})) if w]
    report_run(_merge(summaries), shown, out, manifest["run_id"], untrained_groups(plan.jobs, shown), warnings)
    console.print(f"run {manifest['run_id']}: manifest in {out / 'runs'}; 'spmlbench report --results {out}' "
                  "shows it", highlight=False, soft_wrap=True)


def command_line(ctx: typer.Context) -> str:
    """The command as given, in a canonical form: ``spmlbench run`` and every option not at its default."""
    import shlex

    words = ["spmlbench", ctx.info_name or "run"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value == param.default or value == [] or not param.opts:
            continue
        flag = max(param.opts, key=len)
        if isinstance(value, bool):
            words.append(flag if value else (param.secondary_opts or [f"--no-{flag[2:]}"])[0])
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            words += [flag, str(v)]
    return shlex.join(words)


def _merge(summaries: Sequence[RunSummary]) -> RunSummary:
    """One summary of a run's stages."""
    from spmlbench.experiments.runner import RunSummary

    total = RunSummary()
    for s in summaries:
        for name in ("ran", "skipped", "by_others", "failed"):
            getattr(total, name).extend(getattr(s, name))
    return total


def _ray_options(executor: str, address: str | None, gpus: float | None, cpus: float | None) -> dict[str, Any] | None:
    """The ray keyword arguments (None for the local executor); ray options without ray are an error."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: unknown; choose local or ray")
    given = {"--address": address, "--gpus-per-job": gpus, "--cpus-per-job": cpus}
    if executor == "local":
        for name, value in given.items():
            if value is not None:
                raise ConfigError(f"{name}: only used with --executor ray; add --executor ray or drop it")
        return None
    if gpus is not None and not gpus >= 0:
        raise ConfigError(f"--gpus-per-job {gpus}: must be >= 0")
    if cpus is not None and not cpus > 0:
        raise ConfigError(f"--cpus-per-job {cpus}: must be > 0")
    from spmlbench.experiments.ray_executor import import_ray

    import_ray()  # ConfigError with the install hint when the extra is missing
    opts: dict[str, Any] = {}
    if address is not None:
        opts["address"] = address
    if gpus is not None:
        opts["gpus_per_job"] = float(gpus)
    if cpus is not None:
        opts["cpus_per_job"] = float(cpus)
    return opts


def _parse_processes(text: str) -> int | None:
    """``--processes``: ``auto`` -> None, else a positive int."""
    if text.strip() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--processes {text}: must be auto or a whole number >= 1")
    return n


def _run_ray(jobs: Sequence[JobSpec], out: Path, ray_opts: dict[str, Any], progress: RunProgress,
             run_kwargs: dict[str, Any]) -> RunSummary:
    """Hand the jobs to :func:`spmlbench.experiments.ray_executor.run_jobs_ray` (imported lazily)."""
    from spmlbench.experiments.ray_executor import run_jobs_ray

    kw = dict(run_kwargs)
    kw.pop("lockstep", None)  # a Ray task trains one job
    base = {k: kw.pop(k) for k in ("home", "device", "force", "experiment")}
    return run_jobs_ray(list(jobs), out, progress=progress, **base, **ray_opts, **kw)


