"""The training modes, named once: ``linear`` (heads on cached features, many configs at once), ``e2e`` (the
backbone fine-tuned on images with each method's recipe) and ``linear-init`` (a linear phase, then e2e)."""

from __future__ import annotations

LINEAR = "linear"
E2E = "e2e"
LINEAR_INIT = "linear-init"
MODES = (LINEAR, E2E, LINEAR_INIT)
