"""The cost model that splits linear configs over processes: its formula by hand, the state it counts, the
split it leads to at COCO size, and the CPU float mode every trainer runs in (denormals flushed)."""

from __future__ import annotations

import math

import pytest
import torch

from spmlbench.train.configs import TrainConfig
from spmlbench.train.cost_model import CostModel, UnitCosts, measure_units, state_entries
from spmlbench.train.parallel import split_configs

ROLE = (("expected_num_pos", 2.9),)
UNITS = UnitCosts(fixed_s=2e-4, call_s=5e-5, head_s=3e-4, adam_s=1e-9, eval_s=5e-6)  # COCO-like, as measured


def cfg(loss: str, seed: int = 0, **kw) -> TrainConfig:
    return TrainConfig(loss, ROLE if loss == "role" else (), seed=seed, lr=1e-4, batch_size=8, epochs=1, **kw)


def test_state_entries_count_the_learnable_loss_state_without_allocating_it() -> None:
    assert state_entries(cfg("role"), 65665, 80) == 65665 * 80  # ROLE's label logits, one config
    assert state_entries(cfg("an"), 65665, 80) == 0 and state_entries(cfg("ll_cp"), 65665, 80) == 0
    assert state_entries(TrainConfig("role"), 100, 4) == 0  # cannot build (no expected_num_pos): registry cost only


def test_step_run_and_part_costs_by_hand() -> None:
    from spmlbench.losses import LOSSES

    model = CostModel(UNITS, num_train=80, num_classes=4, num_val=20, num_test=30)
    an, role = LOSSES.get("an").step_cost, LOSSES.get("role").step_cost
    assert model.step_s(cfg("an"), 3) == pytest.approx(5e-5 * an + 3 * 3e-4)
    assert model.step_s(cfg("role"), 2) == pytest.approx(5e-5 * role + 2 * (3e-4 + 1e-9 * 320))
    # 10 steps of batch 8 over 80 rows, 1 epoch; scoring: 20 val rows per epoch + 30 test rows, per config
    assert model.run_s(cfg("an"), 3) == pytest.approx(10 * model.step_s(cfg("an"), 3) + 3 * 5e-6 * 50)
    # a part: each cohort's own step work once, each loss call once (two seeds of an share a call)
    part = [cfg("an", 0), cfg("an", 1), cfg("role", 0)]
    want = 10 * 2e-4 + model.run_s(cfg("an"), 2) + model.run_s(cfg("role"), 1)
    assert model.part_s(part) == pytest.approx(want)


def test_at_coco_size_the_label_matrix_is_split_and_both_parts_carry_a_fair_share() -> None:
    from spmlbench.losses import default_losses

    configs = [cfg(loss, s) for loss in default_losses() for s in (0, 1, 2)]  # the benchmark's 48
    model = CostModel(UNITS, num_train=65665, num_classes=80, num_val=16416, num_test=40137)
    groups = split_configs(configs, 2, model)
    role_parts = [sum(configs[i].loss == "role" for i in g) for g in groups]
    assert sorted(role_parts) == [1, 2]  # ROLE's call alone is more than half the work: halved
    loads = [model.part_s([configs[i] for i in g]) for g in groups]
    assert max(loads) / min(loads) < 1.1
    # the registry's VOC-sized constants alone keep ROLE whole and load one part far more (the run)
    old = split_configs(configs, 2)
    old_loads = [model.part_s([configs[i] for i in g]) for g in old]
    assert max(old_loads) / min(old_loads) > 1.5


def test_measured_units_are_positive_and_finite() -> None:
    from test_linear_support import synthetic_data

    # features wide enough that a config's head costs clearly more than the timing noise (at the fixture's 12
    # dimensions a config is ~1 us a step: under load the measured difference could clamp to 0)
    data = synthetic_data(n_train=256, d=512, c=20)
    u = measure_units(data, 8)
    assert all(math.isfinite(v) and v >= 0 for v in vars(u).values())
    assert u.head_s > 0 and u.adam_s > 0 and u.eval_s > 0


def test_flushing_denormals_leaves_adam_parameters_bit_identical() -> None:
    """Adam's moments of entries whose gradient stays 0 decay into the denormal range (x86 is 10x slower
    there); flushed they are 0, and the parameters come out bit for bit the same."""
    from spmlbench.runtime import flush_denormals, flushes_denormals
    from spmlbench.train.optim import BatchedAdam

    def run(flush: bool) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        p = torch.randn(2, 64, 8, generator=gen)  # ROLE-like: (M, N, C), a few rows touched per step
        opt = BatchedAdam([p], [[1e-2, 1e-3]])
        ctx = flush_denormals("cpu") if flush else torch.no_grad()
        with ctx:
            for t in range(1000):
                g = torch.zeros_like(p)
                g[:, (t * 7) % 4] = torch.randn(2, 8, generator=gen)  # rows 0-3 only: rows 4-63 decay
                if t == 0:
                    g[:, 4:] = 1e-3 * torch.randn(2, 60, 8, generator=gen)
                opt.step([g])
        return p, opt.exp_avg[0]

    assert not flushes_denormals()
    p_ref, m_ref = run(False)
    assert not flushes_denormals()  # the mode is restored after the block
    p_new, m_new = run(True)
    tiny = (m_ref != 0) & (m_ref.abs() < torch.finfo(torch.float32).tiny)
    assert tiny.any()  # the reference really holds denormal moments (so this test can fail)
    assert torch.equal(p_new, p_ref)
    assert torch.equal(m_new[~tiny], m_ref[~tiny]) and bool((m_new[tiny] == 0).all())


def test_roles_label_matrix_trains_bit_identically_with_denormals_flushed(monkeypatch: pytest.MonkeyPatch) -> None:
    """ROLE's update through the batched trainer: 6,400 rows at batch 8 leave every row 800 steps untouched
    per epoch, so its Adam moments reach the denormal range; flushed or not, G and every score agree."""
    import contextlib

    from test_linear_support import synthetic_data

    from spmlbench.train import linear
    from spmlbench.train.linear import train_linear

    data = synthetic_data(n_train=6400, n_val=40, n_test=40, d=4, c=3)
    config = TrainConfig("role", (("expected_num_pos", 1.5),), seed=0, lr=1e-3, batch_size=8, epochs=2,
                         early_stop="none")
    fast = train_linear(data, [config], keep_best=True, threads=1)[0]
    monkeypatch.setattr(linear, "flush_denormals", lambda device: contextlib.nullcontext())
    slow = train_linear(data, [config], keep_best=True, threads=1)[0]
    assert fast.val_map == slow.val_map and fast.test_ap == slow.test_ap and fast.train_loss == slow.train_loss
    g_fast, g_slow = fast.best_state["loss"]["G"], slow.best_state["loss"]["G"]
    assert g_fast.shape == (1, 6400, 3) and torch.equal(g_fast, g_slow)
