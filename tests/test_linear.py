"""Batched linear trainer: equals the one-config reference loop, deterministic, matched seeds, failures."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import spmlbench.losses as losses_mod
from spmlbench.train import linear as linear_mod
from spmlbench.train import optim as optim_mod
from spmlbench.train import reference as reference_mod
from spmlbench.train.linear import EarlyStop, TrainConfig, train_linear
from spmlbench.train.optim import BatchedAdam
from spmlbench.train.reference import train_reference
from test_linear_support import synthetic_data

HP = {"epr": {"expected_num_pos": 1.6}, "role": {"expected_num_pos": 1.6},
      "em_apl": {"warmup_epoch": 2, "alpha": 0.1, "beta": 0.3}, "mime": {"expected_num_pos": 1.6, "warmup_epoch": 1},
      "mime_vib": {"expected_num_pos": 1.6, "warmup_epoch": 1}}


def cfg(loss: str, seed: int = 0, **kw) -> TrainConfig:
    base = dict(loss=loss, hparams=tuple(sorted(HP.get(loss, {}).items())), seed=seed, lr=3e-2, batch_size=8,
                epochs=5, early_stop="none")
    base.update(kw)
    return TrainConfig(**base)


def assert_same(a, b, tol: float = 1e-4) -> None:
    assert a.status == b.status and a.error == b.error
    assert a.epochs_run == b.epochs_run and a.best_epoch == b.best_epoch
    assert a.val_map == pytest.approx(b.val_map, abs=tol)
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4, abs=1e-6)
    assert a.test_map == pytest.approx(b.test_map, abs=tol)
    assert a.test_ap == pytest.approx(b.test_ap, abs=tol)


def test_batched_equals_reference_loop() -> None:
    data = synthetic_data()
    configs = [cfg(name, seed, epochs=4) for name in ("bce", "an", "role", "ll_cp", "em_apl", "gr", "splc", "epr")
               for seed in (0, 1)]
    configs += [cfg("gr", 2, early_stop="drop:0.5", lr=0.3), cfg("em", 1, early_stop="no_improve"),
                cfg("ll_r", 0, val="observed", batch_size=16, epochs=3)]
    fast = train_linear(data, configs)
    slow = train_reference(data, configs)
    for c, a, b in zip(configs, fast, slow):
        assert a.status == "ok", (c, a.error)
        assert_same(a, b)
    # the fixture is a real learning problem: training improves on the first epoch
    assert max(fast[0].val_map) > fast[0].val_map[0]
    # the rules really stopped some configs early
    assert any(r.epochs_run < c.epochs for c, r in zip(configs, fast))


def test_determinism() -> None:
    data = synthetic_data()
    configs = [cfg(n, s, epochs=3) for n in ("an", "role", "gr") for s in (0, 3)]
    a = train_linear(data, configs)
    b = train_linear(data, configs)
    assert [dataclasses.asdict(r) for r in a] == [dataclasses.asdict(r) for r in b]
    assert a[0].val_map != a[1].val_map  # seeds matter


def test_matched_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loss with seed s sees the same head init (first logits) and the same batches, in both paths."""
    seen: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def spy(build, tag):
        def wrapped(name, *args, **kwargs):
            loss = build(name, *args, **kwargs)
            calls = seen.setdefault((tag, name), [])
            original = loss.check_inputs  # every path (forward, value_and_grad) checks its inputs once

            def check_inputs(logits, observed, index=None):
                calls.append((logits.detach().clone(), index.clone()))
                return original(logits, observed, index)

            loss.check_inputs = check_inputs
            return loss
        return wrapped

    monkeypatch.setattr(losses_mod, "build_batched_loss", spy(losses_mod.build_batched_loss, "batched"))
    data = synthetic_data()
    configs = [cfg(n, 4, epochs=2) for n in ("an", "gr", "role")]
    train_linear(data, configs)
    an, gr, role = (seen.pop(("batched", n)) for n in ("an", "gr", "role"))
    train_reference(data, configs[:1])  # build_loss wraps a one-config batched loss: the spy sees it too
    ref = [(logits[0], index) for logits, index in seen.pop(("batched", "an"))]
    assert len(an) == len(gr) == len(role) == len(ref) == 2 * 12
    assert torch.equal(an[0][0], gr[0][0]) and torch.equal(an[0][0], role[0][0])  # same init: same first logits
    assert torch.allclose(an[0][0][0], ref[0][0], atol=1e-5)
    for (_, i1), (_, i2), (_, i3), (_, i4) in zip(an, gr, role, ref):
        assert i1.shape == (1, 8) and i4.shape == (8,)  # the batched path passes per-config (M, B) rows
        assert torch.equal(i1, i2) and torch.equal(i1, i3) and torch.equal(i1[0], i4)
    assert not torch.equal(an[0][1], an[12][1])  # a new order every epoch
    seen.clear()
    train_linear(data, [cfg("an", 5, epochs=1)])
    assert not torch.equal(seen[("batched", "an")][0][1], an[0][1])  # another seed, another order
    seen.clear()
    train_linear(data, [cfg("an", 4, epochs=1), cfg("an", 5, epochs=1)])  # one call, a batch per seed
    both = seen[("batched", "an")][0][1]
    assert both.shape == (2, 8) and torch.equal(both[0], an[0][1][0]) and not torch.equal(both[0], both[1])


