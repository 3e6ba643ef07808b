"""Per-step caches and host-side flags of the losses: they follow dtype/device, epochs and state loads."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from device_support import DEVICES, no_host_sync
from pseudo_support import attach_test_pseudo
from spmlbench.losses import LOSSES, build_batched_loss, build_loss, list_losses
from spmlbench.losses.builtin.role import ROLELoss

NAMES = list_losses()


def _an_ls_hand(z: float, ls: float, eps: float) -> float:
    """AN-LS loss of one unobserved entry with logit ``z``, in Python float64."""
    p = 1 / (1 + math.exp(-z))
    lp, ln = -math.log(p + eps), -math.log(1 - p + eps)
    return (1 - ls) * ln + ls * lp


def test_cached_hparams_follow_the_logits_dtype() -> None:
    # ls_coef = 0.1 is not a float32 number: a float32 column reused for float64 logits would be
    # off by ~1e-9 relative (ls rounded to 0.100000001490116), far outside rel=1e-13.
    loss = build_batched_loss("an_ls", [{"ls_coef": 0.1}, {"ls_coef": 0.3}], num_classes=1)
    obs = torch.zeros(1, 1)
    want = [_an_ls_hand(2.0, ls, 1e-5) for ls in (0.1, 0.3)]
    z32 = torch.full((2, 1, 1), 2.0)
    v32 = loss(z32, obs)  # fills the float32 cache first
    assert v32.dtype == torch.float32
    assert v32.tolist() == pytest.approx(want, rel=1e-6)
    v64 = loss(z32.double(), obs)
    assert v64.dtype == torch.float64
    assert v64.tolist() == pytest.approx(want, rel=1e-13)
    assert loss.col("ls_coef", z32.double()).view(-1).tolist() == [0.1, 0.3]  # exact float64 values
    assert loss.col("ls_coef", z32).view(-1).tolist() == [torch.tensor(0.1).item(), torch.tensor(0.3).item()]
    # the module converted to float64 (.to / .double clear the caches) gives the same float64 values
    loss = loss.to(torch.float64)
    assert loss(z32.double(), obs).tolist() == pytest.approx(want, rel=1e-13)
    assert loss(z32, obs).dtype == torch.float32
    # and the columns follow the device of the logits (meta: no data, only placement)
    meta = loss.col("eps", torch.empty(2, 1, 1, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (2, 1, 1)
    assert loss.col("eps", z32).device.type == "cpu"


def test_gr_schedule_cache_follows_epochs_and_dtypes() -> None:
    # a loss stepped through epochs 1..5 (caches filled at every epoch) must equal a fresh one
    # started at epoch 5 directly, in float32 and float64
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 6, 4, generator=g, dtype=torch.float64) * 2
    obs = torch.zeros(6, 4)
    stepped = build_batched_loss("gr", [{}], num_classes=4)
    for epoch in range(1, 6):
        stepped.start_epoch(epoch, 8)
        stepped(z.float(), obs)
        stepped(z, obs)
    fresh = build_batched_loss("gr", [{}], num_classes=4)
    fresh.start_epoch(5, 8)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(stepped(z.to(dtype), obs), fresh(z.to(dtype), obs))
    # epoch 5 of 8, beta=[0,2,-2,-2], alpha=[0.5,2,0.8,0.5] (lag): w = 0 + 2*4/8, mu = 0.5 + 0.3*5/8,
    # sigma = 2 - 1.5*5/8 = 1.0625 (all exact binary fractions)
    assert fresh._shaped("w", z, 2).view(-1).tolist() == [1.0]
    assert fresh._shaped("mu", z, 2).view(-1).tolist() == [0.6875]
    assert fresh._two_var(z, 2).view(-1).tolist() == [2 * 1.0625**2]


def _trained_role() -> tuple[ROLELoss, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n, c = 10, 4
    obs = torch.zeros(n, c)
    obs[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
    loss = build_batched_loss("role", [{"expected_num_pos": 1.5}], num_classes=c, num_train=n)
    loss.init_state(obs, seed=3)
    opt = torch.optim.SGD([loss.G], lr=5.0)
    for _ in range(3):
        idx = torch.arange(0, 5)
        opt.zero_grad()
        loss(torch.randn(1, 5, c, generator=g), obs[idx], idx).sum().backward()
        opt.step()
    return loss, obs  # type: ignore[return-value]


def test_role_restored_from_state_dict_keeps_g_and_needs_no_init() -> None:
    trained, obs = _trained_role()
    z, idx = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(2)), torch.arange(5, 10)
    fresh = build_batched_loss("role", [{"expected_num_pos": 1.5}], num_classes=4, num_train=10)
    with pytest.raises(RuntimeError, match="not initialised"):
        fresh(z, obs[idx], idx)
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.G, trained.G)
    # the G of an untouched init differs (training moved it): loading did not re-initialise
    reinit = build_batched_loss("role", [{"expected_num_pos": 1.5}], num_classes=4, num_train=10)
    reinit.init_state(obs, seed=3)
    assert not torch.equal(fresh.G, reinit.G)
    assert torch.equal(fresh(z, obs[idx], idx), trained(z, obs[idx], idx))
    # the per-step check reads the host flag set at load time, not the buffer
    fresh.initialised.fill_(False)
    fresh(z, obs[idx], idx)
    # loading the state of an uninitialised ROLE turns the flag off again
    fresh.load_state_dict(build_batched_loss("role", [{"expected_num_pos": 1.5}], num_classes=4,
                                             num_train=10).state_dict())
    with pytest.raises(RuntimeError, match="not initialised"):
        fresh(z, obs[idx], idx)


@pytest.mark.parametrize("name", ["ll_cp", "em_apl"])
def test_lazy_recording_flag_restored_from_state_dict(name: str) -> None:
    obs = torch.eye(4)[[0, 1, 2, 3, 0, 1]]
    loss = build_batched_loss(name, [{}], num_classes=4, num_train=6)
    loss.start_epoch(1, 3)
    loss(torch.zeros(1, 3, 4), obs[:3], torch.arange(3))
    half = build_batched_loss(name, [{}], num_classes=4, num_train=6)
    half.load_state_dict(loss.state_dict())
    assert not half.store.all_recorded  # rows 3..5 still missing: keep recording
    half(torch.zeros(1, 3, 4), obs[3:], torch.arange(3, 6))
    assert torch.equal(half.store.observed, obs.bool()) and bool(half.store.seen.all())
    half.start_epoch(2, 3)  # the epoch start notices every row is in
    assert half.store.all_recorded
    full = build_batched_loss(name, [{}], num_classes=4, num_train=6)
    full.load_state_dict(half.state_dict())
    assert full.store.all_recorded and torch.equal(full.store.observed, obs.bool())
    # once complete, batches no longer write to the stored matrix
    full(torch.zeros(1, 3, 4), torch.ones(3, 4), torch.arange(3))
    assert torch.equal(full.store.observed, obs.bool())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_step_does_not_synchronise(name: str, device: str) -> None:
    """Every loss's autograd step, epoch after epoch; on CUDA without one host synchronisation once the epoch's
    first step has filled the caches."""
    n, c = 12, 5
    obs = torch.eye(c)[torch.arange(n) % c].to(device)
    fields = {f.name for f in dataclasses.fields(LOSSES.get(name).params)}
    cfg = {"expected_num_pos": 1.5} if "expected_num_pos" in fields else {}  # EPR, ROLE, MIME: the dataset's
    loss = build_loss(name, num_classes=c, num_train=n, **cfg).to(device)
    loss.init_state(obs, 0)
    attach_test_pseudo(loss, n, c)  # VLPL, AEVLP: their cached CLIP cosines
    z = torch.randn(6, c, device=device, requires_grad=True)
    idx = torch.arange(6, device=device)
    for epoch in (1, 3):
        loss.start_epoch(epoch, 3)
        loss(z, obs[idx], idx).backward()  # first step of the epoch fills the caches
        with no_host_sync(device):
            for _ in range(2):
                loss(z, obs[idx], idx).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
