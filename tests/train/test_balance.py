"""The balance shift b: equal class accuracies, or an operating point of at most α false positives."""

import math
from fractions import Fraction
from math import floor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, norm

from asymcert.data.tasks import Dataset
from asymcert.train import TrainConfig
from asymcert.train.balance import (
    allowed_false_positives,
    detection_rates,
    fit_balance,
    fit_false_positive_shift,
    operating_shift,
)
from asymcert.train.recipes import FeatureConvexRecipe
from tests.conftest import small_feature_convex


def _best_by_brute_force(s: np.ndarray, y: np.ndarray, rate: float) -> int:
    """The most sensitive inputs any threshold flags while flagging at most ⌊rate·N_other⌋ of the others
    (thresholds at every score, and below all of them)."""
    allowed = floor(Fraction(rate) * int((y == 0).sum()))
    best = -1
    for t in [-np.inf, *s]:
        if int(((s > t) & (y == 0)).sum()) <= allowed:
            best = max(best, int(((s > t) & (y == 1)).sum()))
    return best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-16, 16), st.booleans()), min_size=2, max_size=40),
    st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.29, 0.5, 0.9]),
)
def test_the_false_positive_shift_keeps_the_budget_and_flags_the_most(rows, rate):
    """Scores on a grid of eighths (ties and all), both classes present: the float32 decision ``s + b > 0``
    flags at most ⌊rate·N_other⌋ of the other class, as many sensitive inputs as the best threshold
    does, and no input sits on the threshold."""
    s = np.array([v / 8 for v, _ in rows], dtype=np.float32)
    y = np.array([int(c) for _, c in rows])
    if y.min() == y.max():
        y[0] = 1 - y[0]
    b = fit_false_positive_shift(torch.from_numpy(s), torch.from_numpy(y), rate)
    assert np.float32(b) == b  # a float32 number: the model keeps it exactly
    flagged = (torch.from_numpy(s) + torch.tensor(b, dtype=torch.float32) > 0).numpy()
    assert int((flagged & (y == 0)).sum()) <= floor(Fraction(rate) * int((y == 0).sum()))
    assert int((flagged & (y == 1)).sum()) == _best_by_brute_force(s.astype(np.float64), y, rate)
    assert not bool((s.astype(np.float64) + b == 0).any())


def test_float64_scores_between_two_float32_numbers_never_let_an_extra_false_positive_through():
    """A float64 model's scores need not be float32 numbers: b is rounded to float32 and then stepped down
    until −b ≥ the highest other-class score that must stay unflagged, never up."""
    for k in range(1, 200):
        floor = 0.3 + k * 1e-10  # between two float32 numbers, at varying distances from them
        s = torch.tensor([floor + 1e-12, floor, -1.0, 2.0], dtype=torch.float64)  # [0]: sensitive, [1]: other
        y = torch.tensor([1, 0, 0, 1])
        b = fit_false_positive_shift(s, y, 0.0)
        assert not bool(s[1] + b > 0) and bool(s[3] + b > 0)


def test_a_rate_above_one_share_per_input_flags_that_many_and_no_more():
    s = torch.arange(10, dtype=torch.float32)  # others: 0 … 7, sensitive: 8, 9
    y = torch.tensor([0] * 8 + [1] * 2)
    for rate, others in [(0.0, 0), (0.125, 1), (0.249, 1), (0.25, 2), (0.99, 7)]:
        b = fit_false_positive_shift(s, y, rate)
        assert int(((s + b > 0) & (y == 0)).sum()) == others
        assert bool((s + b > 0)[y == 1].all())


@pytest.mark.parametrize("rate", [-0.1, 1.0, float("nan")])
def test_bad_rates_and_one_class_are_refused(rate):
    with pytest.raises(ValueError, match="false_positive_rate"):
        fit_false_positive_shift(torch.zeros(4), torch.tensor([0, 1, 0, 1]), rate)
    with pytest.raises(ValueError, match="both classes"):
        fit_false_positive_shift(torch.zeros(4), torch.ones(4), 0.1)


