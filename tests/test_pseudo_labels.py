"""CLIP pseudo-labels (VLPL, AEVLP): the rules and losses against hand-derived numbers
(docs/methods.md, vlpl and aevlp), the cache, and an offline digits run end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spmlbench.data.store import write_labels
from spmlbench.errors import ConfigError, DataError
from spmlbench.losses.builtin._pseudo import damp_rule, vlpl_rule
from spmlbench.losses.builtin.aevlp import AEVLPParams, aevlp_loss
from spmlbench.losses.builtin.gr import gr_schedule
from spmlbench.losses.builtin.vlpl import VLPLParams, vlpl_loss

TINY = {"model": "spml-tiny-clip", "pretrained": "none"}


# --------------------------------------------------------------------------------------------- rules
def test_vlpl_rule_softmax_temperature_threshold_and_partial_negatives() -> None:
    cos = torch.tensor([[0.30, 0.28, 0.20], [0.25, 0.25, 0.10]])
    # temp 0.01: logits 30, 28, 20 -> softmax 1 / (1 + e^-2 + e^-10) = 0.8808, 0.1192, 0.0000400
    s0 = [1 / (1 + math.exp(-2) + math.exp(-10)), math.exp(-2) / (1 + math.exp(-2) + math.exp(-10))]
    assert s0[0] > 0.3 > s0[1]
    # row 2: 25, 25, 10 -> 0.5, 0.5, ~3e-7: both above 0.3
    assert vlpl_rule(cos, 0.01, 0.3).tolist() == [[1, 0, 0], [1, 1, 0]]
    assert vlpl_rule(cos, 0.01, 0.9).tolist() == [[0, 0, 0], [0, 0, 0]]
    # partial 0.34 of 3 classes: floor(1.02) = 1 lowest-scored class becomes -1
    assert vlpl_rule(cos, 0.01, 0.3, partial=0.34).tolist() == [[1, 0, -1], [1, 1, -1]]


def _views(*rows: list[float]) -> torch.Tensor:
    """Cosines whose softmax at temp 1 is exactly the given distributions: log(s)."""
    return torch.log(torch.tensor([rows], dtype=torch.float64))


S_G, TILE1, TILE2 = [0.4, 0.3, 0.2, 0.1], [0.35, 0.45, 0.1, 0.1], [0.05, 0.15, 0.7, 0.1]
OBS0 = torch.tensor([[True, False, False, False]])


def test_damp_rule_eta_top_k_threshold_by_hand() -> None:
    cos = _views(S_G, TILE1, TILE2)  # (1, 3 views, 4 classes)
    # a = max over tiles = [.35, .45, .7, .1], b = min = [.05, .15, .1, .1]; observed class 0: s_g = 0.4
    # eta 0.3: eta_i = 0.3, a > 0.3 on classes 0-2 -> s_ag = [.35, .45, .7, .1], s_final = [.375, .375, .45, .1]
    kw = dict(temp=1.0, top_k=3, threshold=0.37, neg_ratio=0.0)
    assert damp_rule(cos, OBS0, eta=0.3, **kw).tolist() == [[1, 1, 1, 0]]
    # eta 0.5: eta_i = min(0.4, 0.5) = 0.4, a > 0.4 on classes 1, 2 -> s_ag = [.05, .45, .7, .1],
    # s_final = [.225, .375, .45, .1]: class 0 falls below the threshold
    assert damp_rule(cos, OBS0, eta=0.5, **kw).tolist() == [[0, 1, 1, 0]]
    # top_k 1 keeps only the best class (2, s_final .45)
    assert damp_rule(cos, OBS0, eta=0.5, **{**kw, "top_k": 1}).tolist() == [[0, 0, 1, 0]]


def test_damp_negatives_erase_positives_as_released_or_become_minus_one() -> None:
    cos = _views(S_G, TILE1, TILE2)
    # threshold 0.05, top_k 4: every class positive; neg_ratio 0.25 -> floor(1) lowest of (s_g + avg) / 2
    # = ([.4, .3, .2, .1] + [.2, .3, .4, .1]) / 2 = [.3, .3, .3, .1]: class 3
    kw = dict(temp=1.0, eta=0.3, top_k=4, threshold=0.05, neg_ratio=0.25)
    assert damp_rule(cos, OBS0, **kw).tolist() == [[1, 1, 1, 0]]  # written as 0: the positive is erased
    assert damp_rule(cos, OBS0, negatives=True, **kw).tolist() == [[1, 1, 1, -1]]


def test_tile_geometry_for_grid_4_and_5() -> None:
    from spmlbench.features.pseudo import tiles

    t4 = tiles(10, 7, 4)  # tile 2 x 1 pixels, the remainder (2 columns, 3 rows) left out
    assert len(t4) == 16 and t4[0] == (0, 0, 2, 1) and t4[3] == (6, 0, 8, 1) and t4[4] == (0, 1, 2, 2)
    assert t4[-1] == (6, 3, 8, 4)
    t5 = tiles(500, 375, 5)
    assert len(t5) == 25 and t5[1] == (100, 0, 200, 75) and t5[-1] == (400, 300, 500, 375)


# --------------------------------------------------------------------------------------------- losses
def _nl(x: float, eps: float) -> float:
    return -math.log(x + eps)


def test_vlpl_loss_by_hand() -> None:
    hp = VLPLParams(alpha=0.2, partial=0.5)
    z = torch.zeros(1, 4, requires_grad=True)  # p = 0.5 everywhere
    obs = torch.tensor([[True, False, False, False]])
    pl = torch.tensor([[0, 1, 0, -1]], dtype=torch.int8)
    value = vlpl_loss(hp, z, obs, pl).mean()
    n = _nl(0.5, 1e-5)
    entries = [n, 0.7 * (0.9 * n + 0.1 * n), -0.2 * (0.5 * n + 0.5 * n), n]
    assert float(value.detach()) == pytest.approx(sum(entries) / 4, rel=1e-6)
    value.backward()
    # d/dz at p = 1/2: observed -(1 - p) / (1 + eps/p) ~ -1/2; EM term -alpha dH/dz = 0 at p = 1/2
    assert float(z.grad[0, 0]) == pytest.approx(-0.5 / (1 + 2e-5) / 4, rel=1e-5)
    assert float(z.grad[0, 2]) == pytest.approx(0.0, abs=1e-7)


def test_aevlp_loss_by_hand_at_epoch_1_of_8() -> None:
    hp = AEVLPParams()  # the VOC row: beta [0, 2, -2, -2], alpha [.5, 2, .8, .5], lam [.7, .4], reg .05
    w, b, mu, sigma = gr_schedule(hp.schedule_params(), 1, 8)
    assert (w, b) == (0.0, -2.0) and mu == pytest.approx(0.5 + 0.3 / 8) and sigma == pytest.approx(2 - 1.5 / 8)
    z = torch.zeros(1, 4)
    obs = torch.tensor([[True, False, False, False]])
    pl = torch.tensor([[0, 1, 0, -1]], dtype=torch.int8)
    value = float(aevlp_loss(hp, z, obs, pl, (w, b, mu, sigma)).mean())
    p = 0.5
    k = 1 / (1 + math.exp(2.0))  # sigmoid(0 * p - 2)
    v = math.exp(-0.5 * ((p - mu) / sigma) ** 2)
    unlabelled = v * (k * (1 - p**0.01) / 0.01 + (1 - k) * (1 - (1 - p) ** 1.0) / 1.0)
    vc = min(max(v, 1 - 0.7), 1 - 0.4)  # 0.6
    positive = (1 - vc) * (0.9 * _nl(p, 1e-7) + 0.1 * _nl(p, 1e-7))
    negative = v * _nl(p, 1e-7)  # only reached with negatives = true
    reg = 0.05 * (4 * p - 1.5) ** 2 / 4**2
    assert value == pytest.approx((_nl(p, 1e-7) + positive + unlabelled + negative) / 4 + reg, rel=1e-6)


def test_batched_losses_read_the_cache_under_the_seed() -> None:
    from spmlbench.flips import flip_mask
    from spmlbench.losses import build_batched_loss

    n, c = 6, 3
    cos = torch.zeros(n, 2, 1, c)
    cos[:, 0, 0] = torch.tensor([0.3, 0.0, 0.0])  # plain: class 0 wins
    cos[:, 1, 0] = torch.tensor([0.0, 0.0, 0.3])  # flipped: class 2 wins
    loss = build_batched_loss("vlpl", [{}, {}], num_classes=c, num_train=n)
    loss.init_state(torch.zeros(n, c), [3, 4])
    with pytest.raises(ConfigError, match="--source vlpl"):
        loss.start_epoch(1, 2)  # no cache yet
    loss.attach_pseudo(cos)
    for epoch in (1, 2):
        loss.start_epoch(epoch, 2)
        for m, seed in enumerate((3, 4)):
            flipped = flip_mask(seed, epoch, np.arange(n))  # the training image's own flip (e2e modes)
            want = torch.zeros(n, c, dtype=torch.int8)
            want[torch.arange(n), torch.as_tensor(np.where(flipped, 2, 0))] = 1
            assert torch.equal(loss.pl[m], want), (epoch, m)
    with pytest.raises(ConfigError, match="shape"):
        build_batched_loss("aevlp", [{}], num_classes=c, num_train=n).attach_pseudo(cos)  # 1 view, needs 17


# --------------------------------------------------------------------------------------------- cache
def _dataset(home: Path, n: int = 7, name: str = "tiny") -> list[str]:
    root = home / name / "images"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(24 + i, 30, 3), dtype=np.uint8)).save(root / f"i{i}.png")
        images.append(f"i{i}.png")
    splits = ["train"] * (n - 2) + ["val", "test"]
    y = np.eye(3, dtype=np.int8)[np.arange(n) % 3]
    write_labels(home / name / "labels.parquet", images, splits, y, y,
                 {"dataset": name, "class_names": ["cat", "dog", "traffic_light"]})
    return images


@pytest.mark.clip
def test_cache_round_trip_resume_and_refusals(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spmlbench.features import pseudo

    images = _dataset(home)
    monkeypatch.setattr(pseudo, "PART_ROWS", 2)  # 5 training rows: parts of 2, 2, 1
    calls: list[int] = []
    real = pseudo._scores

    def flaky(*args, **kw):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted while scoring the second part
        return real(*args, **kw)

    monkeypatch.setattr(pseudo, "_scores", flaky)
    with pytest.raises(KeyboardInterrupt):
        pseudo.build_pseudo("tiny", "damp", home=home, **TINY)
    assert not pseudo.pseudo_path("tiny", "damp", home).exists()
    path = pseudo.build_pseudo("tiny", "damp", home=home, **TINY)
    assert calls == [2, 2, 2, 1]  # the finished first part was reused
    cos = pseudo.load_pseudo("tiny", "damp", home)
    assert cos.shape == (5, 2, 17, 3)

    # the values equal CLIP run directly on the views (same seeded random weights)
    from spmlbench.features.clip import image_embeddings, load_clip, text_embeddings

    clip = load_clip("spml-tiny-clip", "none", torch.device("cpu"))
    text = text_embeddings(clip, ["cat", "dog", "traffic_light"], "a photo of a {}.", torch.device("cpu"))
    x = pseudo.views(home / "tiny" / "images" / images[3], "damp", clip.image_size, 4)
    direct = (image_embeddings(clip, x.flatten(0, 1)) @ text.t()).view(2, 17, 3)
    assert torch.equal(cos[3], direct)
    assert torch.equal(x[1], x[0].flip(-1))  # second half: the same views flipped
    meta = pseudo.read_metadata(path)
    assert meta["model"] == "spml-tiny-clip" and meta["grid"] == 4 and meta["class_names"][2] == "traffic_light"
    assert np.frombuffer(__import__("base64").b64decode(meta["text_embeddings"]), np.float32).size == 3 * 32

    # refusals: another model; labels re-prepared with other rows
    with pytest.raises(ConfigError, match="model 'spml-tiny-clip' .now 'ViT-B-16-quickgelu'.*--force"):
        pseudo.build_pseudo("tiny", "damp", home=home, model="ViT-B-16-quickgelu", pretrained="none")
    _dataset(home, n=8)
    with pytest.raises(DataError, match="training rows"):
        pseudo.load_pseudo("tiny", "damp", home)


@pytest.mark.slow
@pytest.mark.clip
def test_offline_digits_pseudo_labels_then_run(cli, home: Path) -> None:
    from spmlbench.experiments.records import load_records

    assert cli("prepare", "digits").code == 0
    r = cli("pseudo-labels", "digits", "--source", "damp", "--quiet")
    assert r.code == 0, r.err
    r = cli("run", "--losses", "an,gr,vlpl,aevlp", "--seeds", "0", "--epochs", "2", "--lr", "1e-3",
            "--batch-size", "16", "--out", str(home / "res"))
    assert r.code == 2 and "pseudo-labels digits --source vlpl" in r.err  # vlpl's cache is missing
    assert cli("pseudo-labels", "digits", "--source", "vlpl", "--quiet").code == 0
    r = cli("run", "--losses", "an,gr,vlpl,aevlp", "--seeds", "0", "--epochs", "2", "--lr", "1e-3",
            "--batch-size", "16", "--out", str(home / "res"))
    assert r.code == 0, r.err
    df = load_records(home / "res").set_index("loss")
    assert set(df.index) == {"an", "gr", "vlpl", "aevlp"} and set(df["status"]) == {"ok"}
    assert all(10 < v < 100 for v in df["test_map"])


@pytest.mark.slow
@pytest.mark.clip
def test_e2e_and_linear_init_train_with_the_cache(home: Path, tmp_path: Path) -> None:
    from spmlbench.experiments.jobs import JobSpec
    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.features.pseudo import build_pseudo
    from spmlbench.train import e2e, linear_init

    _dataset(home, n=10)  # 8 training rows: no batch of one (batch norm)
    build_pseudo("tiny", "damp", home=home, **TINY)
    for mode in ("e2e", "linear-init"):
        job = JobSpec(dataset="tiny", loss="aevlp", hparams=(("top_k", 2),), mode=mode, seed=0, label_seed=1200,
                      split_seed=1200, backbone="resnet18:none", epochs=2, batch_size=2, lr=1e-3, val="clean",
                      early_stop="none")
        recipe, linear_recipe = job_recipes(job, {"eval_batch_size": 4}, {"epochs": 2})
        kw = dict(recipe=recipe, home=home, device="cpu", workdir=tmp_path / mode, workers=0, image_size=32)
        if mode == "e2e":
            res = e2e.train_e2e(job, **kw)
        else:
            res = linear_init.train_linear_init(job, linear_recipe=linear_recipe,
                                                features=torch.randn(10, 512, generator=torch.Generator().manual_seed(0)),
                                                **kw)
            assert res.linear_phase is not None and len(res.linear_phase["val_map"]) == 2
        assert res.ok and res.epochs_run == 2, res.error
        state = torch.load(tmp_path / mode / "last.pt", weights_only=False)["loss"]
        assert state["batched.pl"].shape == (1, 8, 3) and state["batched.pl"].abs().sum() > 0  # pseudo-labels made


def test_aevlp_gradient_by_hand() -> None:
    hp = AEVLPParams()
    step = gr_schedule(hp.schedule_params(), 1, 8)
    w, b, mu, sigma = step
    z = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    obs = torch.tensor([[True, False, False, False]])
    pl = torch.tensor([[0, 1, 0, -1]], dtype=torch.int8)
    aevlp_loss(hp, z, obs, pl, step).mean().backward()
    p, dp = 0.5, 0.25  # dp/dz at z = 0
    k = 1 / (1 + math.exp(2.0))
    v = math.exp(-0.5 * ((p - mu) / sigma) ** 2)  # k and v are computed from the detached p: no gradient
    reg = 0.05 * 2 * (4 * p - 1.5) / 4**2 * dp  # d/dz_j of reg (sum_c p - e)^2 / C^2, every entry of the row
    want = [
        -dp / (p + 1e-7),                                            # nlog(p)
        0.4 * (0.9 * -dp / (p + 1e-7) + 0.1 * dp / (p + 1e-7)),      # (1 - 0.6) [rho nlog p + (1 - rho) nlog(1 - p)]
        v * (k * -(p ** (0.01 - 1)) * dp + (1 - k) * dp),            # v [k L2 + (1 - k) L3]
        v * dp / (p + 1e-7),                                         # v nlog(1 - p)
    ]
    assert z.grad[0].tolist() == pytest.approx([g / 4 + reg for g in want], rel=1e-6)


def test_damp_gcn_adjacency_by_hand() -> None:
    from spmlbench.features.pseudo import damp_adjacency, gcn_text

    rel = np.array([[5.0, 3.0, 1.0], [2.0, 0.0, 2.0], [4.0, 3.0, 9.0]])
    # top 2 per row (diagonal included in the ranking, then zeroed): row 0 keeps 5, 3 -> [0, 3, 0] -> [0, .2, 0]
    # row 1 keeps 2, 2 -> [1, 0, 1] / 2 x .2; row 2 keeps 9, 4 -> [4, 0, 0] -> [.2, 0, 0]
    adj = damp_adjacency(rel, 2)
    assert torch.allclose(adj, torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.2, 0.0, 0.8]]))
    t = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    a, b = gcn_text(t, rel, 2, seed=0), gcn_text(t, rel, 2, seed=0)
    assert torch.equal(a, b) and not torch.allclose(a, t)  # seeded (the released GCN is not), and it moves t
    assert torch.allclose(a.norm(dim=-1), torch.ones(3))


@pytest.mark.clip
def test_missing_clip_weights_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from spmlbench.features import clip as clip_mod

    oc = clip_mod.open_clip_module()

    def offline(*args, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(oc, "create_model", offline)
    with pytest.raises(ConfigError) as err:
        clip_mod.load_clip("ViT-B-16-quickgelu", "openai", torch.device("cpu"))
    text = str(err.value)
    assert "\n" not in text and text.startswith("ViT-B-16-quickgelu/openai: CLIP weights not available (OSError)")
    assert "hf.co/timm/vit_base_patch16_clip_224.openai" in text and "--weights none" in text
    with pytest.raises(ConfigError, match="no such weights"):
        clip_mod.load_clip("ViT-B-16-quickgelu", "laion9b", torch.device("cpu"))


@pytest.mark.clip
def test_relation_file_switches_the_gcn_on_and_is_recorded(home: Path) -> None:
    from spmlbench.features import pseudo

    _dataset(home)
    path = pseudo.build_pseudo("tiny", "damp", home=home, **TINY)
    without = pseudo.load_pseudo("tiny", "damp", home)
    assert pseudo.read_metadata(path)["gcn"] == "off (no relation.npy)"
    np.save(home / "tiny" / "pseudo" / "relation.npy", np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 0.0], [0.5, 2.0, 1.0]]))
    with pytest.raises(ConfigError, match="gcn"):
        pseudo.build_pseudo("tiny", "damp", home=home, **TINY)  # other settings: refused without --force
    pseudo.build_pseudo("tiny", "damp", home=home, force=True, **TINY)
    assert pseudo.read_metadata(path)["gcn"].startswith("seed 0, sparse_topk 20, relation.npy sha256 ")
    assert not torch.equal(pseudo.load_pseudo("tiny", "damp", home), without)