def test_non_finite_config_fails_alone() -> None:
    data = synthetic_data()
    good = [cfg("epr", 0, epochs=3), cfg("gr", 0, epochs=3)]
    bad = cfg("epr", 0, epochs=3, hparams=(("expected_num_pos", 1e30),))  # regulariser overflows float32
    with_bad = train_linear(data, [good[0], bad, good[1]])
    alone = train_linear(data, good)
    assert with_bad[1].status == "failed"
    assert "non-finite" in with_bad[1].error and "epoch 1" in with_bad[1].error
    assert with_bad[1].error == train_reference(data, [bad])[0].error
    for a, b in zip([with_bad[0], with_bad[2]], alone):
        assert_same(a, b, tol=0)


def test_non_finite_config_fails_alone_among_seeds() -> None:
    """With several seeds the heads are stored by seed: the failed config's head is the one reset."""
    data = synthetic_data()
    good = [cfg("epr", 1, epochs=3), cfg("gr", 0, epochs=3), cfg("an", 1, epochs=3), cfg("epr", 2, epochs=3)]
    bad = cfg("epr", 0, epochs=3, hparams=(("expected_num_pos", 1e30),))
    mixed = train_linear(data, [good[0], bad, *good[1:]])
    assert mixed[1].status == "failed" and "epoch 1" in (mixed[1].error or "")
    for a, c in zip([mixed[0], *mixed[2:]], good):
        assert a.status == "ok"
        assert_same(a, train_linear(data, [c])[0], tol=0)


def test_early_stop_rules_by_hand() -> None:
    def run(rule: str, values: list[float]) -> tuple[int, int]:
        es = EarlyStop(rule)
        for e, v in enumerate(values, start=1):
            es.update(e, v)
            if es.stopped:
                return e, es.best_epoch
        return len(values), es.best_epoch

    assert run("drop:2", [50, 53, 51.5, 50.9, 60]) == (4, 2)  # 50.9 < 53 - 2
    assert run("drop:3", [50, 53, 51.5, 50.9, 60]) == (5, 5)
    assert run("no_improve", [1, 2, 2, 5]) == (3, 2)
    assert run("none", [3, 1, 2]) == (3, 1)


@pytest.mark.parametrize("fused", [True, False])
def test_batched_adam_equals_torch_adam(fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optim_mod, "FUSED_MIN_NUMEL", 0)  # exercise the fused kernel on a small tensor
    torch.manual_seed(0)
    lrs = [1e-2, 1e-2, 1e-3, 1e-1]
    w = torch.randn(4, 5, 3)
    mine = w.clone().requires_grad_(True)
    ref = [torch.nn.Parameter(w[m].clone()) for m in range(4)]
    opts = [torch.optim.Adam([ref[m]], lr=lrs[m], foreach=False) for m in range(4)]
    opt = BatchedAdam([mine], [lrs], fused=fused)
    for _ in range(15):
        target = torch.randn(4, 5, 3)
        ((mine - target) ** 4).sum().backward()
        opt.step()
        opt.zero_grad()
        for m in range(4):
            ((ref[m] - target[m]) ** 4).sum().backward()
            opts[m].step()
            opts[m].zero_grad()
    for m in range(4):
        torch.testing.assert_close(mine[m].detach(), ref[m].detach(), rtol=1e-5, atol=1e-6)


