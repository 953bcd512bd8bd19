"""The class-balance shift b, fitted on validation data (never on test data)."""

from __future__ import annotations

import torch


def fit_balance(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The shift b that best equalises the two class accuracies of ``scores + b > 0``.

    Args:
        scores: (N,) scores without the shift (raw g(φ(x))).
        labels: (N,) 1 = sensitive, 0 = other; both classes must be present.
    Returns:
        b, placed midway between two neighbouring scores so no input sits on the threshold.
    """
    s = scores.detach().double().cpu()
    y = labels.detach().cpu().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("fit_balance needs validation inputs of both classes")
    order = torch.argsort(s)
    s_sorted, y_sorted = s[order], y[order]
    # Threshold just above the k lowest scores (k = 0..N): those are predicted "other".
    neg_below = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum((~y_sorted).long(), 0)])
    pos_below = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(y_sorted.long(), 0)])
    tnr = neg_below.double() / n_neg
    tpr = 1.0 - pos_below.double() / n_pos
    gap = (tpr - tnr).abs() - 1e-9 * (tpr + tnr)  # ties: prefer higher accuracy
    k = int(torch.argmin(gap))
    lo = s_sorted[k - 1] if k > 0 else s_sorted[0] - 1.0
    hi = s_sorted[k] if k < len(s_sorted) else s_sorted[-1] + 1.0
    threshold = 0.5 * (lo + hi)
    return float(-threshold)


def balanced_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of the two class accuracies of the decision ``scores > 0``."""
    pred = scores > 0
    y = labels.bool()
    return 0.5 * (float((pred & y).sum()) / max(1, int(y.sum())) + float((~pred & ~y).sum()) / max(1, int((~y).sum())))
