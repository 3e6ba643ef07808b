"""Stacked heads grouped by seed: logits, weight gradients and predictions equal the per-config formulas."""

from __future__ import annotations

import torch

from spmlbench.train.heads import StackedHeads

SEED_OF = [1, 0, 1, 2, 0, 1]  # configs in their own order; storage groups them by seed slot
M, S, B, D, C = len(SEED_OF), 3, 4, 6, 5


def _setup() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, StackedHeads]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(M, D, C, generator=g, dtype=torch.float64)
    b = torch.randn(M, C, generator=g, dtype=torch.float64)
    xs = torch.randn(S, B, D, generator=g, dtype=torch.float64)
    return w, b, xs, StackedHeads(w.clone(), b.clone(), SEED_OF)


def test_storage_groups_configs_by_seed_and_orders_round_trip() -> None:
    w, b, _, heads = _setup()
    assert heads.seed_of == [0, 0, 1, 1, 1, 2]
    assert heads.groups == [(0, 0, 2), (1, 2, 5), (2, 5, 6)]
    assert heads.config_at.tolist() == [1, 4, 0, 2, 5, 3]
    assert torch.equal(heads.weight, w[[1, 4, 0, 2, 5, 3]]) and torch.equal(heads.bias, b[[1, 4, 0, 2, 5, 3]])
    assert torch.equal(heads.to_configs(heads.weight), w)
    assert torch.equal(heads.to_storage(w), heads.weight)
    assert heads.storage_values([10, 11, 12, 13, 14, 15]) == [11, 14, 10, 12, 15, 13]


def test_logits_and_gradients_equal_the_per_config_formulas() -> None:
    w, b, xs, heads = _setup()
    x = xs[SEED_OF]  # (M, B, D): config m's batch
    want = torch.einsum("mbd,mdc->mbc", x, w) + b[:, None, :]
    torch.testing.assert_close(heads.logits(xs), want, rtol=1e-13, atol=1e-13)
    dl = torch.randn(M, B, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dw, db = heads.grads(xs, dl)
    torch.testing.assert_close(heads.to_configs(dw), torch.einsum("mbd,mbc->mdc", x, dl), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(heads.to_configs(db), dl.sum(dim=1), rtol=1e-13, atol=1e-13)


def test_results_do_not_depend_on_the_other_heads() -> None:
    """A config's logits and gradient are bit-identical alone and inside the stacked heads."""
    w, b, xs, heads = _setup()
    dl = torch.randn(M, B, C, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    together = heads.logits(xs)
    dw = heads.to_configs(heads.grads(xs, dl)[0].clone())
    for m in range(M):
        alone = StackedHeads(w[m:m + 1].clone(), b[m:m + 1].clone(), [0])
        x = xs[SEED_OF[m]].unsqueeze(0)
        assert torch.equal(alone.logits(x), together[m:m + 1])
        assert torch.equal(alone.grads(x, dl[m:m + 1])[0], dw[m:m + 1])


def test_predict_slices_are_in_config_order() -> None:
    w, b, _, heads = _setup()
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = torch.einsum("nd,mdc->mnc", x, w) + b[:, None, :]
    torch.testing.assert_close(heads.predict(x), want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(heads.predict(x, 2, 5), want[2:5], rtol=1e-13, atol=1e-13)
    snapshot_w, snapshot_b = heads.weight.clone() * 2, heads.bias.clone() * 2  # storage order, like a best-epoch copy
    torch.testing.assert_close(heads.predict(x, 1, 4, weight=snapshot_w, bias=snapshot_b), 2 * want[1:4],
                               rtol=1e-13, atol=1e-13)
