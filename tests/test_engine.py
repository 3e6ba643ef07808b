"""The epoch engine (spmlbench.train.engine): epochs, the stop rule, best epochs, failures, progress, resume."""

from __future__ import annotations

import math

import torch

from spmlbench.train.configs import EpochProgress
from spmlbench.train.e2e_job import scores_map
from spmlbench.train.engine import Failure, Member, fit
from spmlbench.train.evaluate import mean_ap


def _fit(members: list[Member], vals: dict[int, list[float]], fail: dict[tuple[str, int], int] | None = None,
         **kw) -> tuple[list, list[tuple[str, int, list[int]]], list[EpochProgress]]:
    """Run ``fit`` with scripted val mAP (member -> per epoch) and failures ((phase, member) -> epoch)."""
    fail = fail or {}
    calls: list[tuple[str, int, list[int]]] = []
    events: list[EpochProgress] = []

    def out(phase: str, epoch: int, idx: list[int], value) -> list:
        calls.append((phase, epoch, list(idx)))
        return [Failure(f"{phase} {i}") if fail.get((phase, i)) == epoch else value(i) for i in idx]

    res = fit(members, step=lambda e, idx: out("step", e, idx, lambda i: 0.5 * e),
              evaluate=lambda e, idx: out("evaluate", e, idx, lambda i: vals[i][e - 1]),
              keep_best=lambda e, idx: out("keep_best", e, idx, lambda i: None),
              after_epoch=lambda e, idx: out("after_epoch", e, idx, lambda i: None),
              test=lambda idx: out("test", 0, idx, lambda i: (float(i), [float(i)])),
              progress=events.append, **kw)
    return res, calls, events


def test_rules_best_epochs_failures_and_the_test() -> None:
    vals = {0: [50.0, 52.0, 51.0, 53.0], 1: [40.0, 45.0, 44.0, 46.0], 2: [10.0, 20.0, 30.0, 40.0],
            3: [60.0, 61.0, 62.0, 63.0]}
    members = [Member(4, "none"), Member(4, "no_improve"), Member(4), Member(4)]
    res, calls, events = _fit(members, vals, {("evaluate", 2): 3, ("step", 3): 1})
    assert [r.val_map for r in res] == [vals[0], vals[1][:3], vals[2][:2], []]
    assert [r.best_epoch for r in res] == [4, 2, 2, 0]
    assert [r.status for r in res] == ["ok", "ok", "failed", "failed"]
    assert (res[2].error, res[3].error) == ("evaluate 2", "step 3")
    assert res[0].train_loss == [0.5, 1.0, 1.5, 2.0] and res[1].epochs_run == 3
    assert members[1].stopped and not members[0].stopped
    assert ("keep_best", 3, [1]) not in calls and ("keep_best", 2, [0, 1, 2]) in calls
    assert ("after_epoch", 3, [0, 1]) in calls  # the member failing at evaluation does not get it
    assert ("test", 0, [0, 1, 2]) in calls  # ok members, and a failed one that has a best epoch
    assert res[2].test_map == 2.0 and math.isnan(res[3].test_map)
    assert [(p.epoch, p.epochs, p.configs, p.best_val_map) for p in events] == \
        [(1, 4, 4, 50.0), (2, 4, 4, 52.0), (3, 4, 4, 52.0), (4, 4, 4, 53.0)]


def test_no_progress_when_every_pass_was_cut_short() -> None:
    res, calls, events = _fit([Member(3)], {0: [1.0, 2.0, 3.0]}, {("step", 0): 2})
    assert res[0].val_map == [1.0] and res[0].error == "step 0" and res[0].test_map == 0.0
    assert [p.epoch for p in events] == [1]
    assert not [c for c in calls if c[1] == 3]


def test_resumed_members_replay_the_rule_and_start_after_their_history() -> None:
    vals = {0: [50.0, 49.0, 48.0, 47.0], 1: [10.0, 20.0, 30.0, 40.0], 2: [5.0, 6.0]}
    members = [Member.resumed(4, "no_improve", vals[0][:2], [9.0, 9.0]),  # stopped before it was killed
               Member.resumed(4, "none", vals[1][:1], [9.0]),
               Member(2, "none")]
    assert (members[0].start, members[0].stopped, members[0].result.best_epoch) == (3, True, 1)
    assert (members[1].start, members[1].result.best_epoch, members[1].result.epochs_run) == (2, 1, 1)
    res, calls, _ = _fit(members, vals)
    assert [c for c in calls if c[0] == "step"] == [("step", 1, [2]), ("step", 2, [1, 2]), ("step", 3, [1]),
                                                    ("step", 4, [1])]
    assert res[0].val_map == vals[0][:2] and res[0].best_epoch == 1 and res[0].test_map == 0.0
    assert res[1].val_map == vals[1] and res[1].train_loss == [9.0, 1.0, 1.5, 2.0] and res[1].best_epoch == 4


def test_val_map_is_always_finite() -> None:
    """Why "improved" needs no first-epoch special case: AP of any scores (NaN, inf) is a finite number."""
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    scores = torch.tensor([[math.nan, 0.2], [math.inf, -math.nan], [0.5, -math.inf], [math.nan, math.nan]])
    assert math.isfinite(float(mean_ap(scores, labels)))
    assert math.isfinite(float(mean_ap(scores.double(), labels)))  # the torch path (not the CPU float32 one)
    assert math.isfinite(scores_map(torch.full((4, 2), math.nan), labels)[0])
