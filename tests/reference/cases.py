"""Per-loss wiring of the reference tester: for each registered loss with a ``reference``, the arguments its
formula takes beyond ``(hp, logits, observed)`` and the released function's batch value on the same inputs.

A case is ``case(hp, z, s, epoch, gen) -> (formula_args, reference)``: ``z`` (B, C) logits, ``s`` (B, C) bool
observed positives, ``epoch`` the 1-based epoch of :data:`NUM_EPOCHS`, ``gen`` a seeded generator for extra
inputs (pseudo-labels, label-estimator logits, ...); ``reference(z) -> scalar`` is the release's batch loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import release_cole as cole
import release_em as em
import release_gr as grr
import release_large_loss as ll
import release_mime as mime
import release_robust as robust
import release_smile as smile
import release_vlpl as vlpl
import torch
from torch import Tensor

from spmlbench.losses.builtin.gr import gr_schedule
from spmlbench.losses.plain import Step

NUM_EPOCHS = 10
Reference = Callable[[Tensor], Tensor]
Case = Callable[[Any, Tensor, Tensor, int, torch.Generator], tuple[tuple[Any, ...], Reference]]


def _step(z: Tensor, epoch: int) -> Step:
    return Step(epoch=epoch, num_epochs=NUM_EPOCHS, started=True, num_classes=z.shape[1])


def _pl(s: Tensor, gen: torch.Generator, rate: float = 0.1) -> Tensor:
    """Pseudo-labels in {0, 1}: about ``rate`` of the unobserved entries positive."""
    return ((torch.rand(s.shape, generator=gen) < rate) & ~s).to(torch.int8)


def _large(scheme: str) -> Case:
    def case(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
        return (_step(z, epoch),), lambda x: ll.large_loss(x, s.to(x.dtype), epoch, hp.delta_rel, scheme)
    return case


def _plain(fn: Callable[..., Tensor], *names: str) -> Case:
    def case(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
        return (), lambda x: fn(x, s.to(x.dtype), *(getattr(hp, n) for n in names))
    return case


def _role(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
    g = (torch.randn(s.shape, generator=gen) * 3).to(z.dtype)
    return (g,), lambda x: cole.loss_role(x, s.to(x.dtype), g, hp.expected_num_pos)


def _em_apl(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
    pseudo = (torch.rand(s.shape, generator=gen) < 0.3) & ~s
    target = (0.01 + 0.98 * torch.rand(s.shape, generator=gen)).to(z.dtype) * pseudo
    stored = torch.where(pseudo, -target, s.to(z.dtype))  # the release keeps -t in its observed matrix
    return (pseudo, target), lambda x: em.loss_em_apl(x, stored, hp.alpha, hp.beta)


def _splc(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
    return (_step(z, epoch),), lambda x: robust.splc(x, s.to(x.dtype), epoch - 1, hp.tau, hp.change_epoch - 1,
                                                     hp.margin, hp.gamma)


def _gr(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
    sched = grr.schedule(hp.beta, hp.alpha, epoch, NUM_EPOCHS, hp.linear_init)
    return (_step(z, epoch),), lambda x: grr.gr(x, s.to(x.dtype), hp.q2, hp.q3, sched)


def _aevlp(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
    pl = _pl(s, gen)
    suite_step = gr_schedule(hp.schedule_params(), epoch, NUM_EPOCHS)
    sched = grr.schedule(hp.beta, hp.alpha, epoch, NUM_EPOCHS)
    return (pl, suite_step), lambda x: grr.gpr(x, s.to(x.dtype), pl.to(x.dtype), sched, q2=hp.q2, q3=hp.q3,
                                              lam=hp.lam, rho=hp.rho, reg=hp.reg,
                                              expected_num_pos=hp.expected_num_pos)


def _vlpl(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
    pl = _pl(s, gen)
    return (pl,), lambda x: vlpl.loss_em_pl(x, s.to(x.dtype), pl.to(x.dtype), hp.alpha, hp.beta_pos)


def _mime(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
    u = torch.rand(s.shape, generator=gen)
    target = torch.where(u < 0.2, -1, 0).to(torch.int8)
    target[s] = 1  # observed positives stay 1 in the release's pseudo-label matrix
    return (target,), lambda x: mime.loss_vib(x, target.to(x.dtype), hp.T)


def _smile(hp: Any, z: Tensor, s: Tensor, epoch: int, gen: torch.Generator) -> tuple[tuple[Any, ...], Reference]:
    d1 = torch.rand(s.shape, generator=gen).to(z.dtype)  # the inference model's scores
    return (d1,), lambda x: smile.classifier_loss(x, s.to(x.dtype), d1, T=hp.T, p=hp.p, mu=hp.mu, bias=hp.bias,
                                                  rate=hp.rate)


CASES: dict[str, Case] = {
    "bce": _plain(cole.loss_an),
    "an": _plain(cole.loss_an),
    "an_ls": _plain(cole.loss_an_ls, "ls_coef"),
    "wan": _plain(cole.loss_wan),
    "epr": _plain(cole.loss_epr, "expected_num_pos"),
    "role": _role,
    "ll_r": _large("reject"),
    "ll_ct": _large("temporary"),
    "ll_cp": _large("permanent"),
    "boostlu_ll_r": _large("reject"),
    "boostlu_ll_ct": _large("temporary"),
    "boostlu_ll_cp": _large("permanent"),
    "em": _plain(em.loss_em_apl, "alpha"),
    "em_apl": _em_apl,
    "asl": _plain(robust.asl, "gamma_neg", "gamma_pos", "clip", "eps"),
    "hill": _plain(robust.hill, "lamb", "margin", "gamma"),
    "splc": _splc,
    "gr": _gr,
    "aevlp": _aevlp,
    "vlpl": _vlpl,
    "mime": _mime,
    "mime_vib": _mime,
    "smile": _smile,
}
