"""Jobs: one fully resolved training run (dataset, loss, hparams, seed, mode, settings) and its id.

``JobSpec`` is frozen and holds the *resolved* values (recipe defaults from
``spmlbench/data_manifests/recipes.toml``, per-dataset loss defaults, user overrides), so its id (sha256 of
its canonical JSON) changes whenever anything that affects the result changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from spmlbench.errors import ConfigError, LossError
from spmlbench.experiments.recipes import LINEAR_RECIPES, check_choice, e2e_recipe, linear_protocol, paper_recipe
from spmlbench.train.early_stop import canonical_rule
from spmlbench.train.configs import TrainConfig, freeze_hparams
from spmlbench.modes import LINEAR, MODES

VAL_MODES = ("clean", "observed")
MAX_EPOCHS, MAX_BATCH = 10_000, 1_000_000  # beyond: a typo that would run for days, silently
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 4096
E2E_FIELDS = ("weights", "image_size", "exact")
_E2E_DEFAULTS: dict[str, Any] = {"weights": None, "image_size": None, "exact": False}
_OPTIONAL = (*E2E_FIELDS, "loss_source", "loss_version")
_OPTIONAL_DEFAULTS: dict[str, Any] = {**_E2E_DEFAULTS, "loss_source": None, "loss_version": 1}
_NOT_IN_ID = ("recipe",)  # what produced the job, not what decides its result


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One job, fully resolved. ``hparams``: sorted ``(name, value)`` pairs (lists as tuples).

    ``early_stop`` is the resolved rule: ``none``, ``no_improve`` or ``drop:<points>``.
    """

    dataset: str
    loss: str
    hparams: tuple[tuple[str, Any], ...]
    mode: str
    seed: int
    label_seed: int
    split_seed: int
    backbone: str
    epochs: int
    batch_size: int
    lr: float
    val: str
    early_stop: str
    # end-to-end modes only; left out of the canonical JSON at their defaults (job ids stay stable)
    weights: str | None = None  # backbone weights (None: the registry's default)
    image_size: int | None = None  # input size (None: the backbone's, 448 for ResNet-50)
    exact: bool = False  # fp32 / deterministic reproduction numerics
    # a plugin loss's source sha256 (16 hex): an edited plugin gets new job ids; None for built-ins
    loss_source: str | None = None
    # a built-in loss's declared version (``register_loss(..., version=N)``): a corrected formula gets new
    # job ids; left out of the id at 1, so ids made before versions existed stay valid
    loss_version: int = 1
    # the recipe that gave the settings: ``cole`` / ``paper`` (linear) or the e2e recipe family; recorded, not
    # part of the id (equal settings give equal results whichever recipe named them)
    recipe: str = dataclasses.field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the spec that decides its result (hparams as a dict with lists; e2e-only
        fields and the loss version when not at their defaults; the recipe name left out)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_IN_ID}
        out["hparams"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams}
        for name in _OPTIONAL:
            if out[name] == _OPTIONAL_DEFAULTS[name]:
                del out[name]
        return out

    def canonical_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the input of :attr:`job_id`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def job_id(self) -> str:
        """First 16 hex characters of the sha256 of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def train_config(self) -> TrainConfig:
        """The trainer's view of this job."""
        return TrainConfig(self.loss, self.hparams, self.seed, self.lr, self.batch_size, self.epochs,
                           self.early_stop, self.val)

    def cohort_key(self) -> tuple[Any, ...]:
        """Jobs with the same key can be trained together (same data, batch size and epochs).

        End-to-end jobs (modes ``e2e``, ``linear-init``) each train alone: the key holds the job id.
        """
        key = (self.dataset, self.backbone, self.label_seed, self.split_seed, self.mode, self.batch_size, self.epochs)
        return key if self.mode == LINEAR else (*key, self.job_id)


def parse_set(text: str) -> tuple[str, str, Any]:
    """``loss.param=value`` -> ``(loss, param, value)`` (value JSON-decoded when possible)."""
    from spmlbench.losses import parse_override

    return parse_override(text)


