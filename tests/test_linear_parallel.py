"""Linear configs split over processes: whole loss calls per process, same numbers as one process."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spmlbench.errors import ConfigError
from spmlbench.train.linear import TrainConfig, train_linear
from spmlbench.train.parallel import split_configs
from test_linear_support import synthetic_data


def cfg(loss: str, seed: int, **kw) -> TrainConfig:
    hp = {"role": (("expected_num_pos", 1.6),), "em_apl": (("alpha", 0.1), ("beta", 0.3), ("warmup_epoch", 1))}
    base = dict(loss=loss, hparams=hp.get(loss, ()), seed=seed, lr=3e-2, batch_size=8, epochs=2, early_stop="none")
    base.update(kw)
    return TrainConfig(**base)


def test_split_keeps_loss_calls_whole_and_balances_cost() -> None:
    configs = [cfg(n, s) for n in ("an", "role", "gr", "bce", "em_apl") for s in (0, 1, 2)]
    groups = split_configs(configs, 2)
    assert sorted(i for g in groups for i in g) == list(range(15))
    for g in groups:  # every loss lives in exactly one group
        assert all(configs[i].loss in {configs[j].loss for j in g} for i in g)
    losses = [{configs[i].loss for i in g} for g in groups]
    assert not (losses[0] & losses[1])
    assert "role" in losses[0] and len(losses[0]) < len(losses[1])  # the expensive call goes alone-ish
    # ROLE (4.1) + 3 heads vs gr 2.2 + em_apl 2.3 + an 1 + bce 1 + 12 heads: 4.55 vs 8.3 -> role with the lightest
    assert split_configs(configs, 1) == [list(range(15))]
    assert len(split_configs(configs[:3], 4)) == 1  # one loss call cannot be split
    # configs of one loss with a different batch size are a separate call
    mixed = [cfg("an", 0), cfg("an", 0, batch_size=16)]
    assert sorted(map(len, split_configs(mixed, 2))) == [1, 1]


def test_two_processes_equal_one_process_bit_for_bit() -> None:
    data = synthetic_data()
    configs = [cfg(n, s) for n in ("an", "role", "gr", "em_apl", "ll_cp") for s in (0, 1)]
    configs.append(cfg("an", 2, batch_size=16, early_stop="no_improve"))
    seen_events: list[tuple[int, int]] = []
    dumps: dict[tuple[int, int], torch.Tensor] = {}

    def on_val(epoch: int, idx: list[int], probs: torch.Tensor) -> None:
        for k, i in enumerate(idx):
            dumps[(epoch, i)] = probs[k].clone()

    one_dumps: dict[tuple[int, int], torch.Tensor] = {}
    one = train_linear(data, configs, threads=1,
                       on_val=lambda e, idx, p: one_dumps.update({(e, i): p[k].clone() for k, i in enumerate(idx)}))
    two = train_linear(data, configs, threads=2, processes=2, on_val=on_val,
                       progress=lambda p: seen_events.append((p.epoch, p.configs)))
    for c, a, b in zip(configs, one, two):
        assert dataclasses.asdict(a) == dataclasses.asdict(b), c
    assert set(dumps) == set(one_dumps)
    for key, probs in one_dumps.items():
        assert torch.equal(dumps[key], probs), key
    assert sorted({e for e, _ in seen_events}) == [1, 2] and sum(m for e, m in seen_events if e == 1) == len(configs)


def test_processes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="processes=0"):
        train_linear(synthetic_data(), [cfg("an", 0)], processes=0)
