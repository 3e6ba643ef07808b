"""The epoch engine of every trainer: epochs, the val mAP history, the early-stop rule, the best epoch, failures,
progress events and the test at the best epoch, for ``M >= 1`` members trained together (:func:`fit`).

A trainer describes its members (:class:`Member`: epochs, early-stop rule, the history of a resumed run) and
hands over its own epoch work; the engine runs every epoch from the earliest member's first to the latest's
last, each with the members active in it (not failed, not stopped, within their own epochs):

1. ``step(epoch, active)``: each active member's training pass -> its mean train loss, or a :class:`Failure`
   (the pass was cut short; the member is done);
2. ``evaluate(epoch, trained)``: the members whose pass finished -> val mAP, or a Failure (values found
   non-finite at the epoch's end, or the evaluation raised);
3. the engine records val mAP and train loss, and updates each member's rule
   (:class:`~spmlbench.train.early_stop.EarlyStop`); ``keep_best(epoch, improved)`` keeps the state of the
   members whose val mAP improved on their best;
4. ``after_epoch(epoch, finished)``: what the trainer does after a recorded epoch (e2e: checkpoints, hooks);
5. one :class:`~spmlbench.train.configs.EpochProgress` per epoch in which some member finished its pass.

After the last epoch ``test(members)`` scores, at their best epoch, every member that did not fail and each
failed one that has a best epoch (``test`` returns None for one it leaves untested). ``keep_best``,
``after_epoch`` and ``test`` may return a Failure per member too. A failed member keeps the epochs recorded
before its failure.

Val mAP is always finite (AP is in [0, 1] for any scores, NaN included: :mod:`spmlbench.train.evaluate`), so
"improved" (greater than the best so far; the first epoch always improves) needs no special case.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import SupportsFloat

from torch import nn

from spmlbench.train.configs import EpochProgress, ProgressFn
from spmlbench.train.early_stop import EarlyStop
from spmlbench.train.result import TrainResult


@dataclasses.dataclass(frozen=True)
class Failure:
    """One member's failure, as its one-line ``error``: that member stops, the others go on."""

    message: str


# (epoch, member indices) -> one value per member given, in order
StepFn = Callable[[int, list[int]], Sequence[SupportsFloat | Failure]]  # mean train loss
EvaluateFn = Callable[[int, list[int]], Sequence[float | Failure]]  # val mAP
MemberFn = Callable[[int, list[int]], Sequence[Failure | None] | None]  # keep_best / after_epoch: failures only
TestFn = Callable[[list[int]], Sequence[tuple[float, list[float]] | Failure | None]]  # (test mAP, test AP) x100


@dataclasses.dataclass
class Member:
    """One run the engine trains: its epochs and early-stop rule, its record (``result``).

    ``result`` of a resumed run holds its earlier epochs (``val_map``, ``train_loss``): the member starts after
    them and its rule and best epoch are replayed over them.
    """

    epochs: int
    rule: str = "none"
    result: TrainResult = dataclasses.field(default_factory=TrainResult)
    start: int = dataclasses.field(init=False)
    stop: EarlyStop = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stop = EarlyStop(self.rule)
        for epoch, value in enumerate(self.result.val_map, 1):
            self.stop.update(epoch, float(value))
        self.start = len(self.result.val_map) + 1
        self.result.epochs_run = len(self.result.val_map)
        self.result.best_epoch = self.stop.best_epoch

    @classmethod
    def resumed(cls, epochs: int, rule: str, val_map: Sequence[float], train_loss: Sequence[float]) -> Member:
        """A member whose first ``len(val_map)`` epochs ran before (a checkpoint's history)."""
        return cls(epochs, rule, TrainResult(val_map=list(val_map), train_loss=list(train_loss)))

    @property
    def stopped(self) -> bool:
        """Whether its early-stop rule has stopped it."""
        return self.stop.stopped

    def runs(self, epoch: int) -> bool:
        """Whether it trains in ``epoch`` (not failed, not stopped, within its epochs)."""
        return self.result.status == "ok" and not self.stop.stopped and self.start <= epoch <= self.epochs


