"""Adam with a leading config axis and one learning rate per config.

Every parameter tensor has shape ``(M, ...)``; config ``m`` gets learning rate ``lr[m]``. The
update is ``torch.optim.Adam``'s (no weight decay, no amsgrad), applied to every config at once:
runs of configs that share a learning rate use torch's fused CPU/CUDA Adam kernel on a view for
parameters whose per-config slice is large (the fused CPU kernel always runs multi-threaded, which
costs more than it saves on small tensors and stalls on a busy machine); small ones use a plain
tensor implementation. Config ``m``'s trajectory equals a separate ``torch.optim.Adam(lr=lr[m])``
on that config's slice. The two paths differ in rounding, so the choice depends on the size of
one config's slice only, never on how many configs share the tensor: a config's numbers are
bit-identical whether it is trained alone or inside any cohort (job-id based resume relies on it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FUSED_MIN_NUMEL = 1 << 12  # per-config slices smaller than this take the plain path


def _runs(lrs: Sequence[float]) -> list[tuple[int, int, float]]:
    """Maximal runs ``(lo, hi, lr)`` of consecutive equal learning rates."""
    out: list[tuple[int, int, float]] = []
    for i, lr in enumerate(lrs):
        if out and out[-1][2] == lr and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1, lr)
        else:
            out.append((i, i + 1, float(lr)))
    return out


class BatchedAdam:
    """Adam over parameters with a leading config axis; ``lrs[i]`` is a list of M_i learning rates."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lrs: Sequence[Sequence[float]],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        if len(params) != len(lrs):
            raise ValueError("one learning-rate list per parameter is required")
        for p, lr in zip(params, lrs):
            if p.shape[0] != len(lr):
                raise ValueError(f"parameter with {p.shape[0]} configs got {len(lr)} learning rates")
        for p in params:
            # torch's fused CPU kernel walks each tensor's storage linearly: on a non-contiguous view it
            # silently updates the wrong elements (measured with torch 2.14), so stacked heads must be dense
            if not p.is_contiguous():
                raise ValueError(f"parameter of shape {tuple(p.shape)} is not contiguous; pass a contiguous tensor")
        self.params = list(params)
        self.betas = betas
        self.eps = eps
        self.fused = hasattr(torch, "_fused_adam_") if fused is None else fused
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.runs = [_runs(lr) for lr in lrs]
        dev = [p.device for p in self.params]
        self.lr_tensors = [
            torch.tensor(list(lr), dtype=p.dtype, device=d).reshape(-1, *([1] * (p.dim() - 1)))
            for p, lr, d in zip(self.params, lrs, dev)
        ]
        # one step counter per (parameter, run), as torch.optim.Adam keeps (incremented before the kernel)
        self.steps = [[torch.zeros((), dtype=torch.float32, device=d) for _ in r] for r, d in zip(self.runs, dev)]
        self.t = 0

    def zero_grad(self) -> None:
        """Drop the gradients of every parameter."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor | None] | None = None) -> None:
        """One Adam step for every config (parameters without a gradient are skipped).

        ``grads`` (optional) gives gradients computed outside autograd for the first ``len(grads)``
        parameters; a None entry, and every later parameter, uses the parameter's ``.grad``.
        """
        self.t += 1
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            g = grads[i] if grads is not None and i < len(grads) and grads[i] is not None else p.grad
            if g is None:
                continue
            if self.fused and p[0].numel() >= FUSED_MIN_NUMEL:
                g = g.contiguous()  # the fused kernel assumes dense storage (no copy when already contiguous)
                for (lo, hi, lr), step in zip(self.runs[i], self.steps[i]):
                    step.add_(1)
                    torch._fused_adam_(
                        [p[lo:hi]], [g[lo:hi]], [self.exp_avg[i][lo:hi]], [self.exp_avg_sq[i][lo:hi]], [], [step],
                        lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=self.eps,
                        amsgrad=False, maximize=False, grad_scale=None, found_inf=None,
                    )
            else:
                m, v = self.exp_avg[i], self.exp_avg_sq[i]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                t = self.t
                bc1 = 1 - b1**t
                bc2_sqrt = (1 - b2**t) ** 0.5
                denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
                p.sub_(m / denom * (self.lr_tensors[i] / bc1))

    @torch.no_grad()
    def reset_configs(self, index: int, mask: torch.Tensor) -> None:
        """Zero parameter ``index``'s moments for the configs where ``mask`` (M,) is true (after a failure)."""
        p = self.params[index]
        sel = mask.to(p.device).reshape(-1, *([1] * (p.dim() - 1)))
        self.exp_avg[index].masked_fill_(sel, 0.0)
        self.exp_avg_sq[index].masked_fill_(sel, 0.0)
