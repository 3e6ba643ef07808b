"""The loss contract: a batched module (leading config axis M) and its one-config wrapper.

Every loss is written once, in broadcasting form: hyperparameters become ``(M, 1, 1)`` tensors,
logits are ``(M, B, C)``, the observed matrix is ``(B, C)`` (shared by every config) or
``(M, B, C)`` (one minibatch per config, e.g. configs of different seeds), the training-row ids
``index`` are ``(B,)`` or ``(M, B)`` likewise, and the result is ``(M,)``. Config ``m`` of a call
with per-config observed/index equals a call of that config alone on its own batch.
The per-config form (:class:`SingleLoss`) is the ``M = 1`` case of the same module.

State with a row per training image (ROLE's label logits, LL-Cp's corrected labels, EM-APL's
pseudo labels) has a leading ``M`` axis. It needs the training observed matrix; rows are
recorded lazily the first time a batch shows them, or all at once with ``init_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from spmlbench.errors import ConfigError
from spmlbench.hparams import HParams

PredictFn = Callable[[], Tensor]




def spow(logx: Tensor, q: Tensor | float) -> Tensor:
    """``x ** q`` computed as ``exp(q * log x)``: finite value and gradient at x = 0 and 1."""
    return torch.exp(q * logx)






def rows_of(state: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` of per-config state ``state`` (M, N, ...): index (B,) -> (M, B, ...) (the same rows
    for every config); index (M, B) -> (M, B, ...) (config m's own rows ``index[m]``)."""
    idx = index.to(state.device)
    if idx.dim() == 1:
        return state[:, idx]
    return state[torch.arange(state.shape[0], device=state.device).unsqueeze(1), idx]




def signs(loss: BatchedLoss, s: Tensor, like: Tensor, pos: Sequence[float] = (1.0,),
          neg: Sequence[float] | None = None) -> Tensor:
    """``where(s, pos, neg)`` (``neg`` defaults to ``-pos``) in ``like``'s dtype: cached constants, no grad.

    One value: shape of ``s``; several: a leading axis, (len, *s.shape). ``z * signs(loss, s, z)``
    equals ``where(s, z, -z)`` bitwise (gradient included) in one autograd node.
    """
    neg = [-x for x in pos] if neg is None else neg
    shape = (-1, 1, 1, 1) if len(pos) > 1 else ()
    a = loss.const(("signs", tuple(pos)), pos, like.dtype, like.device, shape)
    b = loss.const(("signs", tuple(pos), tuple(neg)), neg, like.dtype, like.device, shape)
    return torch.where(s, a, b)