def fit(members: Sequence[Member], *, step: StepFn, evaluate: EvaluateFn, keep_best: MemberFn | None = None,
        after_epoch: MemberFn | None = None, test: TestFn | None = None,
        progress: ProgressFn | None = None) -> list[TrainResult]:
    """Train ``members`` together (see the module doc for the callbacks); their results, in order."""
    if not members:
        return []
    last = max(m.epochs for m in members)
    for epoch in range(min(m.start for m in members), last + 1):
        active = [i for i, m in enumerate(members) if m.runs(epoch)]
        if not active or not _epoch(members, epoch, active, step, evaluate, keep_best, after_epoch):
            continue  # nobody trains in this epoch, or every pass was cut short: no progress event
        if progress is not None:
            progress(EpochProgress(epoch, last, len(members), best_so_far(members)))
    if test is not None:
        chosen = [i for i, m in enumerate(members) if m.result.status == "ok" or m.result.best_epoch > 0]
        for i, out in zip(chosen, test(chosen) if chosen else []):
            if isinstance(out, Failure):
                _fail(members[i], out)
            elif out is not None:
                members[i].result.test_map, members[i].result.test_ap = out
    return [m.result for m in members]


def best_so_far(members: Sequence[Member]) -> float:
    """The best val mAP of any member so far (NaN before any)."""
    done = [m.result.val_map[m.result.best_epoch - 1] for m in members if m.result.best_epoch > 0]
    return max(done) if done else math.nan


def _epoch(members: Sequence[Member], epoch: int, active: list[int], step: StepFn, evaluate: EvaluateFn,
           keep_best: MemberFn | None, after_epoch: MemberFn | None) -> bool:
    """One epoch of the ``active`` members; whether any finished its training pass."""
    losses: dict[int, SupportsFloat] = {}
    for i, out in zip(active, step(epoch, active)):
        if isinstance(out, Failure):
            _fail(members[i], out)
        else:
            losses[i] = out
    trained = list(losses)
    if not trained:
        return False
    finished: list[int] = []
    improved: list[int] = []
    for i, val in zip(trained, evaluate(epoch, trained)):
        if isinstance(val, Failure):
            _fail(members[i], val)
            continue
        finished.append(i)
        if _record(members[i], epoch, float(val), float(losses[i])):
            improved.append(i)
    if improved and keep_best is not None:
        _fail_some(members, improved, keep_best(epoch, improved))
    finished = [i for i in finished if members[i].result.status == "ok"]
    if finished and after_epoch is not None:
        _fail_some(members, finished, after_epoch(epoch, finished))
    return True


def _record(member: Member, epoch: int, val: float, loss: float) -> bool:
    """Record one epoch's val mAP and train loss; whether it is the member's new best."""
    r = member.result
    r.val_map.append(val)
    r.train_loss.append(loss)
    r.epochs_run = epoch
    improved = member.stop.update(epoch, val)
    if improved:
        r.best_epoch = epoch
    return improved


def _fail(member: Member, failure: Failure) -> None:
    member.result.status, member.result.error = "failed", failure.message


def _fail_some(members: Sequence[Member], idx: list[int], outs: Sequence[Failure | None] | None) -> None:
    for i, out in zip(idx, outs or ()):
        if out is not None:
            _fail(members[i], out)


class BestModule:
    """One module's state at its member's best epoch (``keep_best``: a copy when it improves; ``restore``: it is
    loaded back for the test)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.state = copy.deepcopy(module.state_dict())

    def keep_best(self, epoch: int, improved: list[int]) -> None:
        """Copy the module's current state (the engine calls this when the member improved)."""
        self.state = copy.deepcopy(self.module.state_dict())

    def restore(self) -> None:
        """Load the best state back into the module."""
        self.module.load_state_dict(self.state)
