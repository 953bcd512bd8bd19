"""The class-balance shift b, fitted on validation data (never on test data)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from scipy.stats import binom


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


def allowed_false_positives(n_other: int, false_positive_rate: float, confidence: float | None = None) -> int:
    """How many of ``n_other`` validation inputs of the other class a threshold may flag.

    Without ``confidence``: m = ⌊α·n⌋ (exact rational arithmetic of the given float α), so the validation
    false-positive rate is at most α. With it (Neyman–Pearson umbrella, Tong, Feng and Li 2018): the
    largest m with P(Binomial(n, α) ≤ m) ≤ 1 − confidence. A threshold at the (m + 1)-th highest of n
    i.i.d. scores, or above it, then flags more than a share α of the distribution they come from with
    probability at most 1 − confidence over their draw: its false-positive rate is at most 1 − U₍ₙ₋ₘ₎ for
    uniform order statistics U (ties only make it smaller), and P(1 − U₍ₙ₋ₘ₎ > α) = P(Binomial(n, α) ≤ m).

    Raises:
        ValueError: ``confidence`` cannot be had with n inputs, i.e. (1 − α)ⁿ > 1 − confidence (then even
            a threshold above every score would not do; the message says how many are needed).
    """
    if confidence is None:
        return math.floor(Fraction(false_positive_rate) * n_other)
    cdf = binom.cdf(np.arange(n_other), n_other, false_positive_rate)  # P(Binomial(n, α) ≤ m), m = 0 … n − 1
    ok = np.flatnonzero(cdf <= 1.0 - confidence)
    if ok.size == 0:
        raise ValueError(
            f"{n_other} validation inputs of the other class cannot promise a false-positive rate ≤ "
            f"{false_positive_rate:g} with confidence {confidence:g}: {_needed(false_positive_rate, confidence)}"
        )
    return int(ok[-1])


def _needed(false_positive_rate: float, confidence: float) -> str:
    """How many inputs of the other class a confidence takes: the least n with (1 − α)ⁿ ≤ 1 − confidence."""
    if false_positive_rate == 0:
        return "no number of them is enough at a rate of 0"
    return f"at least {math.ceil(math.log1p(-confidence) / math.log1p(-false_positive_rate))} are needed"


FEW_FALSE_POSITIVES = 10
"""Fewer allowed false positives than this (k = ⌊α·n⌋ of n validation inputs of the other class, or fewer with
a confidence) make a noisy operating point: the validation detection rate at k false positives moves in steps
as coarse as one input of the other class, so the epoch kept by it and the fitted threshold b change much from
seed to seed (a user's fraud run: 3 allowed of 164, best epoch 1–4 of 100, 81–92% clean over 3 seeds).
Training warns and the report adds a note below this many."""


@dataclass(frozen=True)
class FalsePositiveBudget:
    """How many inputs of the other class the balance shift b may flag where it is fitted.

    Attributes:
        allowed: k, the false positives allowed (:func:`allowed_false_positives`).
        other: n, the inputs of the other class b is fitted on (the validation split; train ∪ val with refit).
        rate: α, the false-positive rate asked for (``false_positive_rate``).
    """

    allowed: int
    other: int
    rate: float

    @property
    def small(self) -> bool:
        """True when k < :data:`FEW_FALSE_POSITIVES`: b and the epoch choice rest on a handful of inputs."""
        return self.allowed < FEW_FALSE_POSITIVES

    def note(self) -> str:
        """One sentence on what a small budget means and how to enlarge it (for warnings and reports)."""
        need = f" (at least {math.ceil(FEW_FALSE_POSITIVES / self.rate)} of the other class)" if self.rate > 0 else ""
        return (
            f"the threshold b rests on {self.allowed} allowed false positive(s) among {self.other} validation "
            f"inputs of the other class (false_positive_rate {self.rate:g}), so the epoch choice and the "
            f"threshold are noisy; for {FEW_FALSE_POSITIVES} or more, use more validation data{need} or a larger "
            f"false_positive_rate (at least {FEW_FALSE_POSITIVES / max(1, self.other):.2g})"
        )

    def to_dict(self) -> dict[str, float | int]:
        """``{"allowed", "other", "rate"}`` for run.json's training summary."""
        return {"allowed": self.allowed, "other": self.other, "rate": self.rate}


def per_candidate_confidence(confidence: float | None, candidates: int) -> float | None:
    """The confidence each of ``candidates`` thresholds must hold with so that the one selected among them
    holds with ``confidence`` (a union bound: 1 − (1 − confidence)/candidates). Training fits b on the
    validation split after every epoch and keeps one epoch by its validation figures, so each epoch's b
    is a candidate; each epoch's model must not depend on the validation inputs."""
    return None if confidence is None else 1.0 - (1.0 - confidence) / max(1, candidates)


def fit_false_positive_shift(
    scores: torch.Tensor, labels: torch.Tensor, false_positive_rate: float, confidence: float | None = None
) -> float:
    """The shift b that flags the most sensitive inputs while flagging at most
    m = :func:`allowed_false_positives` inputs of the other class: the operating point detectors are run at.

    The decision is ``scores + b > 0``. Among the thresholds that flag at most m inputs of the other class
    the lowest one is taken: it flags every input above the (m + 1)-th highest score of the other class.

    Args:
        scores: (N,) scores without the shift (raw g(φ(x))).
        labels: (N,) 1 = sensitive, 0 = other; both classes must be present.
        false_positive_rate: α in [0, 1), the largest share of the other class that may be flagged.
        confidence: None (at most α of the validation inputs of the other class), or c in (0, 1): at most
            α of the distribution they are drawn from, with probability ≥ c over their draw.
    Returns:
        b, a float32 number (the model keeps b in float32), so float32 scores compare with −b exactly as
        here; where rounding b moves the threshold, it moves up (fewer flagged); inputs exactly at the
        threshold are not flagged.
    """
    s = scores.detach().double().cpu()
    y = labels.detach().cpu().bool()
    if not bool(y.any()) or bool(y.all()):
        raise ValueError("fit_false_positive_shift needs validation inputs of both classes")
    if not 0 <= false_positive_rate < 1 or not (confidence is None or 0 < confidence < 1):
        raise ValueError(
            f"false_positive_rate must be in [0, 1) and confidence None or in (0, 1), got "
            f"{false_positive_rate} and {confidence}"
        )
    other = torch.sort(s[~y], descending=True).values
    floor = float(other[allowed_false_positives(len(other), false_positive_rate, confidence)])
    above = s[s > floor]  # the highest score that must stay unflagged is `floor`
    threshold = 0.5 * (floor + float(above.min())) if above.numel() else floor + 1.0
    b = torch.tensor(-threshold, dtype=torch.float32)
    while float(b) > -floor:  # rounded past the floor: step down until −b ≥ floor (then those stay unflagged)
        b = torch.nextafter(b, torch.tensor(-math.inf))
    return float(b)


def operating_shift(
    scores: torch.Tensor, labels: torch.Tensor, false_positive_rate: float | None, confidence: float | None = None
) -> float:
    """b for the chosen operating point: equal class accuracies (:func:`fit_balance`) when
    ``false_positive_rate`` is None, else :func:`fit_false_positive_shift` (with ``confidence``)."""
    if false_positive_rate is None:
        return fit_balance(scores, labels)
    return fit_false_positive_shift(scores, labels, false_positive_rate, confidence)


def detection_rates(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(detection rate, false-positive rate) of the decision ``scores > 0``: the shares of the sensitive
    class and of the other class that are flagged (0 for a class that is absent)."""
    pred = scores.detach().cpu() > 0
    y = labels.detach().cpu().bool()
    return float(pred[y].sum()) / max(1, int(y.sum())), float(pred[~y].sum()) / max(1, int((~y).sum()))
