"""``spmlbench run``: every loss under matched seeds on cached features, then the result table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spmlbench.cli.app import app, console, err_console
from spmlbench.errors import ConfigError, DataError
from spmlbench.experiments.jobs import JobSpec, expand_jobs
from spmlbench.experiments.runner import RunProgress, RunSummary, run_jobs
from spmlbench.train.linear import EpochProgress

DEFAULT_DATASET = "digits"
DEFAULT_SEEDS = "0,1,2"


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
    """Comma list of non-negative integers."""
    out = []
    for s in _split(text, "seeds"):
        if not s.isdigit():
            raise ConfigError(f"--seeds {text!r}: {s!r} is not a non-negative integer; e.g. --seeds 0,1,2")
        out.append(int(s))
    return out


def ensure_dataset(dataset: str, backbone: str | None, home: str | None, say: Any) -> tuple[dict[str, Any], str]:
    """Labels metadata and backbone of a prepared dataset; ``digits`` is prepared/extracted on demand."""
    from spmlbench.data.registry import get_adapter
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


def _label(loss: str, hp: dict[str, Any], varying: list[str]) -> str:
    if not varying:
        return loss
    return f"{loss} (" + ", ".join(f"{k}={json.dumps(hp.get(k))}" for k in varying) + ")"


def result_table(jobs: Sequence[JobSpec], out: Path) -> Table:
    """Test mAP per loss (rows) and dataset (columns): mean ± std over seeds of this run's jobs."""

    from spmlbench.experiments.records import load_records

    df = load_records(out)
    ids = {j.job_id for j in jobs}
    df = df[df["job_id"].isin(ids)].copy()
    datasets = list(dict.fromkeys(j.dataset for j in jobs))
    table = Table(title=f"test mAP at the best val epoch (mean ± std over seeds; records in {out})")
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
            text = "-" if ok.empty else f"{ok.mean():.2f} ± {ok.std(ddof=0):.2f}"
            if failed:
                text += f" ({failed} failed)"
            rows.setdefault(str(label), {})[str(ds)] = text
    for label, cells in rows.items():
        table.add_row(label, *(cells.get(ds, "") for ds in datasets))
    return table


@app.command()
def run(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset to run on [default: digits]"),
    losses: str = typer.Option("all", "--losses", help="comma list of loss names, or all"),
    seeds: str = typer.Option(DEFAULT_SEEDS, "--seeds", help="comma list of seeds"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs for every loss [default: the loss's recipe]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="batch size [default: the loss's recipe]"),
    lr: Optional[float] = typer.Option(None, "--lr", help="head learning rate [default: the loss's recipe]"),
    val: str = typer.Option("clean", "--val", help="score val with clean or observed labels"),
    early_stop: str = typer.Option("paper", "--early-stop", help="paper (each loss's own rule) or none"),
    set_: list[str] = typer.Option([], "--set", help="loss.param=value (repeatable)"),
    grid: list[str] = typer.Option([], "--grid", help="loss.param=v1,v2,... (repeatable, cartesian)"),
    mode: str = typer.Option("linear", "--mode", help="linear (e2e and linear-init come later)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    out: Path = typer.Option(Path("results"), "--out", help="results folder"),
    force: bool = typer.Option(False, "--force", help="re-run jobs that already have a record"),
    reference_loop: bool = typer.Option(False, "--reference-loop", help="one config at a time (slow reference path)"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="feature backbone [default: the dataset's]"),
    home: Optional[str] = typer.Option(None, "--home", help="data home [default: $SPMLBENCH_HOME]"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="a named experiment spec (expands to jobs)"),
) -> None:
    """Train every selected loss under matched seeds on cached features; print test mAP per loss."""
    if mode != "linear":
        if mode in ("e2e", "linear-init"):
            raise ConfigError(f"--mode {mode}: not yet available in this version; use --mode linear")
        raise ConfigError(f"--mode {mode!r}: unknown; choose linear (e2e and linear-init come later)")
    say = lambda msg: err_console.print(msg, markup=False, highlight=False)  # noqa: E731
    seed_list = parse_seeds(seeds)
    if experiment:
        jobs = _experiment_jobs(experiment, dataset, seed_list, backbone, home, val, early_stop, say)
        loss_names: list[str] = []
    else:
        loss_names = parse_losses(losses)
        ds = dataset or DEFAULT_DATASET
        meta, bb = ensure_dataset(ds, backbone, home, say)
        jobs = expand_jobs(dataset=ds, losses=loss_names, seeds=seed_list, meta=meta, backbone=bb, mode=mode,
                           epochs=epochs, batch_size=batch_size, lr=lr, val=val, early_stop=early_stop,
                           sets=set_, grids=grid)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as bar:
        summary = run_jobs(jobs, out, home=home, device=device, force=force, reference_loop=reference_loop,
                           experiment=experiment or "", progress=RichRunProgress(bar))
    _report(summary, jobs, out)


def _experiment_jobs(name: str, dataset: str | None, seeds: list[int], backbone: str | None, home: str | None,
                     val: str, early_stop: str, say: Any) -> list[JobSpec]:
    try:
        from spmlbench.experiments.spec import load_experiment
    except ImportError:
        raise ConfigError(f"--experiment {name}: experiment specs are not available in this version; "
                          "use --losses/--seeds/--grid") from None
    exp = load_experiment(name, datasets=[dataset] if dataset else None,
                          seeds=seeds if seeds != parse_seeds(DEFAULT_SEEDS) else None)
    jobs: list[JobSpec] = []
    prepared: dict[str, tuple[dict[str, Any], str]] = {}
    for job in exp.jobs():
        if job.get("mode", "linear") != "linear":
            raise ConfigError(f"--experiment {name}: mode {job['mode']} is not yet available; only linear runs here")
        ds = job["dataset"]
        if ds not in prepared:
            prepared[ds] = ensure_dataset(ds, job.get("backbone") or backbone, home, say)
        meta, bb = prepared[ds]
        jobs += expand_jobs(dataset=ds, losses=[job["loss"]], seeds=[job["seed"]], meta=meta, backbone=bb,
                            epochs=job.get("epochs"), batch_size=job.get("batch_size"), lr=job.get("lr"),
                            val=job.get("val", val), early_stop=job.get("early_stop", early_stop),
                            hparams=job.get("hparams") or {})
    return list(dict.fromkeys(jobs))


def _report(summary: RunSummary, jobs: Sequence[JobSpec], out: Path) -> None:
    if summary.skipped:
        console.print(f"{len(summary.skipped)} finished jobs skipped (records in {out / 'records'}); "
                      "use --force to re-run them", highlight=False)
    if summary.by_others:
        console.print(f"{len(summary.by_others)} jobs were run by another process on {out}", highlight=False)
    console.print(f"{len(summary.ran)} jobs run", highlight=False)
    console.print(result_table(jobs, out))
    if summary.failed:
        from spmlbench.experiments.records import load_records

        df = load_records(out)
        for _, row in df[df["job_id"].isin(summary.failed)].iterrows():
            console.print(f"failed: {row['loss']} seed {row['seed']} ({row['job_id']}): {row['error']}",
                          markup=False, highlight=False)