class BatchedLoss(nn.Module):
    """M configs of one loss evaluated together: ``forward(logits (M,B,C), observed, index)``.

    ``observed`` is (B, C) or (M, B, C), ``index`` (B,) or (M, B) (see the module docstring).

    Subclasses set ``hparams_cls`` and implement :meth:`forward` (most derive from
    :class:`EntryLoss` and implement its per-entry function instead). ``self.epoch``/
    ``self.num_epochs`` hold the 1-based epoch set by :meth:`start_epoch`.
    """

    hparams_cls: ClassVar[type[HParams]]
    needs_rows: ClassVar[bool] = False  # keeps per-training-row state (needs num_train)
    needs_features: ClassVar[bool] = False  # e2e passes the batch's pooled features (SMILE's label enhancement)
    # forward goes through entry_mean exactly once (or value_and_grad is overridden): the trainer
    # may take values and logit gradients from value_and_grad, without autograd
    fused_grad: ClassVar[bool] = False

    def __init__(self, hparams: Sequence[HParams], num_classes: int, num_train: int | None = None) -> None:
        super().__init__()
        if not hparams:
            raise ConfigError(f"{self.hparams_cls.loss}: no hyperparameter configs given; pass at least one")
        for hp in hparams:
            if not isinstance(hp, self.hparams_cls):
                raise TypeError(f"expected {self.hparams_cls.__name__}, got {type(hp).__name__}")
        if num_classes < 1:
            raise ConfigError(f"{self.hparams_cls.loss}: num_classes={num_classes}: must be >= 1")
        if self.needs_rows and (num_train is None or num_train < 1):
            raise ConfigError(f"{self.hparams_cls.loss}: num_train={num_train}: this loss keeps one row "
                              "of state per training image; pass num_train=<training set size>")
        self.hparams: tuple[HParams, ...] = tuple(hparams)
        self.num_configs = len(self.hparams)
        self.num_classes = num_classes
        self.num_train = num_train
        self.epoch = 1
        self.num_epochs = 1
        # Small constant tensors (hyperparameter columns, switch masks), built once per
        # (key, dtype, device) on first use: the step does no list -> tensor conversion and no
        # host-to-device copy. Not state (a pure function of the hyperparameters); dropped by
        # ``_apply`` (``.to()``/``.cuda()``) and ``load_state_dict`` with the derived caches.
        self._const_cache: dict[Any, Any] = {}
        self._capture: list[Tensor] | None = None  # set only inside value_and_grad (see entry_mean)

    # -- hyperparameters as tensors ---------------------------------------------------------
    def values(self, name: str) -> list[Any]:
        """The value of hyperparameter ``name`` for each config."""
        return [getattr(h, name) for h in self.hparams]

    def col(self, name: str, like: Tensor) -> Tensor:
        """Hyperparameter ``name`` as an ``(M, 1, 1)`` tensor with ``like``'s dtype and device (cached)."""
        ck = (name, like.dtype, like.device)
        t = self._const_cache.get(ck)
        if t is None:
            t = self.const(name, self.values(name), like.dtype, like.device)
            self._const_cache[ck] = t
        return t

    def const(self, key: Any, values: Sequence[Any], dtype: torch.dtype | None, device: torch.device,
              shape: tuple[int, ...] = (-1, 1, 1)) -> Tensor:
        """A small constant tensor, built once per (key, dtype, device, shape): no host-to-device copy per step."""
        ck = ("const", key, dtype, device, shape)
        t = self._const_cache.get(ck)
        if t is None:
            t = torch.tensor(list(values), dtype=dtype, device=device).view(shape)
            self._const_cache[ck] = t
        return t

    def clear_caches(self) -> None:
        """Drop the cached constant tensors (rebuilt on next use); called on ``.to()`` and state loads."""
        self._const_cache.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:  # .to() / .cuda() / .double()
        self.clear_caches()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        self.clear_caches()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the contract -------------------------------------------------------------------------
    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        """Apply schedules before 1-based ``epoch`` of ``num_epochs``."""
        if epoch < 1 or num_epochs < 1:
            raise ValueError(f"epoch {epoch} of {num_epochs}: epochs are 1-based")
        self.epoch = int(epoch)
        self.num_epochs = int(num_epochs)

    def end_epoch(self, predict_train: PredictFn | None = None) -> None:
        """After an epoch; ``predict_train()`` -> (M, N, C) train-set logits (EM-APL only)."""

    def init_state(self, observed_train: Tensor, seed: int | torch.Generator = 0) -> None:
        """Give the (N, C) training observed matrix up front (ROLE needs it; LL-Cp/EM-APL optional)."""

    def predict_in_train_mode(self) -> bool:
        """Whether ``end_epoch``'s ``predict_train`` runs the model in train mode (MIME's release); eval by default."""
        return False

    def param_groups(self, lr: float, head_lr: float | None = None) -> list[dict[str, Any]]:
        """Extra optimizer groups for learnable loss state (ROLE's label logits at ``lr_mult x lr``, SMILE's
        label-enhancement model at the classifier's ``head_lr``); none by default."""
        return []

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config losses ``(M,)`` of logits (M, B, C) against ``observed`` for training rows ``index``."""
        raise NotImplementedError

    def value_and_grad(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-config values ``(M,)`` and the derivative of their sum in ``logits`` ``(M, B, C)``,
        without an autograd graph (the same numbers as ``forward`` + ``backward`` with a unit
        upstream gradient). Gradients of the loss's own parameters (ROLE's ``G``) are accumulated
        into their ``.grad``. Only for losses with ``fused_grad``; use autograd for the others.
        """
        if not self.fused_grad:
            raise TypeError(f"{self.hparams_cls.loss}: no fused gradient; differentiate forward() with autograd")
        captured: list[Tensor] = []
        set_attr = object.__setattr__  # a plain attribute: skip nn.Module.__setattr__'s checks (per step)
        set_attr(self, "_capture", captured)
        try:
            with torch.no_grad():
                values = self.forward(logits, observed, index)
        finally:
            set_attr(self, "_capture", None)
        if len(captured) != 1:
            raise RuntimeError(f"{self.hparams_cls.loss}: fused_grad losses must call entry_mean exactly once "
                               f"per forward (called {len(captured)} times)")
        return values, captured[0]

    def per_config_means(self, formula: Callable[..., Tensor], z: Tensor, s: Tensor, *rows: Tensor) -> Tensor:
        """``(M,)``: ``formula(hp_m, z[m], s[m], *(r[m] for r in rows)).mean()`` for each config (``s`` may be shared)."""
        return torch.stack([formula(hp, z[m], s[m if s.shape[0] > 1 else 0], *(r[m] for r in rows)).mean()
                            for m, hp in enumerate(self.hparams)])

    def check_inputs(self, logits: Tensor, observed: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
        """Validate shapes; return logits and the observed mask (0/1 floats or bool) as ``(1, B, C)`` or
        ``(M, B, C)`` bool."""
        if logits.dim() != 3 or logits.shape[0] != self.num_configs:
            raise ValueError(f"logits must be (M={self.num_configs}, B, C), got {tuple(logits.shape)}")
        m, b, c = logits.shape
        if tuple(observed.shape) not in ((b, c), (m, b, c)):
            raise ValueError(f"observed must be (B, C) = {(b, c)} or (M, B, C) = {(m, b, c)}, "
                             f"got {tuple(observed.shape)}")
        if c != self.num_classes:
            raise ValueError(f"logits have {c} classes, the loss was built for {self.num_classes}")
        if self.needs_rows:
            if index is None or tuple(index.shape) not in ((b,), (m, b)):
                raise ValueError("index must be the (B,) or (M, B) training-row ids of the batch for this loss")
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # losses are evaluated in float32 under autocast
        s = observed if observed.dtype == torch.bool else observed > 0.5  # the trainer passes bool masks
        return logits, (s if s.dim() == 3 else s.unsqueeze(0))


EntryFn = Callable[..., tuple[Any, ...]]


def _entry_value(out: tuple[Any, ...], count: Tensor) -> Tensor:
    """``mean_bc(mat)`` (+ ``extra`` (M,) when the entry function returns a third element)."""
    value = out[0].sum(dim=(-2, -1)) / count
    return value if len(out) < 3 or out[2] is None else value + out[2]


class _EntryMean(torch.autograd.Function):
    """Mean over B x C of a per-entry loss whose logit derivative is computed with it: one graph node."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, count: Tensor, entries: EntryFn, *args: Any) -> Tensor:
        out = entries(z, True, *args)
        ctx.dmat, ctx.count, ctx.num_args = out[1], count, len(args)
        return _entry_value(out, count)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True; cheaper than @once_differentiable per step
            raise RuntimeError("entry_mean: the fused loss gradient is not differentiable (no double backward)")
        return ((grad / ctx.count).view(-1, 1, 1) * ctx.dmat, None, None) + (None,) * ctx.num_args


def entry_mean(loss: BatchedLoss, z: Tensor, entries: EntryFn, *args: Any) -> Tensor:
    """``mean_bc`` of the per-entry loss ``entries(z, need_grad, *args) -> (mat, dmat[, extra])``.

    ``mat`` (M, B, C) is the per-entry loss; ``dmat`` (``None`` when ``need_grad`` is False) is
    ``B * C`` times the derivative of the returned value in ``z`` (for a plain mean: d mat / d z
    entry by entry); an optional ``extra`` (M,) is added after the mean (a regulariser; its
    derivative, times ``B * C``, belongs in ``dmat``). Differentiable in ``z`` only, through
    ``dmat``: one autograd node instead of one per elementwise op; ``args`` are constants. The
    mean divides the sum by B x C as a cached tensor of ``loss`` (bitwise ``mean``, no scalar
    conversion). Inside :meth:`BatchedLoss.value_and_grad` no graph is built: the derivative of
    the sum of the values is handed to it directly.
    """
    n = z.shape[-2] * z.shape[-1]
    count = loss.const(("entry_count", n), (n,), z.dtype, z.device, ())
    if loss._capture is not None:
        out = entries(z, True, *args)
        inv = loss._const_cache.get(("entry_inv", n, z.dtype, z.device))
        if inv is None:  # 1 / count as autograd's backward forms it from a unit upstream gradient
            inv = torch.ones((), dtype=z.dtype, device=z.device) / count
            loss._const_cache[("entry_inv", n, z.dtype, z.device)] = inv
        loss._capture.append(out[1] * inv)
        return _entry_value(out, count)
    if torch.is_grad_enabled() and z.requires_grad:
        return _EntryMean.apply(z, count, entries, *args)
    return _entry_value(entries(z, False, *args), count)


class EntryLoss(BatchedLoss):
    """A loss given by its per-entry value and exact logit derivative (:meth:`entries`), averaged
    with :func:`entry_mean`: one autograd node in ``forward``, and values and logit gradients
    without autograd through :meth:`value_and_grad`. Losses that need more than the observed mask
    (rows, stored state) override ``forward`` and still call :func:`entry_mean` once."""

    fused_grad = True

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config losses ``(M,)``: the B x C mean of :meth:`entries` (plus its extra term)."""
        z, s = self.check_inputs(logits, observed, index)
        return entry_mean(self, z, self.entries, s)

    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Any, ...]:
        """``(mat, dmat[, extra])`` as :func:`entry_mean` describes, for observed mask ``s``."""
        raise NotImplementedError


