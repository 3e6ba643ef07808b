"""``spmlbench run``: every loss under matched seeds on cached features, then the result table."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spmlbench.atomic import writable_dir
from spmlbench.cli.app import app, console, err_console
from spmlbench.errors import ConfigError, DataError
from spmlbench.experiments.jobs import MODES, JobSpec, expand_jobs
from spmlbench.experiments.runner import RunProgress, RunSummary, check_protocol, run_jobs
from spmlbench.train.linear import EpochProgress

DEFAULT_DATASET = "digits"
DEFAULT_SEEDS = "0,1,2"
E2E_BACKBONE = "resnet50"
EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray: Ray is not installed; pip install -e '.[ray]'"


def _split(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{what} {text!r}: empty list; give comma-separated values")
    return list(dict.fromkeys(items))


def parse_losses(text: str) -> list[str]:
    """``all`` or a comma list of registry names (unknown names raise ConfigError)."""
    from spmlbench.losses import LOSSES, list_losses

    if text.strip() == "all":
        return list_losses()
    names = _split(text, "losses")
    for n in names:
        LOSSES.get(n)
    return names


def parse_seeds(text: str) -> list[int]:
    """Comma list of whole numbers in [0, 2**32) (numpy's seed range), ASCII digits only."""
    out = []
    for s in _split(text, "seeds"):
        if not (s.isascii() and s.isdigit()) or int(s) >= 2**32:
            raise ConfigError(f"--seeds {text!r}: {s!r} is not a whole number in [0, 2**32); e.g. --seeds 0,1,2")
        out.append(int(s))
    return out


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


class RichRunProgress(RunProgress):
    """Jobs done, the current cohort's epoch and its best val mAP, drawn with rich on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.jobs_task = progress.add_task("jobs", total=0)
        self.epoch_task = progress.add_task("epoch", total=0, visible=False)

    def start(self, total: int, skipped: int) -> None:
        self.progress.update(self.jobs_task, total=total, completed=skipped)

    def cohort(self, jobs: Sequence[JobSpec]) -> None:
        losses = ",".join(dict.fromkeys(j.loss for j in jobs))
        self.progress.update(self.epoch_task, total=jobs[0].epochs, completed=0, visible=True,
                             description=f"{len(jobs)} configs ({losses})")

    def epoch(self, event: EpochProgress) -> None:
        best = "-" if math.isnan(event.best_val_map) else f"{event.best_val_map:.2f}"
        desc = self.progress.tasks[self.epoch_task].description.split(" | ")[0]
        self.progress.update(self.epoch_task, completed=event.epoch, description=f"{desc} | best val mAP {best}")

    def jobs_done(self, jobs: Sequence[JobSpec], results: Sequence[Any]) -> None:
        self.progress.advance(self.jobs_task, len(jobs))

    def waiting(self, count: int) -> None:
        self.progress.update(self.epoch_task, visible=True, description=f"waiting for {count} jobs run elsewhere")

    def held(self, holders: Sequence[Any]) -> None:
        if holders:
            more = f" (and {len(holders) - 1} more locks in {holders[0].path.parent})" if len(holders) > 1 else ""
            self.progress.console.print(f"waiting: {holders[0].describe()}{more}", markup=False, highlight=False,
                                        soft_wrap=True)


def _label(loss: str, hp: dict[str, Any], varying: list[str]) -> str:
    if not varying:
        return loss
    return f"{loss} (" + ", ".join(f"{k}={json.dumps(hp.get(k))}" for k in varying) + ")"


def result_table(jobs: Sequence[JobSpec], records: Any) -> Table:
    """Test mAP per loss (rows) and dataset (columns): mean ± std over seeds of this run's jobs
    (``records``: the results folder's records, :func:`~spmlbench.experiments.records.load_records`)."""

    from spmlbench.report.tables import fmt

    ids = {j.job_id for j in jobs}
    df = records[records["job_id"].isin(ids)].copy()
    datasets = list(dict.fromkeys(j.dataset for j in jobs))
    title = "test mAP at the best val epoch"
    table = Table(title=title, caption="mean ± sample std over seeds", min_width=len(title) + 4)
    table.add_column("loss")
    for ds in datasets:
        table.add_column(ds, justify="right")
    if df.empty:
        return table
    df["hp"] = [json.loads(h) for h in df["hparams"]]
    rows: dict[str, dict[str, str]] = {}
    for loss in dict.fromkeys(j.loss for j in jobs):
        sub = df[df["loss"] == loss]
        if sub.empty:
            continue
        keys = sorted({k for hp in sub["hp"] for k in hp})
        varying = [k for k in keys if len({json.dumps(hp.get(k)) for hp in sub["hp"]}) > 1]
        sub = sub.assign(label=[_label(loss, hp, varying) for hp in sub["hp"]])
        for (label, ds), grp in sub.groupby(["label", "dataset"], sort=False):
            ok = grp[grp["status"] == "ok"]["test_map"].astype(float)
            failed = int((grp["status"] != "ok").sum())
            text = "-" if ok.empty else fmt(float(ok.mean()), float(ok.std(ddof=1)) if len(ok) > 1 else None)
            if failed:
                text += f" ({failed} failed)"
            rows.setdefault(str(label), {})[str(ds)] = text
    for label, cells in rows.items():
        table.add_row(label, *(cells.get(ds, "") for ds in datasets))
    return table


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


@app.command()
def run(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset to run on [default: digits]"),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="comma list of datasets (narrows an experiment)"),
    losses: str = typer.Option("all", "--losses", help="comma list of loss names, or all"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma list of seeds [default: 0,1,2 or the experiment's]"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs for every loss [default: the loss's recipe]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="batch size [default: the loss's recipe]"),
    lr: Optional[float] = typer.Option(None, "--lr", help="learning rate [default: the loss's recipe]"),
    val: str = typer.Option("clean", "--val", help="score val with clean or observed labels"),
    early_stop: str = typer.Option("paper", "--early-stop", help="paper (each loss's own rule) or none"),
    set_: list[str] = typer.Option([], "--set", help="loss.param=value (repeatable)"),
    grid: list[str] = typer.Option([], "--grid", help="loss.param=v1,v2,... (repeatable, cartesian)"),
    mode: Optional[str] = typer.Option(None, "--mode", help="linear (cached features), e2e or linear-init [default: linear]"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    out: Path = typer.Option(Path("results"), "--out", help="results folder"),
    force: bool = typer.Option(False, "--force", help="re-run jobs that already have a record"),
    reference_loop: bool = typer.Option(False, "--reference-loop", help="one config at a time (slow reference path)"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="backbone [default: the dataset's features; resnet50 end to end]"),
    home: Optional[str] = typer.Option(None, "--home", help="data home [default: $SPMLBENCH_HOME]"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="a named experiment spec or a .toml path"),
    exact: bool = typer.Option(False, "--exact", help="end to end: fp32, deterministic kernels (reproduction)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="end to end: image decode workers [default: by device]"),
    processes: str = typer.Option("auto", "--processes",
                                  help="linear on the CPU: split the configs over N processes; auto: one per core for long runs "
                                       "(1 per task with --executor ray)"),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="end to end: input size [default: the backbone's]"),
    weights: Optional[str] = typer.Option(None, "--weights", help="end to end: backbone weights, default or none"),
    keep_checkpoints: bool = typer.Option(True, "--keep-checkpoints/--drop-checkpoints",
                                          help="end to end: keep <out>/work/<job> (best and last epoch) after the record"),
    executor: str = typer.Option("local", "--executor", help="local (this process) or ray"),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address, auto or HOST:PORT"),
    gpus_per_job: Optional[float] = typer.Option(None, "--gpus-per-job", help="ray: GPUs per task [default: 0]"),
    cpus_per_job: Optional[float] = typer.Option(None, "--cpus-per-job", help="ray: CPUs per task [default: 1]"),
) -> None:
    """Train every selected loss under matched seeds; print test mAP per loss.

    Modes: linear (heads on cached features, many configs at once), e2e (fine-tune the backbone
    on images with each loss's paper recipe) and linear-init (linear phase, then e2e).
    """
    say = lambda msg: err_console.print(msg, markup=False, highlight=False)  # noqa: E731
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
    opts = _Options(epochs, batch_size, lr, val, early_stop, list(set_), weights, image_size, exact)
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
                                image_size=image_size, exact=exact)
    run_kwargs: dict[str, Any] = dict(home=home, device=device, force=force, reference_loop=reference_loop,
                                      experiment=exp_name, workers=workers, processes=n_processes,
                                      dumps=frozenset(dumps),
                                      keep_checkpoints=keep_checkpoints)
    writable_dir(out, "--out")  # before any training: records must be writable
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as bar:
        if ray_opts is None:
            summary = run_jobs(jobs, out, progress=RichRunProgress(bar), **run_kwargs)
        else:
            summary = _run_ray(jobs, out, ray_opts, RichRunProgress(bar), run_kwargs)
    _report(summary, jobs, out)


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
            exact=opts.exact and e2e,
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


def _report(summary: RunSummary, jobs: Sequence[JobSpec], out: Path) -> None:
    from spmlbench.experiments.records import load_records

    df = load_records(out)  # read once for the messages and the table
    if summary.skipped:
        failed = int((df[df["job_id"].isin(summary.skipped)]["status"] != "ok").sum()) if not df.empty else 0
        note = f", {failed} of them failed (same seeds: a re-run fails the same way)" if failed else ""
        console.print(f"{len(summary.skipped)} finished jobs skipped{note} (records in {out / 'records'}); "
                      "use --force to re-run them", highlight=False)
    if summary.by_others:
        console.print(f"{len(summary.by_others)} jobs were run by another process on {out}", highlight=False)
    console.print(f"{len(summary.ran)} jobs run; records in {out / 'records'}", highlight=False)
    console.print(result_table(jobs, df))
    if summary.failed:
        for _, row in df[df["job_id"].isin(summary.failed)].iterrows():
            console.print(f"failed: {row['loss']} seed {row['seed']} ({row['job_id']}): {row['error']}",
                          markup=False, highlight=False)
    ids = {j.job_id for j in jobs}
    failed = int((df[df["job_id"].isin(ids)]["status"] != "ok").sum()) if not df.empty else 0
    if failed:  # every other job ran; the exit status tells a script or CI that the results are incomplete
        err_console.print(f"error: {failed} of {len(ids)} jobs failed; their errors are in the 'error' column of "
                          f"their records in {out / 'records'} (listed above for jobs run now); a re-run skips them: "
                          "delete those records, or pass --force to re-run every job", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
