"""Registry-driven harness (as torchmetrics tests each metric against its reference): for every loss
with a fused path, the fused form equals the plain formula (values, logit gradients, loss-parameter
gradients, state across epochs, per-config batches, extreme logits)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import torch

from spmlbench.errors import ConfigError
from spmlbench.heads import method_of
from spmlbench.losses import LOSSES, batched_class, build_batched_loss, list_losses, resolve_hparams

N, C, B, M, EPOCHS = 24, 5, 8, 3, 8
FUSED = [n for n in list_losses() if LOSSES.get(n).fused is not None]


def variants(name: str) -> list[dict[str, float]]:
    """Three configs: the defaults, and every nonzero float hyperparameter scaled by 0.8 and by 1.25
    (a scaled value that fails validation keeps its default)."""
    params = LOSSES.get(name).params
    hints = typing.get_type_hints(params)
    out: list[dict[str, float]] = [{}]
    for factor in (0.8, 1.25):
        config: dict[str, float] = {}
        for f in dataclasses.fields(params):
            if hints[f.name] is float and f.default:
                try:
                    resolve_hparams(name, "voc", **{**config, f.name: f.default * factor})
                    config[f.name] = f.default * factor
                except ConfigError:
                    pass
        out.append(config)
    return out


def _build(name: str, path: str) -> torch.nn.Module:
    loss = build_batched_loss(name, variants(name), num_classes=C, num_train=N, dataset="voc", path=path).double()
    gen = torch.Generator().manual_seed(5)
    obs = torch.zeros(N, C)
    obs[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1
    loss.init_state(obs > 0.5, [0, 1, 2])
    return loss


def _obs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    obs = torch.zeros(N, C, dtype=torch.bool)
    obs[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = True
    return obs


def _step(loss: torch.nn.Module, z: torch.Tensor, s: torch.Tensor, index: torch.Tensor):
    z = z.clone().requires_grad_(True)
    for p in loss.parameters():
        p.grad = None
    values = loss(z, s, index)
    values.sum().backward()
    grads = [p.grad.clone() for p in loss.parameters()]
    return values.detach(), z.grad, grads


@pytest.mark.parametrize("per_config", [False, True], ids=["shared-batch", "per-config-batch"])
@pytest.mark.parametrize("name", FUSED)
def test_fused_equals_plain_over_epochs(name: str, per_config: bool) -> None:
    fused, plain = _build(name, "fused"), _build(name, "plain")
    assert fused.fused_grad and type(fused) is not type(plain)
    obs = _obs()
    gen = torch.Generator().manual_seed(11)
    for epoch in range(1, EPOCHS + 1):
        for loss in (fused, plain):
            loss.start_epoch(epoch, EPOCHS)
        order = torch.stack([torch.randperm(N, generator=gen) for _ in range(M)])
        for start in range(0, N, B):
            index = order[:, start:start + B] if per_config else order[0, start:start + B]
            s = obs[index]
            scale = 30.0 if start == 0 and epoch == EPOCHS else 3.0  # one batch of extreme logits
            z = torch.randn(M, index.shape[-1], C, generator=gen, dtype=torch.float64) * scale
            got, want = _step(fused, z, s, index), _step(plain, z, s, index)
            torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-9, msg=f"{name} values, epoch {epoch}")
            torch.testing.assert_close(got[1], want[1], rtol=1e-7, atol=1e-9, msg=f"{name} dz, epoch {epoch}")
            for a, b in zip(got[2], want[2]):
                torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=f"{name} parameter grads")
        train_logits = torch.randn(M, N, C, generator=gen, dtype=torch.float64) * 2
        for loss in (fused, plain):
            loss.end_epoch(lambda: train_logits)
        want_state, got_state = plain.state_dict(), fused.state_dict()
        assert set(want_state) <= set(got_state)  # the fused form may cache derived values (GR's schedule)
        for key in want_state:
            torch.testing.assert_close(got_state[key], want_state[key], rtol=1e-9, atol=1e-9, msg=f"{name} {key}")


@pytest.mark.parametrize("name", FUSED)
def test_fused_value_and_grad_matches_the_plain_gradient(name: str) -> None:
    fused, plain = _build(name, "fused"), _build(name, "plain")
    for loss in (fused, plain):
        loss.start_epoch(3, EPOCHS)
    gen = torch.Generator().manual_seed(3)
    index = torch.randperm(N, generator=gen)[:B]
    z = torch.randn(M, B, C, generator=gen, dtype=torch.float64) * 3
    values, dz = fused.value_and_grad(z, _obs()[index], index)
    want = _step(plain, z, _obs()[index], index)
    torch.testing.assert_close(values, want[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dz, want[1], rtol=1e-7, atol=1e-9)


def test_every_builtin_is_registered_with_its_formula_and_citation() -> None:
    names = list_losses()
    assert len(names) == len(set(names)) >= 16
    for name in names:
        d = LOSSES.get(name)
        assert d.params.loss == name and callable(d.formula) and d.citation and d.year > 2000, name
        head = method_of(name).head
        where = f"spmlbench/losses/builtin/{name}.py" if method_of(name).loss == name else \
            f"spmlbench/heads/builtin/{Path(head.origin).name}"  # a head's method: the head's file
        assert d.origin == where, (name, d.origin)
    # every built-in has its fused accelerator but these (autograd, like a plugin)
    assert set(FUSED) == set(names) - {"vlpl", "aevlp", "smile", "mime", "mime_vib"}


@pytest.mark.parametrize("name", [n for n in list_losses() if LOSSES.get(n).batched is None])
def test_derived_broadcast_form_equals_one_call_per_config(name: str) -> None:
    cls = batched_class(name, "plain")
    looped = type("Looped", (cls,), {"broadcast": False})
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(M, B, C, generator=gen, dtype=torch.float64) * 3
    s = torch.rand(M, B, C, generator=gen) > 0.7
    a = build_batched_loss(name, variants(name), num_classes=C, dataset="voc", path="plain")
    b = looped(list(a.hparams), num_classes=C)
    for loss in (a, b):
        loss.start_epoch(3, EPOCHS)
    torch.testing.assert_close(a(z, s), b(z, s), rtol=1e-12, atol=1e-12)
