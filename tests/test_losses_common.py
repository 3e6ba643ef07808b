"""Registry, hyperparameter validation, batched == per-config for every loss, numerical safety."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from spmlbench.errors import ConfigError
from pseudo_support import attach_test_pseudo
from spmlbench.losses import LOSSES, build_batched_loss, build_loss, list_losses, loss_info, resolve_hparams

NAMES = [n for n in list_losses() if LOSSES.get(n).builtin]


def test_registry_names_and_info() -> None:
    orders = [LOSSES.get(n).order for n in NAMES]
    assert orders == sorted(orders) and len(set(orders)) == len(NAMES) >= 16  # the canonical order, by paper
    for name in NAMES:
        info = loss_info(name)
        assert info.name == name and info.paper and info.citation and 2017 <= info.year <= 2025
        assert info.uses_clean_labels == (name == "bce")
        assert info.stateful == (name in {"role", "ll_cp", "em_apl", "vlpl", "aevlp", "boostlu_ll_cp", "smile", "mime", "mime_vib"})
        assert (LOSSES.get(name).pseudo is not None) == (name in {"vlpl", "aevlp"})
    assert loss_info("gr").defaults["beta"] == (0.0, 2.0, -2.0, -2.0)
    assert loss_info("gr").defaults["eps"] == 1e-7 and loss_info("an").defaults["eps"] == 1e-5
    assert loss_info("epr").per_dataset == {"voc": {"expected_num_pos": 1.5}, "coco": {"expected_num_pos": 2.9},
                                            "nuswide": {"expected_num_pos": 1.9}, "cub": {"expected_num_pos": 31.4}}
    with pytest.raises(ConfigError, match="unknown loss 'nope'"):
        build_loss("nope", num_classes=3)


@pytest.mark.parametrize(("name", "kw", "message"), [
    ("gr", {"q3": -1}, "gr.q3=-1: must be >= 0"),
    ("gr", {"q2": -0.5}, "gr.q2=-0.5: must be >= 0"),
    ("gr", {"alpha": [0.5, 0.0, 0.8, 0.5]}, "gr.alpha=[0.5, 0, 0.8, 0.5]: must be"),
    ("gr", {"beta": [0, 1]}, "gr.beta=[0, 1]: must be a list of 4 numbers, written [a,b,...]"),
    ("gr", {"beta": "0,10,-2,-8"}, "gr.beta=0,10,-2,-8: must be a list of 4 numbers, written [a,b,...]"),
    ("gr", {"use_k": "maybe"}, "gr.use_k=maybe: must be true or false"),
    ("gr", {"linear_init": -1}, "gr.linear_init=-1: must be >= 0"),
    ("gr", {"foo": 1}, "gr.foo: unknown hyperparameter; known: beta, alpha"),
    ("ll_r", {"delta_rel": 0}, "ll_r.delta_rel=0: must be in (0, 100)"),
    ("ll_cp", {"delta_rel": 100}, "ll_cp.delta_rel=100: must be in (0, 100)"),
    ("an_ls", {"ls_coef": 1.5}, "an_ls.ls_coef=1.5: must be in [0, 1]"),
    ("asl", {"clip": -0.1}, "asl.clip=-0.1: must be in [0, 1)"),
    ("focal", {"gamma": -1}, "focal.gamma=-1: must be >= 0"),
    ("em_apl", {"theta": 2}, "em_apl.theta=2: must be in [0, 1]"),
    ("em_apl", {"warmup_epoch": 1.5}, "em_apl.warmup_epoch=1.5: must be an integer"),
    ("splc", {"change_epoch": 0}, "splc.change_epoch=0: must be >= 1"),
    ("epr", {}, "epr.expected_num_pos=None: must be given"),
    ("role", {"expected_num_pos": -2}, "role.expected_num_pos=-2: must be > 0"),
    ("an", {"eps": 0}, "an.eps=0: must be > 0"),
])
def test_invalid_hparams_name_loss_param_and_range(name: str, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_loss(name, num_classes=4, num_train=5, **kw)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text


def test_overrides_dataset_defaults_and_string_coercion() -> None:
    assert resolve_hparams("em", "voc").alpha == 0.2
    assert resolve_hparams("em", "voc", alpha=0.3).alpha == 0.3
    assert resolve_hparams("em", "digits").alpha == 0.1  # no table entry: the dataclass fallback
    assert resolve_hparams("role", "coco").expected_num_pos == 2.9
    hp = resolve_hparams("gr", q3="1.5", beta="[0, 10, -2, -8]", use_v="false", linear_init="2")
    assert (hp.q3, hp.beta, hp.use_v, hp.linear_init) == (1.5, (0.0, 10.0, -2.0, -8.0), False, 2)
    with pytest.raises(ConfigError, match="num_train"):
        build_loss("ll_cp", num_classes=4)


def test_a_bare_tuple_field_takes_a_list_of_numbers() -> None:
    """A plugin may annotate a list hyperparameter as plain ``tuple``: coerced like ``tuple[float, ...]``."""
    import dataclasses

    from spmlbench.losses import HParams
    from spmlbench.hparams import make_hparams

    @dataclasses.dataclass(frozen=True)
    class P(HParams):
        ks: tuple = (1.0, 2.0)

    P.loss = "mine"
    assert make_hparams(P, {}, {"ks": "[1, 2, 3]"}).ks == (1.0, 2.0, 3.0)
    with pytest.raises(ConfigError, match=r"^mine.ks=1,2: must be a list of numbers, written \[a,b,...\]"):
        make_hparams(P, {}, {"ks": "1,2"})


# Per loss: three different configs for the batched/per-config comparison.
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "bce": [{}, {"eps": 1e-3}, {"eps": 1e-7}],
    "an": [{}, {"eps": 1e-3}, {"eps": 1e-7}],
    "an_ls": [{}, {"ls_coef": 0.3}, {"ls_coef": 0.0}],
    "wan": [{}, {"eps": 1e-3}, {"eps": 1e-6}],
    "epr": [{"expected_num_pos": 1.5}, {"expected_num_pos": 3.0}, {"expected_num_pos": 0.5, "eps": 1e-3}],
    "role": [{"expected_num_pos": 1.5}, {"expected_num_pos": 3.0}, {"expected_num_pos": 0.5, "eps": 1e-3}],
    "ll_r": [{}, {"delta_rel": 5}, {"delta_rel": 12}],
    "ll_ct": [{}, {"delta_rel": 5}, {"delta_rel": 12}],
    "ll_cp": [{}, {"delta_rel": 5}, {"delta_rel": 12}],
    "em": [{}, {"alpha": 0.5}, {"alpha": 0.01}],
    "em_apl": [{"warmup_epoch": 1}, {"warmup_epoch": 2, "beta": 0.3, "theta": 0.5}, {"warmup_epoch": 1, "alpha": 0.3}],
    "focal": [{}, {"gamma": 0.5}, {"gamma": 0.0}],
    "asl": [{}, {"gamma_pos": 1, "clip": 0.0}, {"gamma_neg": 2, "clip": 0.2}],
    "hill": [{}, {"lamb": 2.0, "margin": 0.5}, {"gamma": 0.0}],
    "splc": [{}, {"change_epoch": 3, "tau": 0.5}, {"margin": 0.0, "gamma": 1.0}],
    "gr": [{}, {"q2": 0.5, "q3": 1.5, "lag": False, "linear_init": 1}, {"use_k": False, "use_v": False, "schedule": False}],
    "vlpl": [{}, {"alpha": 0.5, "threshold": 0.1}, {"partial": 0.4, "beta_pos": 0.3}],
    "mime": [{"expected_num_pos": 1.5}, {"expected_num_pos": 2.0, "warmup_epoch": 1}, {"expected_num_pos": 1.0, "T": 2.0}],
    "mime_vib": [{"expected_num_pos": 1.5}, {"expected_num_pos": 2.0, "warmup_epoch": 1}, {"expected_num_pos": 1.0}],
    "aevlp": [{}, {"negatives": True, "top_k": 2, "threshold": 0.2}, {"reg": 0.0, "lam": [0.9, 0.1], "q3": 1.5}],
}

N_TRAIN, C = 12, 5


def _observed(g: torch.Generator) -> torch.Tensor:
    obs = torch.zeros(N_TRAIN, C)
    obs[torch.arange(N_TRAIN), torch.randint(0, C, (N_TRAIN,), generator=g)] = 1
    return obs


def test_config_table_names_registered_losses() -> None:
    assert set(CONFIGS) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_per_config(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    obs = _observed(g)
    configs = CONFIGS.get(name, [{}, {}])
    m = len(configs)
    batched = build_batched_loss(name, configs, num_classes=C, num_train=N_TRAIN)
    singles = [build_loss(name, num_classes=C, num_train=N_TRAIN, **cfg) for cfg in configs]
    if name in ("role", "vlpl", "aevlp", "mime", "mime_vib"):
        batched.init_state(obs, seed=5)
        for s in singles:
            s.init_state(obs, seed=5)
    for loss in (batched, *singles):
        attach_test_pseudo(loss, N_TRAIN, C)
    epochs, batches = 3, [torch.arange(0, 6), torch.arange(6, 12)]
    head = torch.randn(m, N_TRAIN, C, generator=g, dtype=torch.float64) * 3  # per-config "model" logits
    for epoch in range(1, epochs + 1):
        batched.start_epoch(epoch, epochs)
        for s in singles:
            s.start_epoch(epoch, epochs)
        for index in batches:
            z = (head[:, index] + epoch).clone().requires_grad_(True)
            values = batched(z, obs[index], index)
            values.sum().backward()
            for i, single in enumerate(singles):
                zi = (head[i, index] + epoch).clone().requires_grad_(True)
                vi = single(zi, obs[index], index)
                vi.backward()
                assert float(values[i].detach()) == pytest.approx(float(vi.detach()), rel=1e-6, abs=1e-9), (name, epoch, i)
                assert torch.allclose(z.grad[i], zi.grad, rtol=1e-5, atol=1e-9), (name, epoch, i)
        predict = head + 0.5 * epoch
        batched.end_epoch(lambda: predict)
        for i, single in enumerate(singles):
            single.end_epoch(lambda i=i: predict[i])
    if name == "em_apl":  # pseudo labels were produced and agree config by config
        assert batched.pseudo.any()
        for i, single in enumerate(singles):
            assert torch.equal(batched.pseudo[i], single.batched.pseudo[0])
    if name == "ll_cp":
        for i, single in enumerate(singles):
            assert torch.equal(batched.observed_matrix()[i], single.batched.observed_matrix()[0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_extreme_logits(name: str, dtype: torch.dtype) -> None:
    # logits +-50 and +-200 (p exactly 0 or 1 in float32), observed and unobserved entries alike
    z = torch.tensor([[50.0, -50.0, 200.0, -200.0, 0.0], [-50.0, 50.0, -200.0, 200.0, 0.0],
                      [50.0, 50.0, -50.0, -50.0, 200.0]], dtype=dtype, requires_grad=True)
    obs = torch.tensor([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    obs_all = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [1, 1, 0, 0, 0]])
    index = torch.tensor([0, 1, 2])
    loss = build_loss(name, num_classes=5, num_train=3, **CONFIGS.get(name, [{}, {}])[0])
    if name == "role":
        loss.init_state(torch.zeros(3, 5), seed=0)
    attach_test_pseudo(loss, 3, 5)
    for epoch in (1, 2, 3):
        loss.start_epoch(epoch, 3)
        for o in (obs, obs_all):
            z.grad = None
            value = loss(z, o, index)
            value.backward()
            assert torch.isfinite(value), (name, epoch)
            assert torch.isfinite(z.grad).all(), (name, epoch)
        loss.end_epoch(lambda: z.detach())


def test_every_dataset_default_resolves() -> None:
    for ds in ("voc", "coco", "nuswide", "cub"):
        for name in NAMES:
            resolve_hparams(name, ds)  # the manifest only holds valid names and values


def test_half_precision_logits_are_evaluated_in_float32() -> None:
    z = torch.tensor([[3.0, -2.0, 0.5]], dtype=torch.bfloat16, requires_grad=True)
    value = build_loss("gr", num_classes=3)(z, torch.tensor([[1, 0, 0]]))
    assert value.dtype == torch.float32
    want = build_loss("gr", num_classes=3)(z.detach().float(), torch.tensor([[1, 0, 0]]))
    assert float(value.detach()) == pytest.approx(float(want), rel=1e-6)
    value.backward()
    assert z.grad is not None and torch.isfinite(z.grad.float()).all()


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name: str) -> None:
    g = torch.Generator().manual_seed(4)
    obs = _observed(g)
    configs = CONFIGS.get(name, [{}, {}])
    head = torch.randn(len(configs), N_TRAIN, C, generator=g) * 3
    values = []
    for device in ("cpu", "cuda"):
        loss = build_batched_loss(name, configs, num_classes=C, num_train=N_TRAIN).to(device)
        loss.init_state(obs.to(device), 5)
        attach_test_pseudo(loss, N_TRAIN, C)
        out = []
        for epoch in (1, 2, 3):
            loss.start_epoch(epoch, 3)
            for index in (torch.arange(0, 6), torch.arange(6, 12)):
                idx = index.to(device)
                out.append(loss(head[:, index].to(device) + epoch, obs.to(device)[idx], idx).detach().cpu())
            loss.end_epoch(lambda: (head + epoch).to(device))
        values.append(torch.stack(out))
    assert torch.allclose(values[0], values[1], rtol=1e-4, atol=1e-6)
