"""One set of training settings per row of an experiment's table.

A results folder can hold runs of the same loss and seed under other settings (a quick ``--epochs 3``
preview, ``--val observed``, another backbone). An experiment's row must not mix them across seeds:
per row (group, dataset, loss, grid point) :func:`choose_settings` keeps the records of one settings
key, preferring the settings a plain ``spmlbench run --experiment`` gives the row (:func:`expected`).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

# training settings that change a result besides the hyperparameters (lr and batch size are the
# selected point, see experiments/selection.py)
SETTING_KEYS = ("backbone", "epochs", "val", "early_stop", "weights", "image_size", "exact")
_EXPECTED_KEYS = ("epochs", "early_stop", "val")
# only the settings are read from the planned job: a placeholder for the labels' expected positives lets
# EPR/ROLE resolve on a dataset without a published value
_META = {"expected_positives": {"computed": 1.0}}


def settings(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A record's training settings (:data:`SETTING_KEYS`, absent or NaN ones left out)."""
    out: dict[str, Any] = {}
    for key in SETTING_KEYS:
        value = rec.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key] = value.item() if hasattr(value, "item") else value
    return out


def settings_key(rec: Mapping[str, Any]) -> str:
    """:func:`settings` as canonical JSON."""
    return json.dumps(settings(rec), sort_keys=True, default=str)


@functools.lru_cache(maxsize=4096)
def _expected_cached(spec: str) -> tuple[tuple[str, Any], ...] | None:
    from spmlbench.experiments.jobs import expand_jobs

    job = json.loads(spec)
    try:
        planned = expand_jobs(
            dataset=job["dataset"], losses=[job["loss"]], seeds=[0], meta=_META, backbone="resnet50",
            mode=job.get("mode", "linear"), epochs=job.get("epochs"), batch_size=job.get("batch_size"),
            lr=job.get("lr"), val=job.get("val", "clean"), early_stop=job.get("early_stop", "paper"),
            hparams=job.get("hparams") or {},
        )
    except Exception:  # a loss or recipe this install cannot resolve: no preference
        return None
    return tuple((k, getattr(planned[0], k)) for k in _EXPECTED_KEYS)


def expected(job: Mapping[str, Any]) -> dict[str, Any] | None:
    """Epochs, early stop and val that ``spmlbench run --experiment`` (no CLI overrides) gives a cell's
    job, from the recipes; None when they cannot be resolved here."""
    spec = {k: v for k, v in job.items() if k not in ("seed", "dump_predictions")}
    got = _expected_cached(json.dumps(spec, sort_keys=True, default=str))
    return dict(got) if got is not None else None


def choose_settings(recs: Sequence[Mapping[str, Any]], keys: Sequence[str], options: Sequence[int],
                    want: dict[str, Any] | None, experiment: str) -> str | None:
    """The settings key one row uses among the records ``options`` (indices into ``recs``, whose
    :func:`settings_key` are ``keys``).

    Preferred, in order: the expected settings ``want``; the most seeds run by ``experiment``; the most
    seeds; the newest record; the key itself (ties never depend on record order).
    """
    if not options:
        return None
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for ri in options:
        by_key.setdefault(keys[ri], []).append(recs[ri])

    def rank(key: str) -> tuple[Any, ...]:
        mine = by_key[key]
        have = json.loads(key)
        at_want = want is not None and all(str(have.get(k)) == str(v) for k, v in want.items())
        own = {r.get("seed") for r in mine if r.get("experiment") == experiment}
        return (at_want, len(own), len({r.get("seed") for r in mine}),
                max(str(r.get("created", "")) for r in mine), key)

    return max(by_key, key=rank)
