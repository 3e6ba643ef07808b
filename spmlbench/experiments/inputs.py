"""What a plan reads from the data home, and the explicit step that makes what is missing.

Planning (:mod:`spmlbench.experiments.plan`) only reads: a dataset's labels metadata when it is prepared
(else the protocol's defaults and its data manifest), and whether each input a job needs exists. Each
missing input is a :class:`MissingInput` naming its path and the command that makes it. Nothing is
written until :func:`ensure_inputs`, which the CLI calls after planning (never on ``--dry-run``): it
prepares the offline datasets (digits) and extracts their default features, and raises the first input
it cannot make itself (a download to prepare, a feature, map or pseudo-label cache to build).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from spmlbench.errors import ConfigError, DataError
from spmlbench.modes import LINEAR

E2E_BACKBONE = "resnet50"
Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class MissingInput:
    """An input a planned job needs that is not on disk: ``kind`` (labels, features, images, maps, pseudo), its
    path, the problem and the command that makes it; ``auto``: :func:`ensure_inputs` makes it (offline data)."""

    dataset: str
    kind: str
    path: str
    problem: str
    fix: str
    auto: bool = False
    backbone: str = ""

    def message(self) -> str:
        """The one-line error of this input."""
        return f"{self.path}: {self.problem}; {self.fix}"


@dataclasses.dataclass(frozen=True)
class DatasetInputs:
    """A dataset as a plan sees it: its labels metadata (the protocol's defaults when not prepared), whether it
    is prepared, and whether spmlbench can make it offline."""

    meta: dict[str, Any]
    prepared: bool
    offline: bool


def dataset_inputs(dataset: str, home: str | os.PathLike[str] | None) -> DatasetInputs:
    """Read what the plan needs of ``dataset`` (ConfigError for an unknown dataset)."""
    from spmlbench.data.manifest import load_manifest
    from spmlbench.data.registry import get_adapter
    from spmlbench.data.store import load_labels
    from spmlbench.paths import labels_path

    adapter = get_adapter(dataset)  # unknown dataset -> ConfigError listing the known ones
    offline = not adapter.raw_files and adapter.user_supplied is None
    if labels_path(dataset, home).exists():
        return DatasetInputs(dict(load_labels(dataset, home).attrs.get("spmlbench", {})), True, offline)
    paper = load_manifest(adapter.manifest).expected_positives_paper if adapter.manifest else None
    # not prepared: the protocol's seeds (the jobs' defaults) and the published expected positives; without a
    # published value a placeholder (1 per image) until the labels give it (the plan calls such ids provisional)
    meta = {"protocol": {}, "expected_positives": {"paper": paper, "computed": None if paper is not None else 1.0}}
    return DatasetInputs(meta, False, offline)


def default_backbone(dataset: str, mode: str, backbone: str | None) -> str:
    """The backbone a job uses: the given one, else the dataset's feature backbone (linear) or ResNet-50."""
    from spmlbench.data.registry import get_adapter

    if backbone:
        return backbone
    return get_adapter(dataset).default_backbone if mode == LINEAR else E2E_BACKBONE


def data_inputs(dataset: str, backbone: str, linear: bool, ds: DatasetInputs,
                home: str | os.PathLike[str] | None) -> list[MissingInput]:
    """The labels, feature cache (linear) or images (end to end) of ``dataset`` that are missing."""
    from spmlbench.data.registry import image_root
    from spmlbench.paths import features_path, labels_path

    out: list[MissingInput] = []
    if not ds.prepared:
        out.append(MissingInput(dataset, "labels", str(labels_path(dataset, home)),
                                f"dataset {dataset!r} is not prepared",
                                f"run 'spmlbench prepare {dataset}'", auto=ds.offline))
    if linear:
        path = features_path(dataset, backbone, home)
        if not path.exists():
            auto = ds.offline and backbone == default_backbone(dataset, "linear", None)
            out.append(MissingInput(dataset, "features", str(path), f"no {backbone} features for {dataset}",
                                    f"run 'spmlbench features {dataset} --backbone {backbone}'", auto=auto,
                                    backbone=backbone))
    elif ds.prepared and not image_root(dataset, home).exists():
        out.append(MissingInput(dataset, "images", str(image_root(dataset, home)),
                                f"images of {dataset!r} are missing (end-to-end modes train on images)",
                                f"re-run 'spmlbench prepare {dataset}'"))
    return out


def mode_problems(jobs: Sequence[Any]) -> None:
    """ConfigError when a job's method cannot run in its mode (its head does not train there)."""
    from spmlbench.heads import method_of

    for j in jobs:
        problem = method_of(j.loss).supports(j.mode)
        if problem is not None:
            raise ConfigError(problem)


def missing_caches(jobs: Sequence[Any], home: str | os.PathLike[str] | None) -> list[MissingInput]:
    """The layer4 map caches (a head's frozen variant in linear mode) and CLIP pseudo-label caches that the
    jobs' losses read and that are not built (each once)."""
    from spmlbench.features.maps import maps_path
    from spmlbench.features.pseudo import pseudo_path
    from spmlbench.losses import LOSSES
    from spmlbench.heads import method_of

    out: dict[str, MissingInput] = {}
    for j in jobs:
        spec = LOSSES.get(j.loss)
        path = maps_path(j.dataset, j.backbone, home)
        if method_of(j.loss).reads_maps() and j.mode == LINEAR and not path.exists():
            out.setdefault(str(path), MissingInput(
                j.dataset, "maps", str(path), f"{j.loss} in linear mode trains its head on cached layer4 maps",
                f"run 'spmlbench features {j.dataset} --backbone {j.backbone} --maps' or use --mode e2e"))
        source = spec.pseudo
        if source and not pseudo_path(j.dataset, source, home).exists():
            p = pseudo_path(j.dataset, source, home)
            out.setdefault(str(p), MissingInput(
                j.dataset, "pseudo", str(p), f"loss {j.loss} reads this CLIP pseudo-label cache",
                f"run 'spmlbench pseudo-labels {j.dataset} --source {source}' (the clip extra) or leave {j.loss} "
                "out with --losses"))
    return list(out.values())


def check_requirements(jobs: Sequence[Any], home: str | os.PathLike[str] | None) -> None:
    """Before anything runs, what each job's loss needs: a mode its head or trainer supports (ConfigError), its
    CLIP pseudo-label cache and its layer4 map cache (DataError naming the command that builds it)."""
    mode_problems(jobs)
    for missing in missing_caches(jobs, home):
        raise DataError(missing.message())


def ensure_inputs(missing: Sequence[MissingInput], home: str | os.PathLike[str] | None,
                  say: Say = lambda _msg: None) -> bool:
    """Make the missing inputs spmlbench can make offline (prepare digits, extract its default features);
    DataError for the first one it cannot. Returns whether anything was made (the plan is then made again on
    the prepared data: digits' expected positives come from its labels)."""
    for m in missing:
        if not m.auto:
            raise DataError(m.message())
    made = False
    for m in missing:
        if m.kind == "labels":
            from spmlbench.data.prepare import prepare_dataset

            say(f"preparing {m.dataset} (offline, no download)")
            prepare_dataset(m.dataset, home=home)
        else:
            from spmlbench.features.extract import extract_features

            say(f"extracting {m.backbone} features of {m.dataset}")
            extract_features(m.dataset, m.backbone, home=home, progress=False)
        made = True
    return made
