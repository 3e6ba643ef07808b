"""SMILE (Xu et al., NeurIPS 2022) as released: the kNN graph, DGL's normalised graph convolution, the losses
by hand, its trainer on cached features (seeded, through the runner, equal to the released two-optimiser loop)
and the e2e model on the backbone's pooled features (resumable)."""

from __future__ import annotations

import math

import pytest
import torch

from spmlbench.losses.builtin.smile import SMILEParams, beta_kl, inference_loss, smile_loss
from spmlbench.losses.builtin._smile_model import GraphConv, knn_graph


def _nl(x: float) -> float:
    return -math.log(x + 1e-5)


def test_knn_graph_by_hand_in_chunks() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_graph(x, 1).tolist() == [[1], [0], [1], [2]]
    # from 3: to 1 is 2, to 0 is 3, to 7 is 4; from 7: 3 (4), then 1 (6); chunks of 1 row give the same
    assert knn_graph(x, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert torch.equal(knn_graph(x, 2, chunk=1), knn_graph(x, 2))


def test_graph_conv_normalises_by_both_degrees() -> None:
    conv = GraphConv(1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    # edges i -> nearest(i): 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 2; out-degree 1 each; in-degree 1, 2, 1, 0 (-> 1)
    src, dst = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 1, 2])
    h = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    out = conv(h, src, dst).flatten().tolist()
    assert out == pytest.approx([2.0, (1.0 + 3.0) / math.sqrt(2), 4.0, 0.0])


def test_classifier_loss_by_hand() -> None:
    hp = SMILEParams()  # p 0.5, mu 0.5, bias on: unobserved entries / (C - 1)
    z = torch.tensor([[1.0, -1.0, 0.0]])
    obs = torch.tensor([[True, False, False]])
    d1 = torch.tensor([[0.8, 0.2, 0.4]])
    # D = 0.5 D1 + 0.5 D2 (D2 = [1, p, p]) = [0.9, 0.35, 0.45]
    y0, y1 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))
    want = [0.9 * _nl(y0) + 0.1 * _nl(1 - y0), (0.35 * _nl(y1) + 0.65 * _nl(1 - y1)) / 2, _nl(0.5) / 2]
    assert smile_loss(hp, z, obs, d1)[0].tolist() == pytest.approx(want, rel=1e-6)
    no_bias = smile_loss(SMILEParams(bias=False, rate=0.3), z, obs, d1)[0].tolist()
    assert no_bias == pytest.approx([want[0], want[1] * 2 * 0.3, want[2] * 2 * 0.3], rel=1e-6)


def test_beta_kl_as_released_and_the_correct_one() -> None:
    half = torch.tensor([[0.5]])
    lg, psi = math.lgamma(0.5), -1.9635100260214235  # lgamma(1/2) = log sqrt(pi), digamma(1/2)
    assert float(beta_kl(half)) == pytest.approx(2 * lg + 2 * (-0.5) * psi, rel=1e-5)
    # KL(Beta(1/2, 1/2) || Beta(1, 1)) = -entropy of the arcsine law = -log(pi / 4)
    assert float(beta_kl(half, "beta")) == pytest.approx(-math.log(math.pi / 4), rel=1e-5)


def test_inference_loss_terms() -> None:
    obs = torch.tensor([[True, False]])
    d1 = torch.tensor([[0.7, 0.4]])
    x, x_rec = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, 2.0]])
    y_rec, adj = torch.tensor([[0.6, 0.5]]), torch.tensor([[0.0]])
    an_d1 = (_nl(0.7) + _nl(0.6)) / 2
    only_an = inference_loss(SMILEParams(gamma=0.0, delta=0.0), x, obs, d1, adj, x_rec, y_rec)
    assert float(only_an) == pytest.approx(an_d1, rel=1e-6)
    rec = 0.25 / 2 + (_nl(0.6) + _nl(0.5)) / 2 + (0.36 + 0.25) ** 2  # MSE(x), AN(y_rec), MSE(y y^T, A)
    full = inference_loss(SMILEParams(gamma=0.1, delta=0.0), x, obs, d1, adj, x_rec, y_rec)
    assert float(full) == pytest.approx(an_d1 + 0.1 * rec, rel=1e-6)


def test_trainer_is_seeded_and_learns() -> None:
    from test_linear_support import synthetic_data

    from spmlbench.train.configs import TrainConfig
    from spmlbench.train.trainers.smile import train_smile

    data = synthetic_data()
    cfg = TrainConfig(loss="smile", seed=1, lr=1e-2, batch_size=16, epochs=3)
    a, b = train_smile(data, cfg), train_smile(data, cfg)
    assert a.val_map == b.val_map and a.test_ap == b.test_ap  # the same seed: the same run
    assert a.epochs_run == 3 and 1 <= a.best_epoch <= 3 and a.status == "ok"
    c = train_smile(data, TrainConfig(loss="smile", seed=2, lr=1e-2, batch_size=16, epochs=3))
    assert c.val_map != a.val_map
    assert a.test_map > 100 / data.num_classes  # above a constant scorer's AP floor on this data


def test_runner_dispatches_smile_to_its_trainer(tmp_path) -> None:
    from test_linear_support import synthetic_data

    from spmlbench.experiments.executors import LocalExecutor
    from spmlbench.experiments.jobs import JobSpec

    data = synthetic_data()
    jobs = [JobSpec(dataset=data.dataset, loss=loss, hparams=(), mode="linear", seed=0, label_seed=1200,
                    split_seed=1200, backbone="pixels", epochs=2, batch_size=16, lr=1e-2, val="clean",
                    early_stop="none") for loss in ("an", "smile", "gr")]
    out = LocalExecutor(torch.device("cpu")).train(data, jobs)
    assert [r.status for r in out] == ["ok"] * 3 and all(len(r.val_map) == 2 for r in out)
    from spmlbench.train.trainers.smile import train_smile

    assert out[1].val_map == train_smile(data, jobs[1].train_config()).val_map  # the SMILE trainer's numbers


