"""The worked example of docs/adding-a-method.md: class-wise attention pooling, one head file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from spmlbench.experiments.records import load_records
from spmlbench.heads import HEADS, method_of
from spmlbench.heads.builtin.attn_pool import AttnPoolHead, build_attn_pool
from spmlbench.heads.builtin.linear import head_init
from spmlbench.losses import resolve_hparams


def test_attention_over_positions_by_hand() -> None:
    """D = 1, two positions F = (0, 1), q = ln 3: a = softmax(0, ln 3) = (1/4, 3/4), pooled 3/4, logit 2 * 3/4 + 1."""
    head = AttnPoolHead(dim=1, num_classes=1, temperature=1.0)
    with torch.no_grad():
        head.query.fill_(math.log(3.0))
        head.weight.fill_(2.0)
        head.bias.fill_(1.0)
    fmap = torch.tensor([[[[0.0, 1.0]]]])  # (B=1, D=1, h=1, w=2)
    assert head(fmap).item() == pytest.approx(2.5, abs=1e-6)
    head.temperature = 0.5  # a = softmax(0, 2 ln 3) = (1/10, 9/10)
    assert head(fmap).item() == pytest.approx(2 * 0.9 + 1, abs=1e-6)


def test_starts_as_the_seeds_linear_head_on_the_average_pooled_map() -> None:
    hp = resolve_hparams("attn_pool_an")
    head = build_attn_pool(8, 3, seed=5, options=hp)
    w, b = head_init(5, 8, 3)
    fmap = torch.randn(4, 8, 2, 3)
    expected = fmap.mean(dim=(2, 3)) @ w.t() + b
    assert torch.allclose(head(fmap), expected, atol=1e-6)


def test_the_queries_learn_where_the_map_has_positions() -> None:
    head = build_attn_pool(4, 2, seed=0, options=resolve_hparams("attn_pool_an"))
    head(torch.randn(3, 4, 2, 2)).sum().backward()
    assert float(head.query.grad.abs().sum()) > 0


def test_composes_with_any_loss_in_every_mode() -> None:
    m = method_of("attn_pool_gr")
    assert (m.head is HEADS.get("attn_pool"), m.loss, m.reads_maps()) == (True, "gr", True)
    assert all(m.supports(mode) is None for mode in ("linear", "e2e", "linear-init"))
    hp = resolve_hparams("attn_pool_an", temperature=0.5)
    assert hp.as_dict() == {"eps": 1e-5, "temperature": 0.5}


@pytest.mark.slow
def test_attn_pool_on_digits_through_the_cli(cli, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    res = cli("run", "--mode", "e2e", "--losses", "attn_pool_an", "--backbone", "resnet18", "--weights", "none",
              "--image-size", "32", "--epochs", "1", "--batch-size", "64", "--seeds", "0", "--device", "cpu",
              "--out", str(out))
    assert res.code == 0, res.err
    (row,) = load_records(out).to_dict("records")
    assert row["loss"] == "attn_pool_an" and row["status"] == "ok" and 0 < row["test_map"] <= 100
    state = torch.load(next((out / "work").glob("*/last.pt")), weights_only=False)["model"]
    assert state["head.query"].shape == (10, 512)  # a 1 x 1 map at 32 px: one position, nothing to attend to
    assert not torch.equal(state["head.weight"], head_init(0, 512, 10)[0])  # trained from the seed's init
