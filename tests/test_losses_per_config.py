"""Per-config minibatches: observed (M, B, C) / index (M, B) equals M separate one-config calls.

For every loss, M = 3 configs (different hyperparameters where the loss has any) each get their
own batch (rows, observed, logits); the batched call must give, per config, the value, the logits
gradient and the state (ROLE's G and its gradient, LL-Cp's corrected matrix, EM-APL's pseudo
labels and targets) of the same config evaluated alone through the established shared-batch form.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pseudo_support import attach_test_pseudo
from spmlbench.losses import build_batched_loss, list_losses

N, C, B, M = 40, 5, 6, 3
EPOCHS = 3

VARIANTS: dict[str, list[dict[str, Any]]] = {
    "an_ls": [{}, {"ls_coef": 0.3}, {"ls_coef": 0.0}],
    "epr": [{"expected_num_pos": 1.5}, {"expected_num_pos": 3.0}, {"expected_num_pos": 0.5}],
    "role": [{"expected_num_pos": 1.5}, {"expected_num_pos": 3.0}, {"expected_num_pos": 0.5}],
    "mime": [{"expected_num_pos": 1.5}, {"expected_num_pos": 3.0, "warmup_epoch": 1}, {"expected_num_pos": 0.5, "T": 2.0}],
    "mime_vib": [{"expected_num_pos": 1.5}, {"expected_num_pos": 3.0, "warmup_epoch": 1}, {"expected_num_pos": 0.5}],
    "ll_r": [{"delta_rel": 5.0}, {"delta_rel": 10.0}, {"delta_rel": 20.0}],
    "ll_ct": [{"delta_rel": 5.0}, {"delta_rel": 10.0}, {"delta_rel": 20.0}],
    "ll_cp": [{"delta_rel": 5.0}, {"delta_rel": 10.0}, {"delta_rel": 20.0}],
    "em": [{"alpha": 0.1}, {"alpha": 0.5}, {"alpha": 0.01}],
    "em_apl": [{"warmup_epoch": 1}, {"warmup_epoch": 2, "beta": 0.3}, {"warmup_epoch": 1, "theta": 0.5}],
    "focal": [{}, {"gamma": 0.5}, {"gamma": 0.0}],
    "asl": [{}, {"gamma_pos": 1.0, "clip": 0.0}, {"gamma_neg": 2.0, "clip": 0.2}],
    "hill": [{}, {"lamb": 2.0, "margin": 0.5}, {"gamma": 0.0}],
    "splc": [{}, {"change_epoch": 3, "tau": 0.5}, {"margin": 0.0, "gamma": 1.0}],
    "gr": [{}, {"q2": 0.5, "q3": 1.5, "lag": False, "linear_init": 1}, {"use_k": False, "use_v": False}],
}


def _state(loss: Any) -> dict[str, torch.Tensor]:
    """Per-config state tensors of a loss (leading M axis)."""
    out: dict[str, torch.Tensor] = {}
    if hasattr(loss, "G"):
        out["G"] = loss.G.detach()
        if loss.G.grad is not None:
            out["G.grad"] = loss.G.grad
    for name in ("corrected", "pseudo", "target"):
        if hasattr(loss, name):
            out[name] = getattr(loss, name)
    return out


@pytest.mark.parametrize("name", list_losses())
@pytest.mark.parametrize("lazy", [False, True])
def test_per_config_batches_equal_separate_calls(name: str, lazy: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    observed_train = torch.zeros(N, C)
    observed_train[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1
    hps = VARIANTS.get(name, [{}, {}, {}])
    seeds = [0, 1, 2]
    batched = build_batched_loss(name, hps, num_classes=C, num_train=N)
    singles = [build_batched_loss(name, [hp], num_classes=C, num_train=N) for hp in hps]
    if name == "role" or not lazy:
        batched.init_state(observed_train, seeds)
        for m, single in enumerate(singles):
            single.init_state(observed_train, seeds[m])
    for loss in (batched, *singles):
        attach_test_pseudo(loss, N, C)
    orders = [torch.randperm(N, generator=gen) for _ in range(M)]
    train_logits = torch.randn(M, N, C, generator=gen) * 3
    for epoch in range(1, EPOCHS + 1):
        batched.start_epoch(epoch, EPOCHS)
        for single in singles:
            single.start_epoch(epoch, EPOCHS)
        for step in range(0, N, B):
            index = torch.stack([o[step:step + B] for o in orders])  # (M, B): a different batch per config
            observed = observed_train[index]  # (M, B, C)
            logits = (torch.randn(M, index.shape[1], C, generator=gen) * 4).requires_grad_(True)
            values = batched(logits, observed, index)
            values.sum().backward()
            for m, single in enumerate(singles):
                z = logits.detach()[m:m + 1].clone().requires_grad_(True)
                value = single(z, observed[m], index[m])
                value.sum().backward()
                torch.testing.assert_close(values[m:m + 1].detach(), value.detach(), rtol=1e-6, atol=1e-7)
                torch.testing.assert_close(logits.grad[m:m + 1], z.grad, rtol=1e-5, atol=1e-7)
        batched.end_epoch(lambda: train_logits)
        for m, single in enumerate(singles):
            single.end_epoch(lambda m=m: train_logits[m:m + 1])
        got = _state(batched)
        for m, single in enumerate(singles):
            for key, ref in _state(single).items():
                torch.testing.assert_close(got[key][m:m + 1], ref, rtol=1e-6, atol=1e-7, msg=f"{name} {key}")
    if name == "ll_cp":  # the test really exercised corrections and per-config rows
        assert bool(batched.corrected.any())
    if name == "em_apl":
        assert bool(batched.pseudo.any())


def test_shapes_are_checked() -> None:
    loss = build_batched_loss("ll_cp", [{}, {}], num_classes=C, num_train=N)
    z = torch.zeros(2, B, C)
    with pytest.raises(ValueError, match="observed must be"):
        loss(z, torch.zeros(3, B, C), torch.zeros(2, B, dtype=torch.long))
    with pytest.raises(ValueError, match="index must be"):
        loss(z, torch.zeros(2, B, C), torch.zeros(3, B, dtype=torch.long))
    with pytest.raises(ValueError, match="2 configs"):
        build_batched_loss("role", [{"expected_num_pos": 1.0}] * 2, num_classes=C, num_train=N).init_state(
            torch.zeros(N, C), [1, 2, 3])


@pytest.mark.parametrize("name", ["ll_cp", "em_apl"])
def test_shared_index_with_per_config_observed(name: str) -> None:
    # observed (M, B, C) with a shared index (B,) is an allowed combination: every config sees the same
    # rows (hence the same observed rows) and equals a one-config call on that batch.
    hps = VARIANTS[name]
    gen = torch.Generator().manual_seed(3)
    index = torch.tensor([4, 9, 1, 30])
    observed_train = torch.zeros(N, C)
    observed_train[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1
    observed = observed_train[index].expand(M, -1, -1).clone()
    logits = torch.randn(M, len(index), C, generator=gen) * 4
    batched = build_batched_loss(name, hps, num_classes=C, num_train=N)
    batched.start_epoch(2, EPOCHS)
    values = batched(logits, observed, index)
    for m, hp in enumerate(hps):
        single = build_batched_loss(name, [hp], num_classes=C, num_train=N)
        single.start_epoch(2, EPOCHS)
        torch.testing.assert_close(values[m:m + 1], single(logits[m:m + 1], observed[m], index))
    assert torch.equal(batched.store.observed[index], observed_train[index] > 0.5)
