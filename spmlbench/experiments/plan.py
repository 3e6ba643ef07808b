"""What one ``spmlbench run`` trains: a request (datasets, losses, seeds, mode, recipe and options, or a
named experiment) turned into fully resolved jobs and the table cells they fill. The CLI and a notebook call
the same :func:`plan_run`.

Planning is pure: it reads the registry, the data manifests, the experiment spec and what is on disk (a
dataset's labels metadata, which caches exist), and writes nothing. What is missing is listed in
``Plan.missing``; :func:`spmlbench.experiments.inputs.ensure_inputs` is the explicit step that makes it.

A :class:`PlanCell` is one table cell of one seed: (group, row, dataset, mode, seed, grid coordinates) and
the job ids of its (lr, batch) points. The report reads exactly those ids from the run manifest
(:mod:`spmlbench.experiments.run_manifest`), and which point a cell reports is the run's own selection.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from spmlbench.data.store import check_protocol
from spmlbench.errors import ConfigError
from spmlbench.experiments.inputs import (
    DatasetInputs,
    MissingInput,
    check_requirements,
    data_inputs,
    dataset_inputs,
    default_backbone,
    missing_caches,
    mode_problems,
)
from spmlbench.experiments.jobs import JobSpec, expand_jobs, parse_grid, parse_set
from spmlbench.modes import LINEAR

DEFAULT_DATASET = "digits"
DEFAULT_SEEDS = (0, 1, 2)
MAIN_GROUP = "main"

__all__ = ["DEFAULT_DATASET", "DEFAULT_SEEDS", "MAIN_GROUP", "Plan", "PlanCell", "RunRequest", "check_requirements",
           "plan_run"]


@dataclasses.dataclass
class RunRequest:
    """The job-shaping options of one run (the ``spmlbench run`` flags); ``losses`` None means all (or the
    experiment's), ``datasets`` empty means ``digits`` (or the experiment's); ``select`` None: the protocol's
    rule (first-seed)."""

    datasets: list[str] = dataclasses.field(default_factory=list)
    losses: list[str] | None = None
    seeds: list[int] | None = None
    mode: str | None = None
    backbone: str | None = None
    experiment: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    recipe: str = "cole"
    lr_grid: list[float] | None = None
    batch_grid: list[int] | None = None
    val: str = "clean"
    early_stop: str = "paper"
    sets: list[str] = dataclasses.field(default_factory=list)
    grids: list[str] = dataclasses.field(default_factory=list)
    weights: str | None = None
    image_size: int | None = None
    exact: bool = False
    home: str | None = None
    select: str | None = None


@dataclasses.dataclass(frozen=True)
class PlanCell:
    """One table cell of one seed and the job ids of its (lr, batch) points (one when the point is fixed)."""

    group: str
    row: str
    loss: str
    dataset: str
    mode: str
    seed: int
    coords: tuple[tuple[str, Any], ...]
    jobs: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (coordinates as a dict)."""
        out = dataclasses.asdict(self)
        out["coords"], out["jobs"] = dict(self.coords), list(self.jobs)
        return out


@dataclasses.dataclass
class Plan:
    """The resolved jobs of a request, the cells they fill, its experiment's name ("" for none), the ids of
    jobs that dump predictions, the selection rule, the inputs that are missing and the datasets whose job ids
    are provisional (not prepared yet: resolved again once they are)."""

    jobs: list[JobSpec]
    experiment: str = ""
    dumps: set[str] = dataclasses.field(default_factory=set)
    cells: list[PlanCell] = dataclasses.field(default_factory=list)
    select: str = "first-seed"
    missing: list[MissingInput] = dataclasses.field(default_factory=list)
    provisional: list[str] = dataclasses.field(default_factory=list)