def _released_loop(data, seed: int, lr: float, batch_size: int, epochs: int) -> list[float]:
    """palm-ml/smile's training loop written plainly: two Adam optimisers stepped one after the other."""
    from spmlbench.losses.builtin._smile_model import seeded_models
    from spmlbench.train.evaluate import mean_ap
    from spmlbench.train.seeding import epoch_orders

    hp = SMILEParams()
    x, s = data.x_train, data.s_train > 0.5
    n, d = x.shape
    f, enh = seeded_models(d, data.num_classes, seed, n)
    enh.build_graph(lambda: x, hp.k)
    mlp_opt = torch.optim.Adam(f.parameters(), lr=lr)
    gcn_opt = torch.optim.Adam(enh.parameters(), lr=lr)
    val = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for order in epoch_orders(seed, n, epochs, d, data.num_classes):
            for idx in torch.split(order, batch_size):
                d1 = torch.sigmoid(enh.gcn(idx) / hp.T)
                mlp_opt.zero_grad()
                smile_loss(hp, f(x[idx]), s[idx], d1.detach()).mean().backward()
                mlp_opt.step()
                x_rec, y_rec = enh.reconstruct(x[idx], d1)
                gcn_opt.zero_grad()
                inference_loss(hp, x[idx], s[idx], d1, enh.batch_adjacency(idx), x_rec, y_rec).backward()
                gcn_opt.step()
            with torch.no_grad():
                val.append(float(mean_ap(torch.sigmoid(f(data.x_val)), data.y_val)))
    return val


def test_one_adam_takes_the_released_two_optimiser_steps() -> None:
    from test_linear_support import synthetic_data

    from spmlbench.train.configs import TrainConfig
    from spmlbench.train.trainers.smile import train_smile

    data = synthetic_data()
    ours = train_smile(data, TrainConfig(loss="smile", seed=3, lr=1e-2, batch_size=16, epochs=3, early_stop="none"))
    assert ours.val_map == pytest.approx(_released_loop(data, 3, 1e-2, 16, 3), abs=1e-6)


def test_enhanced_step_writes_the_bank_and_d1_and_adds_the_inference_loss() -> None:
    from spmlbench.losses import build_loss

    torch.manual_seed(0)
    n, d, c = 6, 4, 3
    loss = build_loss("smile", num_classes=c, num_train=n, gamma=0.0, delta=0.0)
    loss.batched.attach_model(d, seed=0)
    x = torch.randn(n, d)
    loss.batched.build_graph(lambda: x)
    enh = loss.batched.enhancer
    assert torch.equal(enh.bank, x) and enh.nbrs.shape == (n, 3) and bool(enh.filled)
    loss.batched.build_graph(lambda: pytest.fail("the bank is filled once"))  # later epochs keep the bank
    rows, obs = torch.tensor([4, 1]), torch.tensor([[True, False, False], [False, False, True]])
    new, z = torch.randn(2, d), torch.randn(2, c)
    value = loss(z, obs, rows, features=new)
    assert torch.equal(enh.bank[rows], new) and torch.equal(enh.bank[[0, 2, 3, 5]], x[[0, 2, 3, 5]])
    d1 = torch.sigmoid(enh.gcn(rows))
    assert torch.allclose(loss.batched.d1[0, rows], d1)
    expected = smile_loss(SMILEParams(), z, obs, d1).mean() + torch.where(
        obs, -torch.log(d1 + 1e-5), -torch.log(1 - d1 + 1e-5)).mean()  # gamma = delta = 0: AN(D1) only
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_e2e_smile_resumes_to_identical_numbers_and_checks_its_modes(tmp_path, monkeypatch) -> None:
    from test_e2e import MICRO, Job, _run, _write_tiny

    from spmlbench.errors import ConfigError
    from spmlbench.experiments.plan import check_requirements
    from spmlbench.features import backbones
    from spmlbench.train import e2e

    home = tmp_path / "home"
    _write_tiny(home)
    original = backbones.get_backbone
    monkeypatch.setattr(backbones, "get_backbone", lambda name: MICRO if name == "micro" else original(name))
    job = Job(loss="smile", epochs=3, backbone="micro:none", batch_size=8)
    full = _run(home, tmp_path / "full", job)
    assert full.ok and full.epochs_run == 3 and full.settings["head"] == "smile", full.error

    def kill(epoch: int, ctx: e2e.TrainContext) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(home, tmp_path / "cut", job, hooks=e2e.Hooks(on_epoch_end=kill))
    resumed = _run(home, tmp_path / "cut", job)
    assert resumed.val_map == full.val_map and resumed.train_loss == full.train_loss
    assert resumed.test_ap == full.test_ap
    state = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    assert state["loss"]["batched.enhancer.bank"].shape == (24, 16) and bool(state["loss"]["batched.enhancer.filled"])
    assert "head.2.weight" in state["model"]  # the released MLP classifier is the e2e head
    with pytest.raises(ConfigError, match="smile: LinearInit's linear head does not load into the smile head; "
                                          "run it with --mode e2e or --mode linear"):
        check_requirements([Job(loss="smile", mode="linear-init")], str(tmp_path))
    check_requirements([Job(loss="smile", mode="e2e"), Job(loss="smile", mode="linear")], str(tmp_path))