class ObservedStore(nn.Module):
    """The (N, C) training observed matrix, recorded lazily from batches or all at once."""

    def __init__(self, num_train: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("observed", torch.zeros(num_train, num_classes, dtype=torch.bool))
        self.register_buffer("seen", torch.zeros(num_train, dtype=torch.bool))
        self.all_recorded = False  # host copy of seen.all(): set by set_all / refresh / state loads

    @torch.no_grad()
    def record(self, s: Tensor, index: Tensor) -> None:
        """Remember the observed rows ``s`` of training rows ``index`` not seen before.

        ``s`` (B, C) or (1 or M, B, C) bool with ``index`` (B,) or (M, B) (per-config batches: every
        config's rows are recorded; a row shown by several configs carries the same observed row).
        Unconditional masked writes (no host synchronisation); a no-op once every row is known to be
        recorded (:meth:`set_all`, or :meth:`refresh` at an epoch start or a state load).
        """
        if self.all_recorded:
            return
        idx = index.to(self.seen.device).reshape(-1)
        c = self.observed.shape[1]
        if s.dim() == 3 and index.dim() == 1:
            s = s[0]  # shared (B,) index: every config shows the same rows, hence the same observed rows
        elif s.dim() == 3 and s.shape[0] != index.shape[0]:
            s = s.expand(index.shape[0], s.shape[1], c)  # shared (1, B, C) observed, (M, B) index
        s = s.reshape(-1, c).to(self.observed.device)
        seen = self.seen[idx].unsqueeze(1)
        self.observed[idx] = torch.where(seen, self.observed[idx], s)
        self.seen[idx] = True

    @torch.no_grad()
    def set_all(self, observed_train: Tensor) -> None:
        """Record the whole (N, C) observed matrix."""
        if tuple(observed_train.shape) != tuple(self.observed.shape):
            raise ValueError(f"observed_train must be {tuple(self.observed.shape)}, got {tuple(observed_train.shape)}")
        self.observed.copy_(observed_train.to(self.observed.device) > 0.5)
        self.seen.fill_(True)
        self.all_recorded = True

    def complete(self) -> bool:
        """Whether every training row has been recorded (one host read)."""
        return bool(self.seen.all())

    def refresh(self) -> None:
        """Re-derive the host-side "all rows recorded" flag from ``seen`` (one host read; not per step)."""
        self.all_recorded = self.complete()

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.refresh()  # once at load time: the restored rows decide whether record() is a no-op


class RecordsObserved:
    """Mixin for batched losses that keep the (N, C) training observed matrix in ``self.store``
    (an :class:`ObservedStore`): LL-Cp and EM-APL. Put it before the loss base class."""

    store: ObservedStore

    def init_state(self, observed_train: Tensor, seed: int | torch.Generator = 0) -> None:
        """Record the whole (N, C) training observed matrix (optional: rows are also recorded lazily)."""
        self.store.set_all(observed_train)

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        super().start_epoch(epoch, num_epochs)  # type: ignore[misc]
        if not self.store.all_recorded:
            self.store.refresh()  # one host read per epoch; lazy recording stops once all rows are in


class SingleLoss(nn.Module):
    """One config: ``forward(logits (B, C), observed (B, C), index (B,)) -> scalar``.

    The ``M = 1`` case of a :class:`BatchedLoss` (``self.batched``); state lives there.
    """

    def __init__(self, batched: BatchedLoss) -> None:
        super().__init__()
        if batched.num_configs != 1:
            raise ValueError("SingleLoss wraps a batched loss with exactly one config")
        self.batched = batched

    @property
    def hparams(self) -> HParams:
        """The resolved hyperparameters of this loss."""
        return self.batched.hparams[0]

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        """Apply schedules before 1-based ``epoch`` of ``num_epochs``."""
        self.batched.start_epoch(epoch, num_epochs)

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None,
                features: Tensor | None = None) -> Tensor:
        """Scalar loss of logits (B, C) against observed (B, C) for training rows ``index`` (B,) (``features``:
        the batch's pooled features, for a loss with ``needs_features``)."""
        if features is None:
            return self.batched(logits.unsqueeze(0), observed, index)[0]
        return self.batched(logits.unsqueeze(0), observed, index, features=features)[0]

    def end_epoch(self, predict_train: PredictFn | None = None) -> None:
        """After an epoch; ``predict_train()`` -> (N, C) train-set logits (only EM-APL calls it)."""
        fn = None if predict_train is None else (lambda: predict_train().unsqueeze(0))
        self.batched.end_epoch(fn)

    def init_state(self, observed_train: Tensor, seed: int | torch.Generator = 0) -> None:
        """Give the (N, C) training observed matrix (and ROLE's init seed) before training."""
        self.batched.init_state(observed_train, seed)

    def predict_in_train_mode(self) -> bool:
        """Whether ``end_epoch``'s ``predict_train`` runs the model in train mode (MIME's release)."""
        return self.batched.predict_in_train_mode()

    def param_groups(self, lr: float, head_lr: float | None = None) -> list[dict[str, Any]]:
        """Extra optimizer groups (ROLE: its label logits at ``lr_mult * lr``; SMILE: its model at ``head_lr``)."""
        return self.batched.param_groups(lr, head_lr)