class _Inputs:
    """Dataset metadata read once per dataset, and the missing data inputs found on the way."""

    def __init__(self, home: str | None) -> None:
        self.home = home
        self.seen: dict[str, DatasetInputs] = {}
        self.missing: dict[str, MissingInput] = {}

    def meta(self, dataset: str, backbone: str, linear: bool) -> dict[str, Any]:
        if dataset not in self.seen:
            self.seen[dataset] = dataset_inputs(dataset, self.home)
        for m in data_inputs(dataset, backbone, linear, self.seen[dataset], self.home):
            self.missing.setdefault(m.path, m)
        return self.seen[dataset].meta

    def provisional(self) -> list[str]:
        # a dataset without a published expected number of positives resolves it from its labels
        return [ds for ds, d in self.seen.items()
                if not d.prepared and (d.meta.get("expected_positives") or {}).get("paper") is None]


def plan_run(request: RunRequest) -> Plan:
    """The jobs and cells of ``request``; reads, never writes."""
    from spmlbench.experiments.recipes import SELECT_RULES, check_choice, linear_protocol

    rule = check_choice("select", request.select, SELECT_RULES) if request.select else linear_protocol().select
    inputs = _Inputs(request.home)
    if request.experiment:
        if request.grids:
            raise ConfigError("--grid: not combined with --experiment (the spec holds its grids); drop one of them")
        name, jobs, cells, dumps = _experiment_plan(request, inputs)
    else:
        name, dumps = "", set()
        jobs, cells = _plain_plan(request, inputs)
    mode_problems(jobs)
    missing = [*inputs.missing.values(), *missing_caches(jobs, request.home)]
    return Plan(jobs, name, dumps, cells, rule, missing, inputs.provisional())


def _plain_plan(request: RunRequest, inputs: _Inputs) -> tuple[list[JobSpec], list[PlanCell]]:
    """Jobs of a run without an experiment; one row per loss and ``--grid`` point (``loss (param=value)``)."""
    from spmlbench.losses import default_losses

    mode = request.mode or "linear"
    grid_params: dict[str, list[str]] = {}
    for text in request.grids:
        loss, param, _ = parse_grid(text)
        grid_params.setdefault(loss, []).append(param)
    jobs: list[JobSpec] = []
    cells: list[PlanCell] = []
    for ds in request.datasets or [DEFAULT_DATASET]:
        bb = default_backbone(ds, mode, request.backbone)
        meta = inputs.meta(ds, bb, mode == LINEAR)
        specs = expand_jobs(dataset=ds, losses=request.losses or default_losses(), seeds=request.seeds or DEFAULT_SEEDS,
                            meta=meta, backbone=bb, mode=mode, epochs=request.epochs, batch_size=request.batch_size,
                            lr=request.lr, val=request.val, early_stop=request.early_stop, sets=request.sets,
                            grids=request.grids, weights=request.weights, image_size=request.image_size,
                            exact=request.exact, **_recipe_kwargs(request, mode))
        check_protocol(specs, meta)
        jobs += specs
        by_cell: dict[tuple[Any, ...], list[JobSpec]] = {}
        for j in specs:
            by_cell.setdefault((j.loss, j.hparams, j.seed), []).append(j)
        for (loss, hparams, seed), members in by_cell.items():
            hp = dict(hparams)
            coords = tuple((p, _plain(hp.get(p))) for p in grid_params.get(loss, []))
            row = loss if not coords else f"{loss} ({', '.join(f'{k}={_text(v)}' for k, v in coords)})"
            cells.append(PlanCell(MAIN_GROUP, row, loss, ds, mode, int(seed), coords,
                                  tuple(j.job_id for j in members)))
    return list(dict.fromkeys(jobs)), cells


