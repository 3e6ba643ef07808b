"""What one ``spmlbench run`` trains: a request (datasets, losses, seeds, mode, recipe and options, or a
named experiment) turned into fully resolved jobs. The CLI and a notebook call the same :func:`plan_run`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from spmlbench.data.store import check_protocol
from spmlbench.errors import ConfigError, DataError
from spmlbench.experiments.jobs import JobSpec, expand_jobs, parse_set

DEFAULT_DATASET = "digits"
DEFAULT_SEEDS = (0, 1, 2)
E2E_BACKBONE = "resnet50"
Say = Callable[[str], None]


@dataclasses.dataclass
class RunRequest:
    """The job-shaping options of one run (the ``spmlbench run`` flags); ``losses`` None means all (or the
    experiment's), ``datasets`` empty means ``digits`` (or the experiment's)."""

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


@dataclasses.dataclass
class Plan:
    """The resolved jobs of a request, its experiment's name ("" for none) and the ids of jobs that dump
    predictions."""

    jobs: list[JobSpec]
    experiment: str = ""
    dumps: set[str] = dataclasses.field(default_factory=set)


def plan_run(request: RunRequest, say: Say = lambda _msg: None) -> Plan:
    """The jobs of ``request``; ``digits`` is prepared (and its features extracted) on demand."""
    from spmlbench.losses import default_losses

    if request.experiment:
        if request.grids:
            raise ConfigError("--grid: not combined with --experiment (the spec holds its grids); drop one of them")
        name, jobs, dumps = _experiment_jobs(request, say)
        check_requirements(jobs, request.home)
        return Plan(jobs, name, dumps)
    mode = request.mode or "linear"
    jobs: list[JobSpec] = []
    for ds in request.datasets or [DEFAULT_DATASET]:
        meta, bb = ensure_dataset(ds, request.backbone, request.home, say, need_features=mode == "linear")
        jobs += expand_jobs(dataset=ds, losses=request.losses or default_losses(), seeds=request.seeds or DEFAULT_SEEDS,
                            meta=meta, backbone=bb, mode=mode, epochs=request.epochs, batch_size=request.batch_size,
                            lr=request.lr, val=request.val, early_stop=request.early_stop, sets=request.sets,
                            grids=request.grids, weights=request.weights, image_size=request.image_size,
                            exact=request.exact, **_recipe_kwargs(request, mode))
    check_requirements(jobs, request.home)
    return Plan(jobs)


def check_requirements(jobs: list[JobSpec], home: str | None) -> None:
    """Before anything runs, what each job's loss needs: its CLIP pseudo-label cache, its layer4 map cache
    (a head's frozen variant in linear mode), and a mode its head or trainer supports (DataError / ConfigError
    naming the fix)."""
    from spmlbench.features.maps import maps_path
    from spmlbench.features.pseudo import pseudo_path
    from spmlbench.losses import LOSSES
    from spmlbench.train.e2e_model import LINEAR_INIT_HEADS
    from spmlbench.train.methods import TRAINERS, reads_maps

    for j in jobs:
        spec = LOSSES.get(j.loss)
        head = spec.head
        if head and j.mode == "linear-init" and head not in LINEAR_INIT_HEADS:
            raise ConfigError(f"{j.loss}: LinearInit's linear head does not load into the {head} head; "
                              f"run it with --mode e2e{' or --mode linear' if spec.trainer else ''}")
        if head and not spec.trainer and j.mode == "linear" and head not in TRAINERS:
            raise ConfigError(f"{j.loss}: trains the {head} head on the backbone's feature map, which linear mode's "
                              "pooled features do not have; run it with --mode e2e or --mode linear-init")
        if reads_maps(spec) and j.mode == "linear" and not maps_path(j.dataset, j.backbone, home).exists():
            raise DataError(f"{maps_path(j.dataset, j.backbone, home)}: {j.loss} in linear mode trains its head on "
                            f"cached layer4 maps; run 'spmlbench features {j.dataset} --backbone {j.backbone} --maps' "
                            "or use --mode e2e")
        if spec.trainer and not head and j.mode != "linear":
            raise ConfigError(f"{j.loss}: has its own model and trainer on cached features; run it with --mode linear")
        source = LOSSES.get(j.loss).pseudo
        if source and not pseudo_path(j.dataset, source, home).exists():
            raise DataError(f"{pseudo_path(j.dataset, source, home)}: loss {j.loss} reads this CLIP pseudo-label "
                            f"cache; run 'spmlbench pseudo-labels {j.dataset} --source {source}' (the clip extra) "
                            f"or leave {j.loss} out with --losses")


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


def _recipe_kwargs(opts: RunRequest, mode: str) -> dict[str, Any]:
    """The linear-recipe arguments of :func:`expand_jobs` (the grid only where the cole protocol applies)."""
    if mode != "linear":
        if opts.recipe != "cole" or opts.lr_grid is not None or opts.batch_grid is not None:
            raise ConfigError("--recipe/--lr-grid/--batch-grid: only used by --mode linear (e2e and linear-init "
                              "use each paper's recipe); drop them")
        return {}
    return {"recipe": opts.recipe, "lr_grid": opts.lr_grid, "batch_grid": opts.batch_grid}


def _set_loss(text: str) -> str:
    return parse_set(text)[0]


def _experiment_jobs(opts: RunRequest, say: Say) -> tuple[str, list[JobSpec], set[str]]:
    """An experiment's jobs as JobSpecs (CLI --set/--epochs/--batch-size/--lr on top), its name, and the
    ids of the jobs that dump predictions."""
    from spmlbench.experiments.spec import load_experiment

    assert opts.experiment
    exp = load_experiment(opts.experiment, datasets=opts.datasets or None, seeds=opts.seeds, mode=opts.mode)
    loss_filter, backbone, home = opts.losses, opts.backbone, opts.home
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