def parse_grid(text: str) -> tuple[str, str, list[Any]]:
    """``loss.param=v1,v2,...`` -> ``(loss, param, [v1, v2, ...])``; a JSON list value is one point."""
    key, sep, raw = text.partition("=")
    loss, dot, param = key.strip().partition(".")
    if not sep or not dot or not loss or not param or not raw.strip():
        raise ConfigError(f"--grid {text!r}: expected LOSS.PARAM=V1,V2,...; e.g. gr.q3=1,1.5")
    values: list[Any] = []
    depth, start = 0, 0
    raw = raw.strip()
    for i, ch in enumerate(raw + ","):  # split on commas outside brackets
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            part = raw[start:i].strip()
            if not part:
                raise ConfigError(f"--grid {text!r}: empty value; give comma-separated values")
            try:
                values.append(json.loads(part))
            except json.JSONDecodeError:
                values.append(part)
            start = i + 1
    return loss, param.strip(), values


def resolve_hparams(loss: str, dataset: str, overrides: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """All hyperparameters of ``loss`` on ``dataset``: paper < dataset defaults < ``overrides``.

    A ``check()`` that raises (a plugin's bug, :class:`~spmlbench.errors.LossError`) gives the unchecked
    values: the job is planned and fails alone when its loss is built. Where the loss needs the expected number of positives and the dataset has no published value
    (e.g. ``digits``), it comes from the labels metadata (``expected_positives``).
    """
    from spmlbench.losses import dataset_defaults, get_loss, loss_info
    from spmlbench.losses import resolve_hparams as resolve
    from spmlbench.hparams import unchecked_hparams

    over = dict(overrides)
    info = loss_info(loss)
    if "expected_num_pos" in info.defaults and "expected_num_pos" not in over:
        if dataset_defaults(loss, dataset).get("expected_num_pos") is None and info.defaults["expected_num_pos"] is None:
            exp = meta.get("expected_positives", {}) or {}
            value = exp.get("paper") if exp.get("paper") is not None else exp.get("computed")
            if value is not None:
                over["expected_num_pos"] = float(value)
    try:
        return resolve(loss, dataset, **over).as_dict()
    except LossError:  # a plugin's check() raised: its jobs exist and fail when trained, the others run
        return unchecked_hparams(get_loss(loss).params, dataset_defaults(loss, dataset), over)


def check_image_size(image_size: int | None) -> None:
    """ConfigError unless ``--image-size`` is unset or in [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE]."""
    if image_size is not None and not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size {image_size}: must be a whole number in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] "
                          "(the backbones downsample by 32); e.g. --image-size 224")


def check_image_options(mode: str, weights: str | None, image_size: int | None, exact: bool) -> None:
    """``--weights``, ``--image-size`` and ``--exact`` are for the modes that train on images (ConfigError)."""
    if mode != "linear":
        check_image_size(image_size)  # before the data is looked at ("negative strides" inside numpy, before)
        return
    for name, value in (("weights", weights), ("image-size", image_size), ("exact", exact or None)):
        if value is not None:
            raise ConfigError(f"--{name}: only used by --mode e2e or linear-init (linear reads cached features); "
                              "drop it or change --mode")


