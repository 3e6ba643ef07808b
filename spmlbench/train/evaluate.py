"""Mean average precision (docs/protocol.md, section 6), vectorised in torch with scikit-learn semantics.

Per class: sort scores in descending order; at every *distinct* score threshold ``t`` take
precision ``P(t) = TP(t) / (TP(t) + FP(t))`` and recall ``R(t) = TP(t) / n_pos``; AP is
``sum_t (R(t) - R(t_prev)) * P(t)``. Equivalently every positive contributes the precision at
the end of its tie group, divided by ``n_pos``. A class with no positive gets AP 0.
"""

from __future__ import annotations

import numpy as np
import torch

# elements per chunk of (configs x classes x rows) sorted at once; bounds the float64 work memory
_CHUNK_ELEMS = 1 << 24


def _ap_rows_cpu32(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`_ap_rows` for float32 scores on the CPU, in numpy (several times faster at eval sizes).

    Each entry becomes one int64 key: the score's bits mapped to an order-preserving integer,
    inverted for descending order, with its label as the lowest bit. One SIMD sort of the keys
    orders every row; the order inside a run of equal scores does not matter, because every
    positive of a tie group gets the precision at the group's end. AP is then a sum over tie groups
    (groups never cross rows: each row's last entry ends a group):
    ``sum_g pos_in_g * TP(end_g) / (end_g + 1) / n_pos``.
    """
    r, n = scores.shape
    bits = (scores + 0.0).contiguous().view(torch.int32).numpy().astype(np.int64)  # + 0.0: -0.0 -> +0.0
    mono = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # integer order = float order (finite, +-inf)
    keys = np.sort(((~mono) << 1) | (labels != 0).numpy(), axis=1)  # ~: descending scores
    is_last = np.ones((r, n), dtype=bool)
    np.not_equal(keys[:, :-1] >> 1, keys[:, 1:] >> 1, out=is_last[:, :-1])
    ends = np.flatnonzero(is_last)  # flat index of every tie group's last entry
    cum = np.cumsum(keys & 1, axis=None)  # positives up to each entry, over all rows
    row_total = cum[n - 1::n]
    row_base = np.concatenate(([0], row_total[:-1]))  # positives in the rows before
    cum_end = cum[ends]
    row = ends // n
    rank = ends - row * n
    rank += 1
    contrib = np.subtract(cum_end, row_base[row]) / rank  # precision at the group's end
    contrib *= np.diff(cum_end, prepend=0)  # times the positives in the group
    n_pos = row_total - row_base
    ap = np.bincount(row, weights=contrib, minlength=r) / np.maximum(n_pos, 1)
    return torch.from_numpy(np.where(n_pos > 0, ap, 0.0))


def _ap_rows(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of each row of ``scores`` (R, N) against 0/1 ``labels`` (R, N); returns float64 (R,)."""
    r, n = scores.shape
    if n == 0:
        return torch.zeros(r, dtype=torch.float64, device=scores.device)
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        return _ap_rows_cpu32(scores, labels)
    sorted_scores, order = torch.sort(scores, dim=1, descending=True)
    pos = torch.gather(labels, 1, order).to(torch.float64)
    tp = torch.cumsum(pos, dim=1)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)
    # the last element of every run of equal scores is a threshold of the PR curve
    is_last = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_last[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    idx = torch.arange(n, device=scores.device).expand(r, n)
    end = torch.where(is_last, idx, torch.full_like(idx, n))
    end = torch.flip(torch.cummin(torch.flip(end, [1]), dim=1).values, [1])  # end of own tie group
    precision_at_end = torch.gather(tp, 1, end) / rank[end]
    n_pos = tp[:, -1]
    ap = (pos * precision_at_end).sum(dim=1) / n_pos.clamp(min=1.0)
    return torch.where(n_pos > 0, ap, torch.zeros_like(ap))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class AP, float64, shape ``scores.shape[:-2] + (C,)``.

    ``scores`` (..., N, C) (any leading config axes), ``labels`` (N, C) or broadcastable to
    ``scores`` with values in {0, 1}. Ties are handled as scikit-learn's
    ``average_precision_score`` (thresholds at distinct scores); an empty class gets 0.
    """
    scores = torch.as_tensor(scores)
    labels = torch.as_tensor(labels, device=scores.device)
    if scores.dim() < 2:
        raise ValueError("scores must have shape (..., N, C)")
    labels = torch.broadcast_to(labels, scores.shape)
    lead = scores.shape[:-2]
    n, c = scores.shape[-2:]
    s = scores.reshape(-1, n, c).transpose(1, 2).reshape(-1, n)
    y = labels.reshape(-1, n, c).transpose(1, 2).reshape(-1, n)
    rows_per_chunk = max(1, _CHUNK_ELEMS // max(n, 1))
    out = [_ap_rows(s[i : i + rows_per_chunk], y[i : i + rows_per_chunk]) for i in range(0, s.shape[0], rows_per_chunk)]
    ap = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=scores.device)
    return ap.reshape(*lead, c)


def mean_ap(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mAP x 100 (empty classes count as 0 and stay in the mean); shape ``scores.shape[:-2]``."""
    return average_precision(scores, labels).mean(dim=-1) * 100.0