def _plain(value: Any) -> Any:
    """A hyperparameter value as JSON holds it (tuples as lists)."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list) else f"{value}"


def _recipe_kwargs(opts: RunRequest, mode: str) -> dict[str, Any]:
    """The linear-recipe arguments of :func:`expand_jobs` (the grid only where the cole protocol applies)."""
    if mode != "linear":
        if opts.recipe != "cole" or opts.lr_grid is not None or opts.batch_grid is not None:
            raise ConfigError("--recipe/--lr-grid/--batch-grid: only used by --mode linear (e2e and linear-init "
                              "use each paper's recipe); drop them")
        return {}
    return {"recipe": opts.recipe, "lr_grid": opts.lr_grid, "batch_grid": opts.batch_grid}


def _check_sets(opts: RunRequest, exp: Any, present: set[str]) -> dict[str, str]:
    """``--set`` texts by the loss they set (ConfigError for a loss the experiment or --losses leaves out)."""
    set_losses = {text: parse_set(text)[0] for text in opts.sets}
    in_spec = {j["loss"] for j in exp.jobs()}
    for text, loss in set_losses.items():
        if loss in in_spec and loss not in present:
            raise ConfigError(f"--set {text}: loss {loss!r} is left out by --losses; add it to --losses or drop the --set")
        if loss not in present:
            raise ConfigError(f"--set {text}: loss {loss!r} is not in experiment {exp.name!r}; drop the --set")
    return set_losses


def _experiment_plan(opts: RunRequest, inputs: _Inputs) -> tuple[str, list[JobSpec], list[PlanCell], set[str]]:
    """An experiment's jobs (CLI --set/--epochs/--batch-size/--lr on top), its name, its cells (one per spec
    cell: group, dataset, grid point, loss, seed) and the ids of the jobs that dump predictions."""
    from spmlbench.experiments.spec import load_experiment

    assert opts.experiment
    exp = load_experiment(opts.experiment, datasets=opts.datasets or None, seeds=opts.seeds, mode=opts.mode)
    loss_filter = opts.losses
    spec_cells = [c for c in exp.cells() if loss_filter is None or c.job["loss"] in loss_filter]
    if not spec_cells:
        raise ConfigError(f"--losses: none of them is in experiment {exp.name!r}; choose from "
                          f"{', '.join(dict.fromkeys(j['loss'] for j in exp.jobs()))}")
    set_losses = _check_sets(opts, exp, {c.job["loss"] for c in spec_cells})
    jobs: list[JobSpec] = []
    cells: dict[tuple[Any, ...], PlanCell] = {}
    dumps: set[str] = set()
    expanded: dict[str, list[JobSpec]] = {}
    for cell in spec_cells:
        job = cell.job
        key = json.dumps(job, sort_keys=True, default=str)
        if key not in expanded:
            expanded[key] = _expand_cell(opts, exp.name, job, set_losses, inputs)
        specs = expanded[key]
        jobs += specs
        if job.get("dump_predictions"):
            dumps.update(s.job_id for s in specs)
        coords = tuple(cell.coords.items())
        ckey = (cell.group, job["loss"], job["dataset"], job["mode"], job["seed"], json.dumps(coords, default=str))
        cells.setdefault(ckey, PlanCell(cell.group, job["loss"], job["loss"], job["dataset"], job["mode"],
                                        int(job["seed"]), coords, tuple(s.job_id for s in specs)))
    if not any(j.mode != "linear" for j in jobs):
        for flag, value in (("--weights", opts.weights), ("--image-size", opts.image_size), ("--exact", opts.exact or None)):
            if value is not None:
                raise ConfigError(f"{flag}: experiment {exp.name!r} runs mode linear only; drop {flag} or pass --mode e2e")
    return exp.name, list(dict.fromkeys(jobs)), list(cells.values()), dumps


def _expand_cell(opts: RunRequest, exp_name: str, job: dict[str, Any], set_losses: dict[str, str],
                 inputs: _Inputs) -> list[JobSpec]:
    """The JobSpecs of one spec cell (its (lr, batch) points)."""
    ds, jmode = job["dataset"], job.get("mode", "linear")
    e2e = jmode != "linear"
    bb = default_backbone(ds, jmode, job.get("backbone") or opts.backbone)
    meta = inputs.meta(ds, bb, not e2e)
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
    if job.get("dump_predictions") and e2e:
        raise ConfigError(f"experiment {exp_name!r}: dump_predictions is written by mode linear only, not "
                          f"{jmode}; run it with --mode linear")
    return specs