def test_batched_adam_fused_path_is_safe_for_non_contiguous_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's fused CPU Adam reads storage linearly; a strided gradient must still give torch.optim.Adam's step."""
    monkeypatch.setattr(optim_mod, "FUSED_MIN_NUMEL", 0)
    torch.manual_seed(1)
    w = torch.randn(3, 6, 4)
    grad = torch.randn(3, 4, 6).transpose(1, 2)  # (3, 6, 4), not contiguous
    mine = w.clone()
    BatchedAdam([mine], [[0.1] * 3], fused=True).step([grad])
    for m in range(3):
        ref = torch.nn.Parameter(w[m].clone())
        ref.grad = grad[m].contiguous()
        torch.optim.Adam([ref], lr=0.1, foreach=False).step()
        torch.testing.assert_close(mine[m], ref.detach(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="not contiguous"):
        BatchedAdam([torch.randn(3, 4, 6).transpose(1, 2)], [[0.1] * 3])


def test_modules_use_the_real_registry() -> None:
    assert linear_mod.uses_clean_labels("bce") and not linear_mod.uses_clean_labels("an")
    assert reference_mod.train_one.__module__ == "spmlbench.train.reference"


def test_thread_count_is_scoped() -> None:
    data = synthetic_data()
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    seen: list[int] = []
    train_linear(data, [cfg("an", 0, epochs=1)], threads=want,
                 progress=lambda p: seen.append(torch.get_num_threads()))
    assert seen == [want]  # training ran with the requested count
    assert torch.get_num_threads() == before  # and it was restored


def test_result_does_not_depend_on_the_cohort() -> None:
    """A job's numbers are the same trained alone or inside any cohort (the promise behind job-id resume).

    The cohort (16 losses x 3 seeds, 352 x 16 head) is big enough for the optimiser's large-tensor
    path while a config alone is not: both must give bit-identical results.
    """
    data = synthetic_data(d=352, c=16)
    n = data.x_train.shape[0]
    gen = torch.Generator().manual_seed(4)
    data.pseudo.update(vlpl=torch.rand(n, 2, 1, 16, generator=gen) * 0.3, damp=torch.rand(n, 2, 17, 16, generator=gen) * 0.3)
    names = list(losses_mod.LOSSES.names())
    together = train_linear(data, [cfg(n, s, epochs=2, lr=1e-3) for n in names for s in (0, 1, 2)])
    for k, name in enumerate(names):
        alone = train_linear(data, [cfg(name, 1, epochs=2, lr=1e-3)])[0]
        assert dataclasses.asdict(alone) == dataclasses.asdict(together[3 * k + 1]), name


def test_val_labels_follow_val_mode_and_match_sklearn() -> None:
    """val mAP uses the clean val labels by default and the observed single positives with val=observed."""
    from sklearn.metrics import average_precision_score

    data = synthetic_data()
    seen: dict[int, torch.Tensor] = {}
    configs = [cfg("an", 0, epochs=2), cfg("an", 0, epochs=2, val="observed")]
    res = train_linear(data, configs, on_val=lambda e, idx, p: seen.update({(e, i): p[k].clone() for k, i in enumerate(idx)}))

    def sk_map(p: torch.Tensor, y: torch.Tensor) -> float:
        return 100 * sum(average_precision_score(y[:, c], p[:, c]) if y[:, c].any() else 0.0
                         for c in range(y.shape[1])) / y.shape[1]

    for e in (1, 2):
        assert res[0].val_map[e - 1] == pytest.approx(sk_map(seen[(e, 0)].numpy(), data.y_val.numpy()), abs=1e-9)
        assert res[1].val_map[e - 1] == pytest.approx(sk_map(seen[(e, 1)].numpy(), data.s_val.numpy()), abs=1e-9)
    assert res[0].val_map != res[1].val_map
    assert res[0].test_ap == res[1].test_ap  # same training, test always on clean labels


def test_epoch_summary_finds_the_first_bad_step_and_its_kind() -> None:
    from spmlbench.train.linear import _epoch_summary

    nan, inf = float("nan"), float("inf")
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [nan, 2.0, 3.0, 6.0], [1.0, 2.0, inf, 8.0]])
    logit_sums = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, nan, -inf, 0.0]], dtype=torch.float64)
    mean, first, kind = _epoch_summary(values, logit_sums)
    assert first.tolist() == [2, 3, 3, -1]
    assert kind.tolist() == [2, 1, 1, 0]  # config 2: logits and loss bad at step 3 -> logits
    assert mean[1].item() == 2.0 and mean[3].item() == 6.0 and math.isnan(mean[0].item())


def test_fused_and_autograd_paths_train_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer takes fused losses' gradients from value_and_grad and the others' from autograd:
    switching every loss to autograd gives the same numbers."""
    data = synthetic_data()
    names = ("gr", "em_apl", "ll_cp", "role", "an", "focal")
    configs = [cfg(n, s, epochs=2) for n in names for s in (0, 1)]
    fused = train_linear(data, configs)
    switched = [n for n in names if losses_mod.batched_class(n).fused_grad]
    assert "gr" in switched  # the fused path is really exercised
    for n in switched:
        monkeypatch.setattr(losses_mod.batched_class(n), "fused_grad", False)
    plain = train_linear(data, configs)
    for c, a, b in zip(configs, fused, plain):
        assert a.status == "ok", (c, a.error)
        assert_same(a, b, tol=1e-5)