def test_detection_rates_count_each_class():
    s = torch.tensor([1.0, -1.0, 2.0, 0.0, 3.0])
    y = torch.tensor([1, 1, 0, 0, 0])
    assert detection_rates(s, y) == (0.5, pytest.approx(2 / 3))
    assert operating_shift(s, y, None) == fit_balance(s, y)  # None keeps the balanced rule
    assert operating_shift(s, y, 0.0) == fit_false_positive_shift(s, y, 0.0)


@pytest.mark.parametrize("rate", [None, 0.05])
def test_the_recipe_fits_b_at_the_operating_point_and_selects_by_its_detection_rate(rate):
    torch.manual_seed(0)
    model = small_feature_convex("icnn", seed=1).eval()
    x = torch.rand(400, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = (model(x) > model(x).median()).long()
        y[:40] = 1 - y[:40]  # overlapping classes: the two rules disagree
    out = FeatureConvexRecipe(TrainConfig(false_positive_rate=rate)).evaluate(model, Dataset(x, y), batch_size=64)
    with torch.no_grad():
        flagged = model(x) > 0  # the model's own float32 decision, with the b it now holds
    assert float(model.balance) == out["balance"]
    detection, false_positive = float(flagged[y == 1].float().mean()), float(flagged[y == 0].float().mean())
    assert out["detection_rate"] == pytest.approx(detection)
    assert out["false_positive_rate"] == pytest.approx(false_positive)
    if rate is None:
        assert out["metric"] == pytest.approx(0.5 * (detection + 1 - false_positive))
    else:
        assert false_positive <= rate and out["metric"] == pytest.approx(detection)
        assert detection < 1.0  # the budget binds here, so the test would see a wrong rule


@pytest.mark.parametrize(
    ("n", "rate", "confidence"), [(558, 0.01, 0.95), (558, 0.05, 0.9), (300, 0.05, 0.5), (2000, 0.001, 0.8)]
)
def test_allowed_false_positives_is_the_largest_count_the_binomial_tail_allows(n, rate, confidence):
    m = allowed_false_positives(n, rate, confidence)
    assert binom.cdf(m, n, rate) <= 1 - confidence < binom.cdf(m + 1, n, rate)
    assert m <= floor(rate * n)  # never more than the plain budget on the validation inputs
    assert allowed_false_positives(n, rate) == floor(Fraction(rate) * n)


def test_the_confident_threshold_exceeds_the_budget_on_the_distribution_as_often_as_promised():
    """2000 draws of 300 standard-normal inputs of the other class (and 50 sensitive ones): the share of the
    whole distribution above the fitted threshold exceeds α = 5% in a share of the draws that matches
    P(Binomial(300, 0.05) ≤ m) (≤ 1 − confidence = 10%), within four standard errors."""
    rng = np.random.default_rng(0)
    m = allowed_false_positives(300, 0.05, 0.9)
    promised = binom.cdf(m, 300, 0.05)
    labels = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(50, dtype=torch.long)])
    exceed = 0
    for _ in range(2000):
        s = torch.from_numpy(np.concatenate([rng.standard_normal(300), rng.standard_normal(50) + 2.0]))
        b = fit_false_positive_shift(s, labels, 0.05, confidence=0.9)
        exceed += norm.sf(-b) > 0.05  # the true false-positive rate of the threshold −b
    se = math.sqrt(promised * (1 - promised) / 2000)
    assert promised <= 0.1 and abs(exceed / 2000 - promised) <= 4 * se, (exceed, promised)


def test_a_confidence_the_validation_split_cannot_give_is_refused_with_the_count_it_needs():
    with pytest.raises(ValueError, match="at least 299 are needed"):
        allowed_false_positives(298, 0.01, 0.95)
    assert allowed_false_positives(299, 0.01, 0.95) == 0
    with pytest.raises(ValueError, match="no number of them is enough at a rate of 0"):
        allowed_false_positives(1000, 0.0, 0.95)
