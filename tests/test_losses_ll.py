"""Large Loss Matters (LL-R, LL-Ct, LL-Cp): k per epoch, tie rule, permanent flips, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from spmlbench.losses import build_loss
from spmlbench.losses.builtin._large_loss import ll_num_selected


def sp(x: float) -> float:
    """softplus: -log(sigmoid(-x)) = AN loss of a negative with logit x."""
    return math.log1p(math.exp(x))


def test_k_per_epoch() -> None:
    # ll_r/ll_ct: ceil(B C (1 - clean_rate)), clean_rate = 1 less delta_rel / 100 per epoch in floats (the
    # release's arithmetic); ll_cp: ceil(B C delta_rel / 100); epoch 1: 0
    assert [ll_num_selected(16, 20, e, 0.2, False) for e in range(1, 6)] == [0, 1, 2, 2, 3]  # 0.64, 1.28, 1.92, 2.56
    assert [ll_num_selected(16, 20, e, 0.5, False) for e in range(1, 5)] == [0, 2, 4, 5]  # 1.6, 3.2, 4.8
    assert [ll_num_selected(16, 20, e, 0.1, True) for e in range(1, 5)] == [0, 1, 1, 1]  # 0.32 every epoch
    # float drift decides, as in the release: 1 - 0.005 five times leaves 0.9749999999999999..., so
    # 320 * 0.025000000000000022 = 8.000000000000007 -> 9 (rounding first would give 8); COCO 33, not 32
    assert ll_num_selected(16, 20, 6, 0.5, False) == 9
    assert ll_num_selected(16, 80, 6, 0.5, False) == 33
    assert ll_num_selected(16, 20, 5, 0.5, False) == 7  # 320 * 0.020000000000000018 = 6.4...
    assert ll_num_selected(2, 2, 9, 90, False) == 4  # capped at B*C


# one image, 5 classes, class 0 observed; unobserved AN losses softplus(3), softplus(2), softplus(-1), softplus(1)
Z1 = torch.tensor([[0.0, 3.0, 2.0, -1.0, 1.0]], dtype=torch.float64)
S1 = torch.tensor([[1, 0, 0, 0, 0]])


def _value(name: str, epoch: int, z: torch.Tensor = Z1, **kw: float) -> float:
    loss = build_loss(name, num_classes=5, num_train=4, **kw)
    loss.start_epoch(epoch, 10)
    return float(loss(z, S1, torch.tensor([0])))


def test_ll_r_rejects_k_largest_per_epoch() -> None:
    # delta_rel = 20 %: k = ceil(5 (e-1) 0.2) = e - 1
    base = [sp(-0.0), sp(3.0), sp(2.0), sp(-1.0), sp(1.0)]
    for epoch, rejected in ((1, []), (2, [1]), (3, [1, 2]), (4, [1, 2, 4])):
        want = sum(v for i, v in enumerate(base) if i not in rejected) / 5
        assert _value("ll_r", epoch, delta_rel=20) == pytest.approx(want, rel=1e-12)


def test_ll_ct_corrects_k_largest_per_epoch() -> None:
    base = [sp(-0.0), sp(3.0), sp(2.0), sp(-1.0), sp(1.0)]
    corrected = [sp(-0.0), sp(-3.0), sp(-2.0), sp(1.0), sp(-1.0)]  # -log p
    for epoch, chosen in ((1, []), (2, [1]), (3, [1, 2]), (4, [1, 2, 4])):
        want = sum(corrected[i] if i in chosen else base[i] for i in range(5)) / 5
        assert _value("ll_ct", epoch, delta_rel=20) == pytest.approx(want, rel=1e-12)


def test_tie_rule_selects_every_entry_at_the_kth_value() -> None:
    z = torch.tensor([[0.0, 2.0, 2.0, -1.0, 1.0]], dtype=torch.float64)
    # k = ceil(5 * 1 * 0.1) = 1, but two entries tie at the largest loss softplus(2) -> both rejected
    want_r = (math.log(2) + sp(-1.0) + sp(1.0)) / 5  # 0.6931472 + 0.3132617 + 1.3132617 = 2.3196706
    assert want_r == pytest.approx(2.3196706 / 5, abs=1e-7)
    assert _value("ll_r", 2, z, delta_rel=10) == pytest.approx(want_r, rel=1e-12)
    want_ct = (math.log(2) + 2 * sp(-2.0) + sp(-1.0) + sp(1.0)) / 5
    assert _value("ll_ct", 2, z, delta_rel=10) == pytest.approx(want_ct, rel=1e-12)


def test_observed_positive_never_selected() -> None:
    # all unobserved losses tiny, the observed positive's loss is large: still only unobserved ones are ranked
    z = torch.tensor([[-9.0, -5.0, -6.0, -7.0, -8.0]], dtype=torch.float64)
    want = (sp(9.0) + 0 + sp(-6.0) + sp(-7.0) + sp(-8.0)) / 5  # k = 1 rejects class 1 (z = -5)
    assert _value("ll_r", 2, z, delta_rel=10) == pytest.approx(want, rel=1e-12)


def test_ll_cp_flips_persist_to_later_batches_and_epochs() -> None:
    # N = 3 images, C = 4; batch of 2: k = ceil(8 * 10 / 100) = 1 (constant in every epoch >= 2)
    obs_train = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    loss = build_loss("ll_cp", num_classes=4, num_train=3, delta_rel=10)
    z_a = torch.tensor([[2.0, -1.0, 4.0, 0.0], [0.5, 1.0, -2.0, -3.0]], dtype=torch.float64)
    z_b = torch.tensor([[2.0, 1.5, 4.0, 0.0], [0.0, 0.0, 1.0, -0.5]], dtype=torch.float64)

    loss.start_epoch(1, 3)  # epoch 1: plain AN, nothing stored
    v = float(loss(z_a, obs_train[[0, 1]], torch.tensor([0, 1])))
    assert v == pytest.approx((sp(-2) + sp(-1) + sp(4) + sp(0) + sp(0.5) + sp(-1) + sp(-2) + sp(-3)) / 8, rel=1e-12)
    assert int(loss.batched.corrected.sum()) == 0

    loss.start_epoch(2, 3)  # largest unobserved loss: image 0, class 2 (z = 4) -> flipped for good
    v = float(loss(z_a, obs_train[[0, 1]], torch.tensor([0, 1])))
    assert v == pytest.approx((sp(-2) + sp(-1) + sp(-4) + sp(0) + sp(0.5) + sp(-1) + sp(-2) + sp(-3)) / 8, rel=1e-12)
    flipped = loss.batched.observed_matrix()[0]
    assert flipped[0].tolist() == [True, False, True, False]
    assert int(flipped.sum()) == 3  # 2 recorded positives (image 2 not seen yet) + 1 flip

    # a later batch with image 0: (0, 2) now counts as observed positive; k = 1 picks (0, 1) (z = 1.5)
    v = float(loss(z_b, obs_train[[0, 2]], torch.tensor([0, 2])))
    want = (sp(-2) + sp(-1.5) + sp(-4) + sp(0) + sp(0) + sp(0) + sp(-1) + sp(-0.5)) / 8
    assert v == pytest.approx(want, rel=1e-12)
    loss.start_epoch(3, 3)  # flips persist into the next epoch
    assert loss.batched.observed_matrix()[0, 0].tolist() == [True, True, True, False]

    # ll_ct on the same sequence does not remember: (0, 2) is unobserved again and corrected only if selected
    ct = build_loss("ll_ct", num_classes=4, delta_rel=10)
    ct.start_epoch(2, 3)
    ct(z_a, obs_train[[0, 1]], torch.tensor([0, 1]))
    v = float(ct(z_b, obs_train[[0, 2]], torch.tensor([0, 2])))
    want = (sp(-2) + sp(1.5) + sp(-4) + sp(0) + sp(0) + sp(0) + sp(-1) + sp(-0.5)) / 8  # (0, 2) z=4 selected again
    assert v == pytest.approx(want, rel=1e-12)


def test_ll_cp_init_state_equals_lazy_recording() -> None:
    obs_train = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    eager = build_loss("ll_cp", num_classes=4, num_train=3, delta_rel=10)
    eager.init_state(obs_train)
    lazy = build_loss("ll_cp", num_classes=4, num_train=3, delta_rel=10)
    z = torch.tensor([[2.0, -1.0, 4.0, 0.0], [0.5, 1.0, -2.0, -3.0]], dtype=torch.float64)
    for loss in (eager, lazy):
        loss.start_epoch(2, 3)
    assert float(eager(z, obs_train[[0, 1]], torch.tensor([0, 1]))) == float(lazy(z, obs_train[[0, 1]], torch.tensor([0, 1])))
    assert torch.equal(eager.batched.observed_matrix()[:, :2], lazy.batched.observed_matrix()[:, :2])
    assert eager.batched.observed_matrix()[0, 2].tolist() == [False, False, True, False]  # given up front
    assert not lazy.batched.observed_matrix()[0, 2].any()  # not seen yet


def test_k_beyond_the_unobserved_count_never_touches_observed_positives() -> None:
    # delta_rel 90 %: k = ceil(5 * 0.9) = 5 > 4 unobserved entries, so the k-th largest "unobserved
    # loss" is the 0 of the observed entry; only the 4 unobserved entries are rejected, the observed
    # positive keeps its AN loss softplus(9).
    z = torch.tensor([[-9.0, -5.0, -6.0, 1.0, 2.0]], dtype=torch.float64)
    assert _value("ll_r", 2, z, delta_rel=90) == pytest.approx(sp(9.0) / 5, rel=1e-12)


def test_authors_per_dataset_settings() -> None:
    # snucml/LargeLossMatters issue #4: delta_rel LL-R / LL-Ct / LL-Cp per dataset, and its optimiser and lr
    from spmlbench.experiments.recipes import e2e_recipe
    from spmlbench.losses import defaults_source, resolve_hparams

    want = {"voc": [0.2, 0.2, 0.1], "coco": [0.4, 0.2, 0.2], "nuswide": [0.4, 0.2, 0.2], "cub": [0.4, 0.4, 0.2]}
    for ds, deltas in want.items():
        assert [resolve_hparams(n, ds).delta_rel for n in ("ll_r", "ll_ct", "ll_cp")] == deltas
        assert "LargeLossMatters issue #4" in defaults_source("ll_ct", ds)
    voc = e2e_recipe("ll_r", "voc")
    assert (voc.optimizer, voc.lr, voc.momentum, voc.weight_decay, voc.head_lr_mult) == ("sgd", 5e-3, 0.9, 1e-3, 10.0)
    assert [(e2e_recipe("ll_cp", ds).optimizer, e2e_recipe("ll_cp", ds).lr) for ds in ("coco", "nuswide", "cub")] == [
        ("adam", 1e-5), ("adam", 1e-5), ("adam", 7.5e-5)]
    assert resolve_hparams("boostlu_ll_r", "voc").delta_rel == 0.5  # BoostLU keeps its own config.py values


def test_sgd_recipe_builds_the_releases_sgd() -> None:
    from types import SimpleNamespace

    from torch import nn

    from spmlbench.experiments.recipes import e2e_recipe
    from spmlbench.train.e2e_job import build_optimizer as _optimizer

    model = SimpleNamespace(backbone=nn.Linear(3, 3), head=nn.Linear(3, 2))
    opt = _optimizer(model, nn.Module(), e2e_recipe("ll_r", "voc"), torch.device("cpu"), exact=True)  # type: ignore[arg-type]
    assert isinstance(opt, torch.optim.SGD)
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == [(5e-3, 0.9, 1e-3),
                                                                                       (5e-2, 0.9, 1e-3)]
