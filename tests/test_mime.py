"""MIME (Liu et al., ICML 2023): the class prior, the ignore rule and the loss by hand, the variational
query head, and end-to-end training on a tiny image set (stem and batch norms frozen, as released)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from spmlbench.experiments.jobs import JobSpec
from spmlbench.losses.builtin.mime import MIMEParams, class_prior, ignore_counts, mime_loss, pseudo_targets

OBS = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=torch.bool)


def test_class_prior_and_counts_by_hand() -> None:
    # n_obs / N = [3/4, 1/4]; E = 1 / expected_num_pos = 1 / 1.5 -> pi = [1.125, 0.375]; n_c = int(4 pi)
    prior = class_prior(OBS, 1 / 1.5)
    assert prior.tolist() == pytest.approx([1.125, 0.375])
    assert ignore_counts(prior, 4) == [4, 1]
    # the released ground-truth statistic: |Y_i| = 1, 2, 1, 2 -> E = mean(1, 1/2, 1, 1/2) = 0.75
    assert class_prior(OBS, 0.75).tolist() == pytest.approx([1.0, 1 / 3])


def test_ignore_rule_takes_the_top_unlabelled_rows() -> None:
    p = torch.tensor([[0.9, 0.2], [0.1, 0.7], [0.5, 0.7], [0.8, 0.1]])
    # class 0: one free row (3) -> ignored, even though n_0 = 4; class 1: n_1 = 1 of rows 0-2, p 0.2, 0.7, 0.7:
    # the tie goes to the lower row (1)
    out = pseudo_targets(p, OBS, [4, 1])
    assert out.tolist() == [[1, 0], [1, -1], [1, 0], [-1, 1]]


def test_loss_by_hand() -> None:
    z = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
    obs = torch.tensor([[False, False, False, True]])
    target = torch.tensor([[1, 0, -1, 0]], dtype=torch.int8)  # an observed positive counts as 1 whatever t says
    got = mime_loss(MIMEParams(expected_num_pos=1.5), z, obs, target)[0].tolist()
    # the release's neg_log(x) = -log(x + 1e-5): -log(0.50001) = 0.6931271..., -log(sigmoid(2) + 1e-5)
    assert got == pytest.approx([0.6931271553, 0.6931271553, 0.0, 0.1269166917], rel=1e-8)
    exact = mime_loss(MIMEParams(expected_num_pos=1.5, eps=0.0), z.double(), obs, target)[0].tolist()
    assert exact == pytest.approx([math.log(2), math.log(2), 0.0, math.log(1 + math.exp(-2))], rel=1e-12)
    # a saturated wrong entry is capped near -log(1e-5) = 11.5129 and gets almost no gradient
    far = torch.tensor([[30.0]], dtype=torch.float64, requires_grad=True)
    value = mime_loss(MIMEParams(expected_num_pos=1.5), far, torch.tensor([[False]]), torch.tensor([[0]]))
    value.sum().backward()
    assert float(value.detach()) == pytest.approx(11.5129254556, rel=1e-10)  # -log(9.4e-14 + 1e-5)
    assert float(far.grad) == pytest.approx(9.36e-9, rel=1e-2)  # p (1 - p) / (1 - p + 1e-5), not 1
    t2 = mime_loss(MIMEParams(expected_num_pos=1.5, T=2.0), z, obs, target)[0, 3]
    assert float(t2) == pytest.approx(-math.log(1 / (1 + math.exp(-1)) + 1e-5), rel=1e-6)  # p = sigmoid(z / T)


def test_batched_loss_pseudo_labels_after_warmup() -> None:
    from spmlbench.losses import build_batched_loss

    loss = build_batched_loss("mime", [{"expected_num_pos": 1.5, "warmup_epoch": 2}], num_classes=2, num_train=4)
    loss.init_state(OBS.float())
    logits = torch.logit(torch.tensor([[[0.9, 0.2], [0.1, 0.7], [0.5, 0.7], [0.8, 0.1]]]))
    loss.start_epoch(1, 3)
    loss.end_epoch(lambda: logits)  # epoch 1 < warmup: still the observed labels
    assert loss.target[0].tolist() == OBS.to(torch.int8).tolist()
    loss.start_epoch(2, 3)
    loss.end_epoch(lambda: logits)
    assert loss.target[0].tolist() == [[1, 0], [1, -1], [1, 0], [-1, 1]]
    gt = build_batched_loss("mime", [{"prior": "ground_truth", "warmup_epoch": 1}], num_classes=2, num_train=4)
    gt.init_state(OBS.float())
    # the whole training file (two val rows added): |Y_i| = 1, 2, 1, 2, 0, 1 -> E = (1 + 1/2 + 1 + 1/2 + 0 + 1) / 6
    # = 2/3 (a row without positives adds 0, countE); n_obs / N = [4/6, 2/6] -> pi = [1, 1/2], n = int(4 pi) = [4, 2]
    gt.set_ground_truth(torch.tensor([[1, 0], [1, 1], [1, 0], [1, 1], [0, 0], [0, 1]]),
                        torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0], [0, 1]]))
    gt.start_epoch(1, 3)
    gt.end_epoch(lambda: logits)
    assert gt.target[0].tolist() == [[1, 0], [1, -1], [1, -1], [-1, 1]]  # class 1: rows 1, 2 (p 0.7, 0.7)


def test_drop_last_switch_reproduces_the_release_pass() -> None:
    from spmlbench.losses import build_batched_loss

    logits = torch.logit(torch.tensor([[[0.9, 0.2], [0.1, 0.7], [0.5, 0.7], [0.8, 0.1]]]))
    rel = build_batched_loss("mime", [{"expected_num_pos": 1.5, "warmup_epoch": 1, "drop_last_fix": False}],
                             num_classes=2, num_train=4)
    rel.init_state(OBS.float(), [0])
    rel.start_epoch(1, 3)
    z = torch.zeros(1, 3, 2, requires_grad=True)
    rel(z, OBS[:3], torch.arange(3))  # batch 3: the release's pass predicts 3 of 4 rows
    rel.end_epoch(lambda: logits)
    t = rel.target[0]
    assert t[3].tolist() in ([-1, 0], [0, 0])  # row 3 (index >= N_pred = 3) lost its observed positive
    assert int((t == -1).sum()) <= 2  # n = int(3 pi) = [3, 1] over the 3 predicted rows only
    # the lost positive is trained as a negative: -log(1 - 0.5 + 1e-5) where t = 0
    value = rel(torch.zeros(1, 1, 2), OBS[3:], torch.tensor([3]))
    want = sum(0.0 if v == -1 else -math.log(0.5 + 1e-5) for v in t[3].tolist()) / 2
    assert float(value) == pytest.approx(want, rel=1e-6)
    fixed = build_batched_loss("mime", [{"expected_num_pos": 1.5, "warmup_epoch": 1}], num_classes=2, num_train=4)
    fixed.init_state(OBS.float(), [0])
    fixed.start_epoch(1, 3)
    fixed.end_epoch(lambda: logits)
    assert fixed.target[0][3].tolist() == [-1, 1] and fixed.predict_in_train_mode()  # the pass in train mode


def test_head_has_the_released_norm_and_initialisations() -> None:
    from spmlbench.heads.builtin.mime import MIMEHead

    torch.manual_seed(0)
    head = MIMEHead(64, 40, z_dim=16).requires_grad_(False)
    assert isinstance(head.norm, torch.nn.LayerNorm) and head.norm.weight.numel() == 64  # decoder_norm
    assert float(head.queries.std()) == pytest.approx(1.0, abs=0.05)  # nn.Embedding: N(0, 1), not xavier
    bound = 1 / math.sqrt(16)  # GroupWiseLinear: W and b uniform in +-1/sqrt(z_dim)
    assert float(head.weight.abs().max()) <= bound and float(head.bias.abs().max()) <= bound
    assert float(head.bias.abs().max()) > bound / 2
    first = head.proj[0]  # nn.Linear's default init: uniform in +-1/sqrt(fan_in)
    assert float(first.weight.abs().max()) <= 1 / math.sqrt(64) and float(first.bias.abs().max()) > 0


def test_head_shapes_and_its_kl_penalty() -> None:
    from spmlbench.heads.builtin.mime import MIMEHead

    torch.manual_seed(0)
    head = MIMEHead(16, 3, z_dim=4, samples=5, beta=0.5).eval()
    fmap = torch.randn(2, 16, 3, 2)
    assert head(fmap).shape == (2, 3)
    assert float(head.penalty().detach()) > 0
    with torch.no_grad():  # mu = 0, log sigma = 0: N(0, 1) itself, KL = 0
        head.proj[-1].weight.zero_()
        head.proj[-1].bias.zero_()
    head(fmap)
    assert float(head.penalty().detach()) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.slow
def test_e2e_trains_mime_with_its_stem_frozen(home: Path, tmp_path: Path) -> None:
    from test_pseudo_labels import _dataset

    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.train import e2e

    _dataset(home, n=10)
    job = JobSpec(dataset="tiny", loss="mime", hparams=(("expected_num_pos", 1.0), ("warmup_epoch", 1),
                                                         ("z_dim", 8)),
                  mode="e2e", seed=0, label_seed=1200, split_seed=1200, backbone="resnet18:none", epochs=2,
                  batch_size=2, lr=1e-3, val="clean", early_stop="none")
    recipe, _ = job_recipes(job, {"eval_batch_size": 4})
    assert recipe.optimizer == "adamax" and recipe.head_lr_mult == 10.0
    seen: dict[str, torch.Tensor] = {}
    res = e2e.train_e2e(job, recipe=recipe, home=home, device="cpu", workdir=tmp_path / "w", workers=0, image_size=32,
                        hooks=e2e.Hooks(on_start=lambda ctx: seen.update(
                            stem=ctx.model.backbone[0].weight.detach().clone(),
                            l2=ctx.model.backbone[5][0].conv1.weight.detach().clone())))
    assert res.ok and res.epochs_run == 2 and res.settings["head"] == "mime", res.error
    state = torch.load(tmp_path / "w" / "last.pt", weights_only=False)
    assert torch.equal(state["model"]["backbone.0.weight"], seen["stem"])  # stem frozen
    assert not torch.equal(state["model"]["backbone.5.0.conv1.weight"], seen["l2"])  # layer2 trained
    assert (state["loss"]["batched.target"] == -1).any()  # pseudo-labelling ignored some entries


def test_mime_vib_linear_variant_is_seeded_pseudo_labels_and_dispatched() -> None:
    from test_linear_support import synthetic_data

    from spmlbench.experiments.executors import LocalExecutor
    from spmlbench.train.trainers.cached import train_cached_head
    from spmlbench.train.configs import TrainConfig
    from spmlbench.heads.builtin.vib import VIBHead

    head = VIBHead(6, 3, z_dim=2, samples=4, beta=0.5)
    assert head(torch.randn(5, 6)).shape == (5, 3) and float(head.penalty().detach()) > 0
    data = synthetic_data()
    hp = (("expected_num_pos", 1.5), ("warmup_epoch", 1), ("z_dim", 8))
    cfg = TrainConfig(loss="mime_vib", hparams=hp, seed=1, lr=1e-2, batch_size=16, epochs=3)
    a, b = train_cached_head(data, cfg), train_cached_head(data, cfg)
    assert a.ok and a.epochs_run == 3 and a.val_map == b.val_map and a.test_ap == b.test_ap
    job = JobSpec(dataset=data.dataset, loss="mime_vib", hparams=hp, mode="linear", seed=1, label_seed=1200,
                  split_seed=1200, backbone="pixels", epochs=3, batch_size=16, lr=1e-2, val="clean", early_stop="none")
    (r,) = LocalExecutor(torch.device("cpu")).train(data, [job])
    assert r.val_map == a.val_map  # the executor dispatched it to its trainer


def test_mime_modes_are_checked_before_anything_runs(tmp_path: Path) -> None:
    from spmlbench.errors import ConfigError
    from spmlbench.experiments.plan import check_requirements

    def job(loss: str, mode: str) -> JobSpec:
        return JobSpec(dataset="tiny", loss=loss, hparams=(("expected_num_pos", 1.0),), mode=mode, seed=0,
                       label_seed=1200, split_seed=1200, backbone="resnet18", epochs=1, batch_size=2, lr=1e-3,
                       val="clean", early_stop="none")

    with pytest.raises(ConfigError, match="mime: LinearInit's linear head does not load into the mime head"):
        check_requirements([job("mime", "linear-init")], str(tmp_path))
    with pytest.raises(ConfigError, match="mime_vib: has its own model and trainer on cached features"):
        check_requirements([job("mime_vib", "e2e")], str(tmp_path))
    check_requirements([job("mime", "e2e"), job("mime_vib", "linear")], str(tmp_path))
