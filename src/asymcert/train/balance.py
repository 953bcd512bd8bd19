"""The class-balance shift b, fitted on validation data (never on test data)."""

from __future__ import annotations

import math
from fractions import Fraction

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


def fit_false_positive_shift(scores: torch.Tensor, labels: torch.Tensor, false_positive_rate: float) -> float:
    """The shift b that flags the most sensitive inputs while flagging at most a share
    ``false_positive_rate`` of the other class: the operating point detectors are run at.

    The decision is ``scores + b > 0``. At most m = ⌊rate·N_other⌋ inputs of the other class are flagged
    (exactly, in rational arithmetic of the given float), and among the thresholds that keep to that the
    lowest one is taken (it flags every input above the (m + 1)-th highest score of the other class).

    Args:
        scores: (N,) scores without the shift (raw g(φ(x))).
        labels: (N,) 1 = sensitive, 0 = other; both classes must be present.
        false_positive_rate: the largest share of the other class that may be flagged, in [0, 1).
    Returns:
        b, a float32 number (the model keeps b in float32), so float32 scores compare with −b exactly
        as here; inputs exactly at the threshold are not flagged.
    """
    s = scores.detach().double().cpu()
    y = labels.detach().cpu().bool()
    if not bool(y.any()) or bool(y.all()):
        raise ValueError("fit_false_positive_shift needs validation inputs of both classes")
    if not 0 <= false_positive_rate < 1:
        raise ValueError(f"false_positive_rate must be in [0, 1), got {false_positive_rate}")
    other = torch.sort(s[~y], descending=True).values
    allowed = math.floor(Fraction(false_positive_rate) * len(other))  # other-class inputs that may be flagged
    floor = float(other[allowed])  # the highest score that must stay unflagged
    above = s[s > floor]
    threshold = 0.5 * (floor + float(above.min())) if above.numel() else floor + 1.0
    b = torch.tensor(-threshold, dtype=torch.float32)
    while float(b) > -floor:  # rounded past the floor: step down until −b ≥ floor (then those stay unflagged)
        b = torch.nextafter(b, torch.tensor(-math.inf))
    return float(b)


def operating_shift(scores: torch.Tensor, labels: torch.Tensor, false_positive_rate: float | None) -> float:
    """b for the chosen operating point: equal class accuracies (:func:`fit_balance`) when
    ``false_positive_rate`` is None, else :func:`fit_false_positive_shift`."""
    if false_positive_rate is None:
        return fit_balance(scores, labels)
    return fit_false_positive_shift(scores, labels, false_positive_rate)


def detection_rates(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(detection rate, false-positive rate) of the decision ``scores > 0``: the shares of the sensitive
    class and of the other class that are flagged (0 for a class that is absent)."""
    pred = scores.detach().cpu() > 0
    y = labels.detach().cpu().bool()
    return float(pred[y].sum()) / max(1, int(y.sum())), float(pred[~y].sum()) / max(1, int((~y).sum()))
