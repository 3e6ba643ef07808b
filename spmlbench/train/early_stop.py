"""The one early-stopping rule of every trainer, and its parser.

Rules (as a job spec writes them): ``none`` (train every epoch, report the best val epoch), ``no_improve``
(stop after the first epoch whose val mAP does not improve on the best so far), ``drop:<points>`` (stop
once val mAP falls more than ``points`` below the best). The reported epoch is always the best val epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from spmlbench.errors import ConfigError

RULE_NAMES = ("none", "no_improve", "drop")
_HELP = "use none, no_improve or drop:<points >= 0>"


def canonical_rule(value: Any) -> str:
    """Any accepted spelling of a rule -> ``none`` | ``no_improve`` | ``drop:<points>``.

    Accepted: "none" / "off" / "best_val" / False; "no_improve" / "first" / "first_non_improving";
    "drop:<d>" or a number d; a mapping ``{"rule": ..., "drop": ...}``. Anything else is a ConfigError.
    """
    if value is False:
        return "none"
    if isinstance(value, Mapping):
        rule = str(value.get("rule", "drop"))
        drop = value.get("drop", value.get("early_stop_drop", 0.0))
        return _checked(rule, drop, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _checked("drop", value, value)
    text = str(value).strip().lower()
    if text in ("none", "off", "best_val"):
        return "none"
    if text in ("no_improve", "first", "first_non_improving"):
        return "no_improve"
    if text.startswith("drop"):
        return _checked("drop", text[4:].lstrip(":=> "), value)
    raise ConfigError(f"early_stop={value!r}: unknown rule; {_HELP}")


def _checked(rule: str, drop: Any, raw: Any) -> str:
    try:
        points = float(drop)
    except (TypeError, ValueError):
        points = -1.0
    if rule not in RULE_NAMES or not math.isfinite(points) or points < 0:
        raise ConfigError(f"early_stop={raw!r}: invalid rule or drop; {_HELP}")
    return f"drop:{points:g}" if rule == "drop" else rule


def parse_early_stop(rule: str) -> float | None:
    """Validate a canonical rule; the drop in points for ``drop:<x>``, else None."""
    if rule in ("none", "no_improve"):
        return None
    if isinstance(rule, str) and rule.startswith("drop:"):
        try:
            drop = float(rule[5:])
        except ValueError:
            drop = -1.0
        if drop >= 0 and math.isfinite(drop):
            return drop
    raise ConfigError(f"early_stop={rule!r}: unknown rule; {_HELP}")


class EarlyStop:
    """Tracks one run's val mAP: the best epoch and whether its rule stops training."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.drop = parse_early_stop(rule)
        self.best = -math.inf
        self.best_epoch = 0
        self.stopped = False

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch ``epoch``'s val mAP; return True when it is the new best."""
        improved = value > self.best
        if self.rule == "no_improve" and not improved and self.best_epoch > 0:
            self.stopped = True
        if improved:
            self.best, self.best_epoch = value, epoch
        if self.drop is not None and value < self.best - self.drop:
            self.stopped = True
        return improved
