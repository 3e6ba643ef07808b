"""MIME's head and pseudo-labelling against the release (palm-biaoliu/mime@62a0f66, ``release_mime.py``).

The head: the suite's :class:`~spmlbench.heads.builtin.mime.MIMEHead` and the transcribed ``LEModel_VIB`` (with
``PositionEmbeddingSine``) with the same weights and the same random draws give the same logits and gradients
(float64). The pseudo-labelling pass: :class:`~spmlbench.losses.builtin.mime.MIMELoss` and the transcribed
``set_pseudo_labeling`` on the same predictions give the same label matrix, with the release's ground-truth
prior, with the suite's expected-positives prior, and with ``drop_last_fix = False`` (the release's pass).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import release_mime  # noqa: E402

from spmlbench.losses import build_batched_loss  # noqa: E402
from spmlbench.heads.builtin.mime import MIMEHead, sine_position  # noqa: E402


def test_head_matches_the_release() -> None:
    torch.manual_seed(0)
    head = MIMEHead(32, 5, z_dim=8, samples=10).double().eval()
    ref = release_mime.LEModelVIBHead(32, 5, 8).double().eval()
    ref.load_suite(head)
    fmap = torch.randn(3, 32, 3, 4, dtype=torch.float64)
    a, b = fmap.clone().requires_grad_(True), fmap.clone().requires_grad_(True)
    torch.manual_seed(7)
    out_suite = head(a)
    torch.manual_seed(7)
    src = b.flatten(2).permute(2, 0, 1)  # (hw, B, D), sequence first as released
    pos = release_mime.position_embedding_sine(3, 4, 16).double().flatten(2).permute(2, 0, 1).expand_as(src)
    assert torch.equal(sine_position(3, 4, 32, b.device), pos[:, 0].float())
    out_ref, mu, std = ref(src, pos)
    assert torch.allclose(out_suite, out_ref, rtol=1e-12, atol=1e-12)
    kl = -0.5 * (1 + 2 * std.log() - mu.pow(2) - std.pow(2)).mean() * head.beta  # loss_VIB's reg_loss
    assert float(head.penalty().detach()) == pytest.approx(float(kl.detach()), rel=1e-12)
    weights = torch.randn(out_suite.shape, dtype=torch.float64)
    (ga,) = torch.autograd.grad((out_suite * weights).sum(), a)
    (gb,) = torch.autograd.grad((out_ref * weights).sum(), b)
    assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-12)


def _setup(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits (1, n, c), observed (n, c), clean file, observed file)`` (the files add 20 % val rows)."""
    gen = torch.Generator().manual_seed(seed)
    n_file = n + n // 5
    clean = torch.rand(n_file, c, generator=gen) < 0.3
    obs = torch.zeros(n_file, c, dtype=torch.bool)
    for i in range(n_file):
        pos = torch.nonzero(clean[i]).flatten()
        if len(pos):
            obs[i, pos[torch.randint(0, len(pos), (1,), generator=gen)]] = True
    logits = torch.randn(1, n, c, generator=gen) * 2
    return logits, obs[:n], clean, obs


@pytest.mark.parametrize("prior", ["ground_truth", "expected"])
def test_pseudo_labels_match_the_release(prior: str) -> None:
    n, c = 64, 6
    logits, obs, clean_file, obs_file = _setup(n, c, 1)
    loss = build_batched_loss("mime", [{"prior": prior, "expected_num_pos": 1.5, "warmup_epoch": 1}],
                              num_classes=c, num_train=n)
    loss.init_state(obs.float(), [0])
    loss.set_ground_truth(clean_file.float(), obs_file.float())
    loss.start_epoch(1, 10)
    loss.end_epoch(lambda: logits)
    if prior == "ground_truth":  # the release counts over the whole training file
        estimate = release_mime.count_estimate(clean_file.int().numpy(), obs_file.int().numpy())
    else:  # the suite's default: the training split's observed frequency times the published expected positives
        estimate = [float(v) * 1.5 for v in obs.double().mean(0)]
    order = np.random.default_rng(0).permutation(n)  # the release's shuffled pass (no row dropped: 64 = 8 x 8)
    preds = torch.sigmoid(logits[0]).numpy()[order]
    want = release_mime.pseudo_label(preds, order, obs.int().numpy(), estimate)
    assert (loss.target[0].numpy() == want).all()


def test_release_drop_last_pass_matches() -> None:
    n, c, batch = 70, 6, 8  # the release predicts 64 rows; rows 64-69 lose their observed positive
    logits, obs, clean_file, obs_file = _setup(n, c, 2)
    loss = build_batched_loss("mime", [{"prior": "ground_truth", "warmup_epoch": 1, "drop_last_fix": False}],
                              num_classes=c, num_train=n)
    loss.init_state(obs.float(), [3])
    loss.set_ground_truth(clean_file.float(), obs_file.float())
    loss.start_epoch(1, 10)
    loss(torch.zeros(1, batch, c), obs[:batch], torch.arange(batch))  # the loss learns the batch size
    n_pred, predicted = loss.predicted_rows(n)
    loss.end_epoch(lambda: logits)
    assert n_pred == 64 and predicted is not None and int(predicted.sum()) == 64
    idx = torch.nonzero(predicted).flatten().numpy()
    estimate = release_mime.count_estimate(clean_file.int().numpy(), obs_file.int().numpy())
    want = release_mime.pseudo_label(torch.sigmoid(logits[0]).numpy()[idx], idx, obs.int().numpy(), estimate)
    assert (loss.target[0].numpy() == want).all()
    assert (want[64:][obs[64:].numpy()] == 0).all() and obs[64:].any()  # the lost positives
