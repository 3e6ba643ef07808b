"""The reference tester: every registered loss against its released function (the registry's ``reference``).

For each loss with a reference, each dataset's official settings (``resolve_hparams(loss, dataset)``: VOC 20,
COCO 80, NUS-WIDE 81, CUB 312 classes), float64 and float32, random (N(0, 2.5^2)) and extreme (|z| up to 30)
logits, one observed positive per row, and every epoch of a 10-epoch schedule where the loss has one: the
suite's plain formula and the transcribed release (``cases.py``, ``release_*.py``) give the same batch value
and the same gradient in the logits. A loss without a reference is listed as skipped ("no reference").

``python tests/reference/test_reference.py`` prints each loss's reference and its largest differences.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from cases import CASES, NUM_EPOCHS  # noqa: E402

from spmlbench.losses import LOSSES, resolve_hparams  # noqa: E402
from spmlbench.losses.plain import reduce_value  # noqa: E402

DATASETS = {"voc": 20, "coco": 80, "nuswide": 81, "cub": 312}
BATCH = 16
# largest relative difference allowed: value |a - b| / |b|; gradient max|ga - gb| / max|gb|
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}
# documented departures that exceed the tolerance, with their bound and reason (docs/fidelity.md)
ALLOWED = {
    ("aevlp", torch.float32): (5e-3, "the suite's 1 - p = sigmoid(-z) is more accurate than the release's "
                                     "1 - sigmoid(z) in float32 (test_aevlp_float32_is_closer_to_float64)"),
}


def inputs(classes: int, kind: str, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor, torch.Generator]:
    """``(z, s, gen)``: logits, one observed positive per row, and a generator for the case's extra inputs."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        z = torch.randn(BATCH, classes, generator=gen, dtype=torch.float64) * 2.5
    else:  # saturated logits of both signs, jittered so that no two losses tie
        levels = torch.tensor([-30.0, -15.0, -5.0, 5.0, 15.0, 30.0], dtype=torch.float64)
        z = levels[torch.randint(0, 6, (BATCH, classes), generator=gen)]
        z = z + torch.rand(BATCH, classes, generator=gen, dtype=torch.float64)
    s = torch.zeros(BATCH, classes, dtype=torch.bool)
    s[torch.arange(BATCH), torch.randint(0, classes, (BATCH,), generator=gen)] = True
    return z.to(dtype), s, gen


def value_and_grad(fn: object, z: Tensor) -> tuple[Tensor, Tensor]:
    """``fn(z)`` and its gradient in ``z``."""
    x = z.clone().requires_grad_(True)
    v = fn(x)  # type: ignore[operator]
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


def differences(name: str, dataset: str, dtype: torch.dtype) -> tuple[float, float]:
    """Largest relative value and gradient differences of ``name`` against its release on ``dataset``."""
    definition = LOSSES.get(name)
    hp = resolve_hparams(name, dataset)
    epochs = range(1, NUM_EPOCHS + 1) if definition.scheduled else (1,)
    worst_v = worst_g = 0.0
    for seed, kind in enumerate(("random", "extreme", "random", "extreme")):
        for epoch in epochs:
            z, s, gen = inputs(DATASETS[dataset], kind, dtype, seed)
            args, reference = CASES[name](hp, z, s, epoch, gen)
            va, ga = value_and_grad(lambda x: reduce_value(definition.formula(hp, x, s, *args), x), z)
            vb, gb = value_and_grad(reference, z)
            worst_v = max(worst_v, float((va - vb).abs() / vb.abs().clamp_min(1e-30)))
            worst_g = max(worst_g, float((ga - gb).abs().max() / gb.abs().max().clamp_min(1e-30)))
    return worst_v, worst_g


def _params() -> list[object]:
    out = []
    for name in LOSSES.names():
        if not LOSSES.get(name).builtin:
            continue
        marks = [] if LOSSES.get(name).reference else [pytest.mark.skip(reason=f"{name}: no reference")]
        out += [pytest.param(name, ds, dt, marks=marks, id=f"{name}-{ds}-{str(dt)[6:]}")
                for ds in DATASETS for dt in TOLERANCE]
    return out


@pytest.mark.parametrize(("name", "dataset", "dtype"), _params())
def test_matches_the_release(name: str, dataset: str, dtype: torch.dtype) -> None:
    assert name in CASES, f"{name} declares reference {LOSSES.get(name).reference!r}; add its case to cases.py"
    value, grad = differences(name, dataset, dtype)
    tolerance = ALLOWED.get((name, dtype), (TOLERANCE[dtype], ""))[0]
    assert value <= tolerance and grad <= tolerance, (value, grad)


def test_aevlp_float32_is_closer_to_float64() -> None:
    # pseudo positives at z in [10, 16]: the release's float32 1 - p loses digits that sigmoid(-z) keeps
    hp = resolve_hparams("aevlp", "voc")
    z, s, gen = inputs(20, "random", torch.float64, 0)
    z = 10 + 6 * torch.rand(z.shape, generator=gen, dtype=torch.float64)
    args, reference = CASES["aevlp"](hp, z, s, 3, gen)
    truth = value_and_grad(reference, z)[1]
    suite = value_and_grad(lambda x: reduce_value(LOSSES.get("aevlp").formula(hp, x, s, *args), x), z.float())[1]
    release = value_and_grad(reference, z.float())[1]
    err_suite, err_release = float((suite - truth).abs().max()), float((release - truth).abs().max())
    assert err_suite < err_release / 10, (err_suite, err_release)


def test_every_declared_reference_is_tested() -> None:
    declared = {n for n in LOSSES.names() if LOSSES.get(n).reference}
    assert declared == set(CASES), sorted(declared ^ set(CASES))


def main() -> None:
    """Print each loss, its reference and its largest differences (over datasets, inputs and epochs)."""
    print("| loss | reference | value f64 | grad f64 | value f32 | grad f32 |")
    print("|---|---|---|---|---|---|")
    for name in LOSSES.names():
        ref = LOSSES.get(name).reference
        if not ref:
            print(f"| {name} | no reference | | | | |")
            continue
        cells = []
        for dtype in TOLERANCE:
            worst = [differences(name, ds, dtype) for ds in DATASETS]
            cells += [f"{max(w[0] for w in worst):.1e}", f"{max(w[1] for w in worst):.1e}"]
        print(f"| {name} | {ref} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