def expand_jobs(
    *,
    dataset: str,
    losses: Sequence[str],
    seeds: Sequence[int],
    meta: Mapping[str, Any],
    backbone: str,
    mode: str = "linear",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    val: str = "clean",
    early_stop: str = "paper",
    sets: Sequence[str] = (),
    grids: Sequence[str] = (),
    hparams: Mapping[str, Any] | None = None,
    label_seed: int | None = None,
    split_seed: int | None = None,
    weights: str | None = None,
    image_size: int | None = None,
    exact: bool = False,
    recipe: str = "cole",
    lr_grid: Sequence[float] | None = None,
    batch_grid: Sequence[int] | None = None,
) -> list[JobSpec]:
    """Jobs for every loss x grid point x seed, resolved against recipes and the labels metadata ``meta``.

    Linear mode with ``recipe="cole"`` (default): every loss gets Cole et al.'s budget (25 epochs,
    no early stop) and one job per (lr, batch) point of the protocol's grid (``lr_grid`` /
    ``batch_grid`` replace it; a given ``lr`` or ``batch_size`` fixes that axis); which point
    counts is decided later from the records (:mod:`spmlbench.experiments.selection`).
    ``recipe="paper"``: each paper's recipe transposed to a linear head (one point).

    ``sets``/``grids``: ``loss.param=value`` / ``loss.param=v1,v2``; ``hparams``: overrides applied
    to every loss (experiment specs). ``label_seed``/``split_seed``: default the prepared dataset's
    (``meta``). Modes ``e2e``/``linear-init`` take their defaults from the e2e recipes and accept
    ``weights`` (``default`` | ``none``), ``image_size`` and ``exact``. Invalid names or values raise
    ConfigError.
    """
    from spmlbench.losses import LOSSES

    check_image_options(mode, weights, image_size, exact)
    if weights is not None and weights not in ("default", "none"):
        raise ConfigError(f"--weights {weights!r}: unknown; choose default or none")
    check_image_size(image_size)
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: unknown; choose one of: {', '.join(MODES)}")
    check_choice("recipe", recipe, LINEAR_RECIPES)
    if (lr_grid is not None or batch_grid is not None) and (mode != "linear" or recipe != "cole"):
        raise ConfigError("--lr-grid/--batch-grid: only used by --mode linear with --recipe cole (the selection "
                          "protocol); drop them or change --mode/--recipe")
    if val not in VAL_MODES:
        raise ConfigError(f"--val {val!r}: unknown; choose clean or observed")
    if early_stop != "paper":
        try:
            early_stop = canonical_rule(early_stop)
        except ConfigError:
            raise ConfigError(f"--early-stop {early_stop!r}: unknown; choose paper, none, no_improve or drop:<points>") from None
    for name, value, top in (("epochs", epochs, MAX_EPOCHS), ("batch-size", batch_size, MAX_BATCH)):
        if value is not None and not 1 <= value <= top:
            raise ConfigError(f"--{name} {value}: must be a whole number in [1, {top}]")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"--lr {lr}: must be a finite number > 0 (e.g. 1e-3)")
    for loss in losses:
        LOSSES.get(loss)
    fixed: dict[str, dict[str, Any]] = {}
    for text in sets:
        loss, param, value = parse_set(text)
        LOSSES.get(loss)
        if loss not in losses:
            raise ConfigError(f"--set {text}: loss {loss!r} is not in this run; add it to --losses or drop the --set")
        fixed.setdefault(loss, {})[param] = value
    axes: dict[str, list[tuple[str, list[Any]]]] = {}
    for text in grids:
        loss, param, values = parse_grid(text)
        LOSSES.get(loss)
        if loss not in losses:
            raise ConfigError(f"--grid {text}: loss {loss!r} is not in this run; add it to --losses or drop the --grid")
        axes.setdefault(loss, []).append((param, values))
    if label_seed is None:
        label_seed = int(meta.get("protocol", {}).get("label_seed", 1200))
    if split_seed is None:
        split_seed = int(meta.get("protocol", {}).get("split_seed", 1200))
    extra: dict[str, Any] = {"weights": None if weights in (None, "default") else weights,
                             "image_size": image_size, "exact": bool(exact)}
    protocol = linear_protocol(list(lr_grid) if lr_grid is not None else None,
                               list(batch_grid) if batch_grid is not None else None)
    jobs: list[JobSpec] = []
    for loss in losses:
        spec = LOSSES.get(loss)
        source = spec.source_hash or None
        if mode == LINEAR and recipe == "cole":
            n_epochs, rule, points = protocol.epochs, protocol.early_stop, protocol.points(lr, batch_size)
            recipe_name = recipe
        else:
            rec = paper_recipe(loss, dataset) if mode == LINEAR else e2e_recipe(loss, dataset)
            n_epochs, rule = rec.epochs, rec.early_stop
            points = [(float(lr if lr is not None else rec.lr), int(batch_size or rec.batch_size))]
            recipe_name = recipe if mode == LINEAR else rec.family
        if early_stop != "paper":
            rule = early_stop
        params = [p for p, _ in axes.get(loss, [])]
        for point in itertools.product(*(v for _, v in axes.get(loss, []))):
            over = {**dict(hparams or {}), **fixed.get(loss, {}), **dict(zip(params, point))}
            hp = freeze_hparams(resolve_hparams(loss, dataset, over, meta))
            for p_lr, p_batch in points:
                for seed in seeds:
                    jobs.append(JobSpec(
                        dataset=dataset, loss=loss, hparams=hp, mode=mode, seed=int(seed),
                        label_seed=int(label_seed), split_seed=int(split_seed), backbone=backbone,
                        epochs=epochs or n_epochs, batch_size=p_batch, lr=p_lr, val=val, early_stop=rule,
                        loss_source=source, loss_version=spec.version, recipe=recipe_name, **extra,
                    ))
    return list(dict.fromkeys(jobs))
