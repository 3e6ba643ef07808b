"""``spmlbench run``: every loss under matched seeds on cached features, then the result table."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spmlbench.atomic import writable_dir
from spmlbench.cli.app import app, err_console
from spmlbench.cli.help import E2E, OUTPUT, PIPELINE, SCALE_OUT, SELECTION, TRAINING, choices
from spmlbench.cli.parse import _split, load_plugin_options, parse_losses, parse_numbers, parse_seeds
from spmlbench.cli.run_view import RichRunProgress, report_run
from spmlbench.errors import ConfigError, DataError
from spmlbench.experiments.jobs import MODES, JobSpec, expand_jobs
from spmlbench.experiments.recipes import LINEAR_RECIPES, SELECT_RULES, check_choice, linear_protocol
from spmlbench.experiments.runner import RunProgress, RunSummary, check_protocol, run_jobs
from spmlbench.experiments.selection import run_selected

DEFAULT_DATASET = "digits"
DEFAULT_SEEDS = "0,1,2"
E2E_BACKBONE = "resnet50"
EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray: Ray is not installed; pip install -e '.[ray]'"


def ensure_dataset(dataset: str, backbone: str | None, home: str | None, say: Any,
                   need_features: bool = True) -> tuple[dict[str, Any], str]:
    """Labels metadata and backbone of a prepared dataset; ``digits`` is prepared/extracted on demand.

    ``need_features=False`` (end-to-end modes): images instead of the feature cache, and the
    backbone defaults to ``resnet50``.
    """
    from spmlbench.data.registry import get_adapter, image_root
    from spmlbench.data.store import load_labels
    from spmlbench.features.extract import default_backbone
    from spmlbench.paths import features_path, labels_path

    get_adapter(dataset)  # unknown dataset -> ConfigError listing the known ones
    offline = dataset == DEFAULT_DATASET
    if not labels_path(dataset, home).exists():
        if not offline:
            raise DataError(f"{labels_path(dataset, home)}: dataset {dataset!r} is not prepared; "
                            f"run 'spmlbench prepare {dataset}'")
        from spmlbench.data.prepare import prepare_dataset

        say(f"preparing {dataset} (offline, no download)")
        prepare_dataset(dataset, home=home)
    meta = dict(load_labels(dataset, home).attrs.get("spmlbench", {}))
    if not need_features:
        root = image_root(dataset, home)
        if not root.exists():
            raise DataError(f"{root}: images of {dataset!r} are missing (end-to-end modes train on images); "
                            f"re-run 'spmlbench prepare {dataset}'")
        return meta, backbone or E2E_BACKBONE
    bb = backbone or default_backbone(dataset)
    if not features_path(dataset, bb, home).exists():
        if not offline:
            raise DataError(f"{features_path(dataset, bb, home)}: no {bb} features for {dataset}; "
                            f"run 'spmlbench features {dataset} --backbone {bb}'")
        from spmlbench.features.extract import extract_features

        say(f"extracting {bb} features of {dataset}")
        extract_features(dataset, bb, home=home, progress=False)
    return meta, bb


@dataclasses.dataclass
class _Options:
    """The job-shaping options of one ``run`` call (shared by plain runs and experiments)."""

    epochs: int | None
    batch_size: int | None
    lr: float | None
    val: str
    early_stop: str
    sets: list[str]
    weights: str | None
    image_size: int | None
    exact: bool
    recipe: str = "cole"
    lr_grid: list[float] | None = None
    batch_grid: list[int] | None = None


@app.command(rich_help_panel=PIPELINE)
def run(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset to run on", show_default=DEFAULT_DATASET,
                                          rich_help_panel=SELECTION),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="comma list of datasets (narrows an experiment)",
                                           metavar="<name,...>", rich_help_panel=SELECTION),
    losses: str = typer.Option("all", "--losses", help="comma list of loss names, or all", metavar="<all|name,...>",
                               rich_help_panel=SELECTION),
    plugin: list[str] = typer.Option([], "--plugin", help="your own losses: a .py file or module (repeatable)",
                                     metavar="<file.py|module>", rich_help_panel=SELECTION),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma list of seeds", metavar="<int,...>",
                                        show_default=f"{DEFAULT_SEEDS} or the experiment's", rich_help_panel=SELECTION),
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
                                       metavar=choices(MODES), show_default="linear", rich_help_panel=SELECTION),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda", metavar=choices(("auto", "cpu", "cuda")),
                               rich_help_panel=TRAINING),
    out: Path = typer.Option(Path("results"), "--out", help="results folder", rich_help_panel=OUTPUT),
    force: bool = typer.Option(False, "--force", help="re-run jobs that already have a record", rich_help_panel=OUTPUT),
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
                                  help="linear on the CPU: split the configs over N processes; auto: one per core for long runs "
                                       "(1 per task with --executor ray)", metavar="<auto|N>", rich_help_panel=SCALE_OUT),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="end to end: input size",
                                             show_default="the backbone's", rich_help_panel=E2E),
    weights: Optional[str] = typer.Option(None, "--weights", help="end to end: backbone weights, default or none",
                                          metavar=choices(("default", "none")), show_default="default",
                                          rich_help_panel=E2E),
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
) -> None:
    """Train every selected loss under matched seeds; print test mAP per loss.

    Modes: linear (heads on cached features, many configs at once), e2e (fine-tune the backbone
    on images with each loss's paper recipe) and linear-init (linear phase, then e2e).
    """
    say = lambda msg: err_console.print(msg, markup=False, highlight=False)  # noqa: E731
    load_plugin_options(plugin)
    ray_opts = _ray_options(executor, address, gpus_per_job, cpus_per_job)
    if mode is not None and mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: unknown; choose one of: {', '.join(MODES)}")
    if not experiment and (mode or "linear") == "linear":
        for flag, value in (("--weights", weights), ("--image-size", image_size), ("--exact", exact or None)):
            if value is not None:
                raise ConfigError(f"{flag}: only used by --mode e2e or linear-init (linear reads cached features); "
                                  "drop it or change --mode")
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers {workers}: must be >= 0")
    n_processes = _parse_processes(processes)
    if n_processes is None and ray_opts is not None:
        n_processes = 1  # a ray task gets --cpus-per-job CPUs, not the whole node: split only when asked
    seed_list = parse_seeds(seeds) if seeds is not None else None
    ds_list = _split(datasets, "datasets") if datasets is not None else []
    if dataset and dataset not in ds_list:
        ds_list.insert(0, dataset)
    check_choice("recipe", recipe, LINEAR_RECIPES)
    rule = check_choice("select", select, SELECT_RULES) if select is not None else linear_protocol().select
    if select is not None and recipe != "cole":
        raise ConfigError("--select: only used with --recipe cole (the paper recipes have one point); drop it")
    opts = _Options(epochs, batch_size, lr, val, early_stop, list(set_), weights, image_size, exact, recipe,
                    parse_numbers(lr_grid, "lr-grid", float), parse_numbers(batch_grid, "batch-grid", int))
    dumps: set[str] = set()
    if experiment:
        if grid:
            raise ConfigError("--grid: not combined with --experiment (the spec holds its grids); drop one of them")
        loss_filter = None if losses.strip() == "all" else parse_losses(losses)
        exp_name, jobs, dumps = _experiment_jobs(experiment, ds_list or None, seed_list, mode, loss_filter, backbone,
                                                 home, opts, say)
    else:
        exp_name = ""
        loss_names = parse_losses(losses)
        run_mode = mode or "linear"
        jobs = []
        for ds in ds_list or [DEFAULT_DATASET]:
            meta, bb = ensure_dataset(ds, backbone, home, say, need_features=run_mode == "linear")
            jobs += expand_jobs(dataset=ds, losses=loss_names, seeds=seed_list or parse_seeds(DEFAULT_SEEDS),
                                meta=meta, backbone=bb, mode=run_mode, epochs=epochs, batch_size=batch_size, lr=lr,
                                val=val, early_stop=early_stop, sets=set_, grids=grid, weights=weights,
                                image_size=image_size, exact=exact, **_recipe_kwargs(opts, run_mode))
    run_kwargs: dict[str, Any] = dict(home=home, device=device, force=force, reference_loop=reference_loop,
                                      experiment=exp_name, workers=workers, processes=n_processes,
                                      dumps=frozenset(dumps),
                                      keep_checkpoints=keep_checkpoints)
    writable_dir(out, "--out")  # before any training: records must be writable
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as bar:
        view = RichRunProgress(bar)

        def run_stage(stage: list[JobSpec]) -> RunSummary:
            if ray_opts is None:
                return run_jobs(stage, out, progress=view, **run_kwargs)
            return _run_ray(stage, out, ray_opts, view, run_kwargs)

        summaries, shown = run_selected(jobs, out, rule, run_stage)
    report_run(_merge(summaries), shown, out)


def _merge(summaries: Sequence[RunSummary]) -> RunSummary:
    """One summary of a run's stages."""
    total = RunSummary()
    for s in summaries:
        for name in ("ran", "skipped", "by_others", "failed"):
            getattr(total, name).extend(getattr(s, name))
    return total


def _recipe_kwargs(opts: _Options, mode: str) -> dict[str, Any]:
    """The linear-recipe arguments of :func:`expand_jobs` (the grid only where the cole protocol applies)."""
    if mode != "linear":
        if opts.recipe != "cole" or opts.lr_grid is not None or opts.batch_grid is not None:
            raise ConfigError("--recipe/--lr-grid/--batch-grid: only used by --mode linear (e2e and linear-init "
                              "use each paper's recipe); drop them")
        return {}
    return {"recipe": opts.recipe, "lr_grid": opts.lr_grid, "batch_grid": opts.batch_grid}


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
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
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
    try:
        from spmlbench.experiments.ray_executor import run_jobs_ray
    except ImportError as exc:
        raise ConfigError(f"--executor ray: the ray executor could not be loaded ({exc}); "
                          "reinstall spmlbench with pip install -e '.[ray]'") from None
    kw = dict(run_kwargs)
    base = {k: kw.pop(k) for k in ("home", "device", "force", "experiment")}
    return run_jobs_ray(list(jobs), out, progress=progress, **base, **ray_opts, **kw)


def _set_loss(text: str) -> str:
    from spmlbench.experiments.jobs import parse_set

    return parse_set(text)[0]


def _experiment_jobs(name: str, datasets: list[str] | None, seeds: list[int] | None, mode: str | None,
                     loss_filter: list[str] | None, backbone: str | None, home: str | None, opts: _Options,
                     say: Any) -> tuple[str, list[JobSpec], set[str]]:
    """An experiment's jobs as JobSpecs (CLI --set/--epochs/--batch-size/--lr on top), its name, and the
    ids of the jobs that dump predictions."""
    from spmlbench.experiments.spec import load_experiment

    exp = load_experiment(name, datasets=datasets, seeds=seeds, mode=mode)
    raw = [j for j in exp.jobs() if loss_filter is None or j["loss"] in loss_filter]
    if not raw:
        raise ConfigError(f"--losses: none of them is in experiment {exp.name!r}; choose from "
                          f"{', '.join(dict.fromkeys(j['loss'] for j in exp.jobs()))}")
    set_losses = {text: _set_loss(text) for text in opts.sets}
    present = {j["loss"] for j in raw}
    in_spec = {j["loss"] for j in exp.jobs()}
    for text, loss in set_losses.items():
        if loss in in_spec and loss not in present:
            raise ConfigError(f"--set {text}: loss {loss!r} is left out by --losses; add it to --losses or drop the --set")
        if loss not in present:
            raise ConfigError(f"--set {text}: loss {loss!r} is not in experiment {exp.name!r}; drop the --set")
    jobs: list[JobSpec] = []
    dumps: set[str] = set()
    prepared: dict[tuple[str, str | None, bool], tuple[dict[str, Any], str]] = {}
    for job in raw:
        ds, jmode = job["dataset"], job.get("mode", "linear")
        key = (ds, job.get("backbone") or backbone, jmode == "linear")
        if key not in prepared:
            prepared[key] = ensure_dataset(ds, key[1], home, say, need_features=key[2])
        meta, bb = prepared[key]
        e2e = jmode != "linear"
        specs = expand_jobs(
            dataset=ds, losses=[job["loss"]], seeds=[job["seed"]], meta=meta, backbone=bb, mode=jmode,
            epochs=opts.epochs or job.get("epochs"), batch_size=opts.batch_size or job.get("batch_size"),
            lr=opts.lr if opts.lr is not None else job.get("lr"), val=job.get("val", opts.val),
            early_stop=job.get("early_stop", opts.early_stop),
            sets=[t for t, loss in set_losses.items() if loss == job["loss"]], hparams=job.get("hparams") or {},
            label_seed=job.get("label_seed"), split_seed=job.get("split_seed"),
            weights=opts.weights if e2e else None, image_size=opts.image_size if e2e else None,
            exact=opts.exact and e2e, **_recipe_kwargs(opts, jmode),
        )
        check_protocol(specs, meta)  # before anything runs
        jobs += specs
        if job.get("dump_predictions"):
            if e2e:
                raise ConfigError(f"experiment {exp.name!r}: dump_predictions is written by mode linear only, not "
                                  f"{jmode}; run it with --mode linear")
            dumps.update(s.job_id for s in specs)
    if not any(j.mode != "linear" for j in jobs):
        for flag, value in (("--weights", opts.weights), ("--image-size", opts.image_size), ("--exact", opts.exact or None)):
            if value is not None:
                raise ConfigError(f"{flag}: experiment {exp.name!r} runs mode linear only; drop {flag} or pass --mode e2e")
    return exp.name, list(dict.fromkeys(jobs)), dumps
