"""Threat models: parsing, resolution, and what a threat-model certificate promises."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import asymcert
from asymcert.certify import threat_model as threat_model_module
from asymcert.certify.attacks import decisions
from asymcert.certify.feature_convex import required_slack
from asymcert.certify.reach_problem import ReachProblem
from asymcert.certify.threat_attack import move_sizes, threat_attack
from asymcert.certify.threat_model import (
    feature_convex_threat,
    harm_bounds,
    harm_coefficients,
    pair_point_harms,
    reach_verified,
    threat_lower_bound,
)
from asymcert.errors import ConfigError
from asymcert.models import build_model
from asymcert.nn.feature_maps import (
    FeatureMap,
    Log1p,
    build_feature_map,
    coordinate_slopes,
    coordinate_weights,
    coordinate_weights_within,
    reach_matters,
)
from asymcert.pipeline import train_run
from asymcert.threat import ThreatModel, load_threat_model
from asymcert.train.recipes import FeatureConvexRecipe
from tests.conftest import balanced_feature_convex, near_boundary

NAMES = ["word_free", "word_money", "capitalLong", "capitalTotal", "george", "hp"]


# ---------------------------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------------------------


def test_issue_example_resolves_by_name_and_wildcard():
    tm = ThreatModel.from_dict(
        {
            "scale": {"capitalTotal": 100, "*": 1.0},
            "immutable": ["capitalLong"],
            "increase_only": ["george", "hp"],
            "decrease_only": [],
            "lower": {"*": 0.0},
            "upper": {"george": 100.0, "hp": 100.0},
            "norms": [1, 2, "inf"],
        }
    )
    r = tm.resolve(NAMES, 6)
    assert r.scale.tolist() == [1, 1, 1, 100, 1, 1]
    assert r.can_increase.tolist() == [True, True, False, True, True, True]
    assert r.can_decrease.tolist() == [True, True, False, True, False, False]
    assert r.lower.tolist() == [0.0] * 6
    assert r.upper.tolist() == [math.inf] * 4 + [100.0, 100.0]
    assert r.norms == (1.0, 2.0, math.inf)
    again = ThreatModel.from_dict(json.loads(json.dumps(tm.to_dict()))).resolve(NAMES, 6)
    assert again.scale.tolist() == r.scale.tolist() and again.can_decrease.tolist() == r.can_decrease.tolist()


def test_indices_work_without_names_and_digits_prefer_a_header():
    r = ThreatModel(immutable=[0, "2"]).resolve(None, 4)
    assert r.can_increase.tolist() == [False, True, False, True]
    named = ThreatModel(immutable=["2"]).resolve(["a", "2", "b"], 3)  # the header "2" is column 1
    assert named.can_increase.tolist() == [True, False, True]


def test_empty_threat_model_allows_everything():
    r = ThreatModel().resolve(None, 3)
    assert r.scale.tolist() == [1.0] * 3 and bool(r.can_increase.all()) and bool(r.can_decrease.all())
    assert r.lower.tolist() == [-math.inf] * 3 and r.norms == ()


def test_the_unit_phrase_says_what_the_threat_model_changes():
    """An empty threat model ({}) certifies exactly as none, but `certify --input` and `audit` called its radii
    "raw input units (threat model: constrained moves)" where `certify` said "raw input units" (audit units31 F4)."""
    model, x = _model(PHIS[2])
    empty = ThreatModel().resolve(None, 6)
    assert empty.units() == "raw input units" == asymcert.certify(model, x, threat_model=empty).units
    assert ThreatModel(immutable=[0]).resolve(None, 6).units() == "raw input units (threat model: constrained moves)"
    assert ThreatModel(scale={"0": 2.0}).resolve(None, 6).units() == "threat-model units (δ_i / scale_i)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"scale": {"hp": 0}}, "must be a number from 1.18e-38 to 3.4e"),
        ({"scale": {"hp": -2.0}}, "must be a number from 1.18e-38 to 3.4e"),
        ({"scale": {"hp": 1e-320}}, "= 1e-320 must be a number from 1.18e-38 to 3.4e"),  # radii overflowed to ∞
        ({"scale": {"hp": 1e39}}, "must be a number from 1.18e-38 to 3.4e"),
        ({"scale": {"hp": "big"}}, 'must be a number from 1.18e-38 to 3.4e+38 (or "std")'),
        ({"scale": [1, 2]}, "scale must be an object"),
        ({"lower": {"*": True}}, "must be a finite number"),
        ({"immutable": "hp"}, "must be a list"),
        ({"immutable": [1.5]}, "not a feature name or index"),
        ({"norms": [0.5]}, "is not an ℓp norm"),
        ({"norms": []}, "non-empty list"),
        ({"radius": 3}, "unknown key(s) ['radius']"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_files_are_refused_in_one_line(data, message):
    with pytest.raises(ConfigError) as info:
        ThreatModel.from_dict(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_threat_model_with_many_problems_is_one_line_of_bounded_length():
    """300,000 unknown names were listed in one error line of 27 MB (CLI fuzz, session 32): the first 20
    problems and how many more, and likewise the first 10 unknown keys."""
    tm = ThreatModel(scale={f"nope{i}": 1.0 for i in range(5000)})
    with pytest.raises(ConfigError) as info:
        tm.resolve(NAMES, 6)
    text = str(info.value)
    assert "unknown feature 'nope0'" in text and "unknown feature 'nope19'" in text and "'nope20'" not in text
    assert text.endswith("; and 4980 more problems") and len(text) < 5000 and "\n" not in text
    with pytest.raises(ConfigError) as info:
        ThreatModel.from_dict({f"key{i}": 1 for i in range(5000)})
    assert "unknown key(s) ['key0', " in str(info.value) and " and 4990 more; known: " in str(info.value)
    assert len(str(info.value)) < 1000


def test_resolution_lists_every_problem():
    tm = ThreatModel(
        immutable=["hp", "nope"],
        increase_only=["hp", 17],
        decrease_only=["george"],
        scale={"missing": 2.0},
        lower={"george": 5.0},
        upper={"george": 1.0},
    )
    tm2 = ThreatModel(increase_only=["george"], decrease_only=["george"])
    with pytest.raises(ConfigError) as info:
        tm.resolve(NAMES, 6)
    text = str(info.value)
    for part in (
        "unknown feature 'nope'",
        "unknown feature 17",
        "unknown feature 'missing'",
        "'hp' is both immutable and increase_only",
        "lower > upper for feature 'george'",
    ):
        assert part in text, text
    with pytest.raises(ConfigError, match="both increase_only and decrease_only"):
        tm2.resolve(NAMES, 6)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_threat_model(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_threat_model(bad)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"immutable": [1], "scale": {"*": 2}}))
    assert load_threat_model(ok).resolve(None, 2).scale.tolist() == [2.0, 2.0]


# ---------------------------------------------------------------------------------------------
# Slope intervals of coordinate-wise feature maps
# ---------------------------------------------------------------------------------------------

PHIS = [
    [{"kind": "identity"}],
    [{"kind": "shift"}],
    [{"kind": "standardize"}],
    [{"kind": "log1p"}],
    [{"kind": "log1p"}, {"kind": "standardize"}],
    [{"kind": "concat-abs"}],
    [{"kind": "shift"}, {"kind": "concat-abs"}, {"kind": "standardize"}],
    [{"kind": "concat-abs"}, {"kind": "concat-abs"}],
    [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 3}],
    [{"kind": "shift"}, {"kind": "concat-abs"}, {"kind": "hinges", "knots": 2}],
    [{"kind": "standardize"}, {"kind": "hinges", "knots": 4}],  # the tabular preset "hinges"
]


PAIR_PHIS = [  # pair-min and group-min: not coordinate-wise (no slope intervals), but with weight bounds
    [{"kind": "pair-min"}],
    [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "pair-min"}, {"kind": "hinges", "knots": 2}],
    [{"kind": "group-min", "order": 3}],
    [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "group-min", "order": 3}, {"kind": "hinges", "knots": 2}],
]


def _absent_words(which):
    """Whether PAIR_PHIS[which] starts with log1p, whose floor (0) is where absent words sit."""
    return PAIR_PHIS[which][0]["kind"] == "log1p"


def _reach_tightens(which):
    """Whether some step of PAIR_PHIS[which] has box bounds (log1p, hinges, pair-min; group-min has none)."""
    return any(step["kind"] in ("log1p", "hinges", "pair-min") for step in PAIR_PHIS[which])


def _fitted_phi(config, d=5, seed=0):
    phi = build_feature_map(config, (d,))
    g = torch.Generator().manual_seed(seed)
    phi.fit(torch.randn(64, d, generator=g, dtype=torch.float64) * 3 + 1)
    return phi.double()


ONE_MOVE = {  # a fitted φ of PHIS, an input x of 5 coordinates, and a move of one coordinate
    "which": st.integers(0, len(PHIS) - 1),
    "coord": st.integers(0, 4),
    "x": st.lists(st.floats(-20, 20), min_size=5, max_size=5),
    "step": st.floats(-30, 30).filter(lambda v: abs(v) > 1e-6),
}


def _moved(x: list[float], coord: int, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, x + step·e_coord) as (1, 5) float64."""
    x0 = torch.tensor([x], dtype=torch.float64)
    x1 = x0.clone()
    x1[0, coord] += step
    return x0, x1


@settings(max_examples=60, deadline=None)
@given(**ONE_MOVE)
def test_slope_intervals_contain_every_difference_quotient(which, coord, x, step):
    phi = _fitted_phi(PHIS[which])
    lo, hi = coordinate_slopes(phi, 5)
    x0, x1 = _moved(x, coord, step)
    quotient = ((phi(x1) - phi(x0)) / step).reshape(lo.shape[0], 5)
    q, tol = quotient[:, coord], 1e-9 * (1 + quotient[:, coord].abs())
    assert bool((q >= lo[:, coord] - tol).all()) and bool((q <= hi[:, coord] + tol).all())
    others = [i for i in range(5) if i != coord]
    assert bool((quotient[:, others].abs() <= 1e-12).all())  # coordinate-wise: other features stay


@settings(max_examples=80, deadline=None)
@given(**ONE_MOVE, seed=st.integers(0, 2**16))
def test_weight_bounds_contain_every_quotient_and_never_exceed_the_summed_slopes(which, coord, x, step, seed):
    """wᵀ(φ(x + t e_i) − φ(x)) / t lies within φ's weight bounds for coordinate i, and the harm they give is
    never above the one from summing slope intervals term by term (the bound they replace)."""
    phi = _fitted_phi(PHIS[which])
    k = coordinate_slopes(phi, 5)[0].shape[0]
    w = torch.randn(1, k * 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lo, hi = coordinate_weights(phi, w, w, 5)
    x0, x1 = _moved(x, coord, step)
    quotient = float((w * (phi(x1) - phi(x0))).sum()) / step
    tol = 1e-9 * (1 + float(w.abs().sum()))
    assert float(lo[0, coord]) - tol <= quotient <= float(hi[0, coord]) + tol
    up, down = harm_bounds(phi, w, w, 5)
    s_lo, s_hi = coordinate_slopes(phi, 5)
    up_sum, down_sum = harm_coefficients(w, w, s_lo, s_hi)
    assert bool((up <= up_sum * (1 + 1e-12) + 1e-300).all()) and bool((down <= down_sum * (1 + 1e-12) + 1e-300).all())


@settings(max_examples=120, deadline=None)
@given(**ONE_MOVE, seed=st.integers(0, 2**16), pad=st.tuples(st.floats(0, 5), st.floats(0, 5)))
def test_reach_weight_bounds_contain_every_quotient_inside_the_box_and_lie_in_the_global_ones(
    which, coord, x, step, seed, pad
):
    """For a move of coordinate i from x to x + t inside a box [lo, hi] ∋ both ends (padded by ``pad``), the
    quotient wᵀΔφ / t lies within :func:`coordinate_weights_within` on that box, which lies within the
    global :func:`coordinate_weights` (maps without reach bounds, e.g. concat-abs, give the global ones)."""
    phi = _fitted_phi(PHIS[which])
    k = coordinate_slopes(phi, 5)[0].shape[0]
    w = torch.randn(1, k * 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x0, x1 = _moved(x, coord, step)
    box_lo, box_hi = torch.minimum(x0, x1) - pad[0], torch.maximum(x0, x1) + pad[1]
    lo, hi = coordinate_weights_within(phi, w, w, box_lo, box_hi)
    g_lo, g_hi = coordinate_weights(phi, w, w, 5)
    quotient = float((w * (phi(x1) - phi(x0))).sum()) / step
    tol = 1e-9 * (1 + float(w.abs().sum()))
    assert float(lo[0, coord]) - tol <= quotient <= float(hi[0, coord]) + tol
    assert bool((lo >= g_lo).all()) and bool((hi <= g_hi).all())


@settings(max_examples=120, deadline=None)
@given(**{**ONE_MOVE, "which": st.integers(0, len(PAIR_PHIS) - 1)}, seed=st.integers(0, 2**16), pad=st.floats(0, 5))
def test_pair_min_weight_bounds_contain_every_quotient_globally_and_inside_a_box(which, coord, x, step, seed, pad):
    """pair-min moves the partners of x_i too: wᵀ(φ(x + t e_i) − φ(x)) / t still lies within the global weight
    bounds of coordinate i, and within those on any box holding the move (log1p's reach bounds before it)."""
    phi = _fitted_phi(PAIR_PHIS[which])
    w = torch.randn(1, phi.out_shape((5,))[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x0, x1 = _moved(x, coord, step)
    quotient = float((w * (phi(x1) - phi(x0))).sum()) / step
    tol = 1e-9 * (1 + float(w.abs().sum()))
    lo, hi = coordinate_weights(phi, w, w, 5)
    assert float(lo[0, coord]) - tol <= quotient <= float(hi[0, coord]) + tol
    box_lo, box_hi = torch.minimum(x0, x1) - pad, torch.maximum(x0, x1) + pad
    r_lo, r_hi = coordinate_weights_within(phi, w, w, box_lo, box_hi)
    assert float(r_lo[0, coord]) - tol <= quotient <= float(r_hi[0, coord]) + tol
    assert bool((r_lo >= lo).all()) and bool((r_hi <= hi).all())
    assert coordinate_slopes(phi, 5) is None  # not coordinate-wise: no slope intervals to sum


PAIR_INPUTS = {  # a pair-min φ of PAIR_PHIS, a seed, the share of absent words, whether two coordinates tie
    "which": st.integers(0, len(PAIR_PHIS) - 1),
    "seed": st.integers(0, 2**16),
    "zeros": st.floats(0.0, 0.8),
    "ties": st.booleans(),
}


@settings(max_examples=150, deadline=None)
@given(**PAIR_INPUTS, moved=st.floats(0.2, 1.0), size=st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
def test_pair_min_point_harms_bound_every_mixed_move(which, seed, zeros, ties, moved, size):
    """For any move of several coordinates at once, up and down, and any ∇g inside its bounds, the harm
    −∇g·(φ(x + δ) − φ(x)) is at most Σ_up h⁺_i δ_i + Σ_down h⁻_i |δ_i| + C (pair_point_harms): inputs with
    many coordinates at pair-min's floor (absent words) and exact ties, where the exclusions bite."""
    phi = _fitted_phi(PAIR_PHIS[which], d=6)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64).abs() * 3
    if _absent_words(which):  # log1p floors at 0: absent words
        x = torch.where(torch.rand(16, 6, generator=gen, dtype=torch.float64) < zeros, torch.zeros_like(x), x)
    else:  # pair-min alone: its floor is the fitted minimum
        floor = phi.maps[0].floor if hasattr(phi, "maps") else phi.floor
        x = torch.where(torch.rand(16, 6, generator=gen, dtype=torch.float64) < zeros, floor.expand_as(x), x)
    if ties:
        x[:, 3] = x[:, 1]
    q = phi.out_shape((6,))[0]
    w_lo = torch.randn(16, q, generator=gen, dtype=torch.float64)
    w_hi = w_lo + torch.rand(16, q, generator=gen, dtype=torch.float64) * 0.5
    found = pair_point_harms(phi, w_lo, w_hi, x)
    assert found is not None
    up, down, const = found
    global_up, global_down = harm_bounds(phi, w_lo, w_hi, 6)
    assert bool((up <= global_up + 1e-12).all()) and bool((down <= global_down + 1e-12).all())
    for _ in range(8):
        delta = torch.randn(16, 6, generator=gen, dtype=torch.float64) * size
        delta = delta * (torch.rand(16, 6, generator=gen, dtype=torch.float64) < moved)
        w = w_lo + (w_hi - w_lo) * torch.rand(16, q, generator=gen, dtype=torch.float64)
        harm = -(w * (phi(x + delta) - phi(x))).sum(dim=1)
        bound = (up * delta.clamp_min(0) + down * (-delta).clamp_min(0)).sum(dim=1) + const
        assert bool((harm <= bound + 1e-9 * (1 + bound.abs())).all()), (harm - bound).max()


@settings(max_examples=100, deadline=None)
@given(**PAIR_INPUTS, p=st.sampled_from([1.0, 2.0, math.inf]), size=st.sampled_from([1e-3, 0.05, 0.5, 5.0]))
def test_pair_min_reach_costs_bound_every_move_inside_the_ball(which, seed, zeros, ties, p, size):
    """Reach through pair-min: for every allowed move u (threat-model units, ‖u‖_p ≤ r, several coordinates
    at once, inside the domain) and any ∇g within its bounds, the harm −∇g·(φ(x + scale·u) − φ(x)) is at
    most Σ_i a_i(r)·|u_i| with a(r) = reach_costs; a(r) never exceeds the global costs, and is below them
    for some coordinates at small r (pairs whose order the ball cannot change are attributed exactly).
    Likewise with pair-min's point bound on top (pair_reach_point_costs: Σ_i a_i(r)·|u_i| + C)."""
    phi = _fitted_phi(PAIR_PHIS[which], d=6)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 6, generator=gen, dtype=torch.float64) * 3
    x = torch.where(torch.rand(16, 6, generator=gen, dtype=torch.float64) < zeros, torch.zeros_like(x), x)
    if ties:
        x[:, 5] = x[:, 0]
    tm = TM.resolve(None, 6)
    q = phi.out_shape((6,))[0]
    w_lo = torch.randn(16, q, generator=gen, dtype=torch.float64)
    w_hi = w_lo + torch.rand(16, q, generator=gen, dtype=torch.float64) * 0.2
    r = torch.full((16,), size, dtype=torch.float64)
    problem = _problem(phi, (w_lo, w_hi), x, tm)
    costs = threat_model_module.reach_costs(problem, r)
    global_costs = threat_model_module.reach_costs(problem, torch.full_like(r, math.inf))
    assert bool((costs <= global_costs).all())
    if size <= 0.05 and _reach_tightens(which):
        assert bool((costs < global_costs).any())
    # with pair-min's point bound too: pairs that cannot move at x left out, a constant C for their rounding
    point_costs, const = threat_model_module.pair_reach_point_costs(problem, r)
    assert bool((point_costs <= costs + 1e-9 * (1 + costs)).all()) and bool((const >= 0).all())
    if _absent_words(which) and zeros > 0.5:  # absent words tie at log1p's floor: the point bound counts each set once
        assert bool((point_costs < costs).any())
    up, down = tm.directions(x)
    for trial in range(24):
        u = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        if trial % 3:  # corners: coordinates moved as far as the ball lets them, partners the other way
            u = u.sign()
        if trial % 3 == 2:  # one coordinate up, one down, nothing else to hide a wrong share behind
            pick = torch.rand(16, 6, generator=gen).argsort(dim=1)[:, :2]
            u = torch.zeros_like(u).scatter(1, pick, torch.tensor([[1.0, -1.0]], dtype=torch.float64).expand(16, 2))
        u = torch.where(up, u, u.clamp(max=0.0)).where(down | (u > 0), torch.zeros_like(u))
        if trial % 3 == 0:
            u = u * (torch.rand(16, 6, generator=gen, dtype=torch.float64) < 0.6)
        norm = torch.linalg.vector_norm(u, ord=p, dim=1, keepdim=True).clamp_min(1e-300)
        shrink = torch.rand(16, 1, generator=gen).double() if trial % 3 == 0 else torch.ones(16, 1, dtype=torch.float64)
        u = u / norm * r[:, None] * shrink
        moved = torch.minimum(torch.maximum(x + u * tm.scale, tm.lower), tm.upper)
        u = (moved - x) / tm.scale  # the domain only shortens moves
        w = w_lo + (w_hi - w_lo) * torch.rand(16, q, generator=gen, dtype=torch.float64)
        harm = -(w * (phi(moved) - phi(x))).sum(dim=1)
        bound = (costs * u.abs()).sum(dim=1)
        assert bool((harm <= bound + 1e-9 * (1 + bound.abs())).all()), (harm - bound).max()
        bound = (point_costs * u.abs()).sum(dim=1) + const
        assert bool((harm <= bound + 1e-9 * (1 + bound.abs())).all()), (harm - bound).max()


def _problem(phi, grads, x, tm):
    """A reach problem for bounds that read φ, the gradient bounds, x and the threat model only."""
    return ReachProblem(phi, grads, x, tm, torch.zeros(x.shape[0], dtype=torch.float64), 0.0)


def test_pair_min_reach_counts_partners_that_moved_the_other_way():
    """x_0 may only rise and x_1 only fall. Seen from a box where x_1 stays at 3, min(h_0, h_1) follows h_0
    all the way, and a gain on the pair offsets the harm of x_0's own feature; but x_1 can fall first
    (3 → 1.1 while x_0 rises 1 → 2.9), so the pair barely moves and the harm (2.65) is real: the reach
    costs must count the partners' whole reach (a regression: they once charged 0 for both coordinates)."""
    phi = build_feature_map([{"kind": "pair-min"}], (2,)).double()
    phi.fit(torch.zeros(1, 2, dtype=torch.float64))
    x = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    tm = ThreatModel(increase_only=[0], decrease_only=[1]).resolve(None, 2)
    w = torch.tensor([[-1.5, 0.0, 1.0, 1.0]], dtype=torch.float64)  # features z_0, z_1, min(h_0, h_1) twice
    costs = threat_model_module.reach_costs(_problem(phi, (w, w), x, tm), torch.tensor([1.9], dtype=torch.float64))
    moved = torch.tensor([[2.9, 1.1]], dtype=torch.float64)
    harm = float(-(w * (phi(moved) - phi(x))).sum())
    assert harm == pytest.approx(2.65)
    assert float((costs * (moved - x).abs()).sum()) >= harm


def test_pair_min_after_copies_declares_no_weight_bounds_and_certifies_by_the_fallback():
    """On the copies hinges make, pair-min would pair copies of one coordinate: its bounds are not derived
    there, so the threat-model radius is the generic fallback (the raw ℓp radius over the largest scale)."""
    config = [{"kind": "standardize"}, {"kind": "hinges", "knots": 1}, {"kind": "pair-min"}]
    phi = _fitted_phi(config)
    w = torch.ones(1, phi.out_shape((5,))[0], dtype=torch.float64)
    assert harm_bounds(phi, w, w, 5) is None
    model, x = _model(config, seed=2)
    tm = TM.resolve(None, 6)
    cert = asymcert.certify(model, x, norms=(2,), threat_model=tm)
    plain = asymcert.certify(model, x, norms=(2,))
    top = tm.max_movable_scale(x)
    assert torch.allclose(cert.radii[2.0], plain.radii[2.0] / top, rtol=1e-12)
    assert bool((cert.radii[2.0] <= plain.radii[2.0] / top).all())


def test_hinge_weight_bounds_are_the_extreme_prefix_sums_and_are_attained():
    """On one coordinate, moves inside one segment between knots have quotient w_0 + w_1 + … + w_m: the
    bounds are the smallest and largest of those; summing slope intervals adds every w_j of one sign."""
    phi = build_feature_map([{"kind": "hinges", "knots": 3}], (1,)).double()
    phi.fit(torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]], dtype=torch.float64))
    knots = phi.maps[0].knot_values[:, 0].tolist()
    w = torch.tensor([[0.5, -2.0, 3.0, -4.0]], dtype=torch.float64)  # prefix sums 0.5, -1.5, 1.5, -2.5
    lo, hi = coordinate_weights(phi, w, w, 1)
    assert float(lo) == pytest.approx(-2.5, rel=1e-14) and float(lo) <= -2.5
    assert float(hi) == pytest.approx(1.5, rel=1e-14) and float(hi) >= 1.5
    edges = [knots[0] - 10.0, *knots, knots[-1] + 10.0]
    seen = []
    for a, b in itertools.pairwise(edges):  # a move inside each segment
        x0 = torch.tensor([[a + 0.25 * (b - a)]], dtype=torch.float64)
        x1 = torch.tensor([[a + 0.75 * (b - a)]], dtype=torch.float64)
        seen.append(float((w * (phi(x1) - phi(x0))).sum() / (x1 - x0).squeeze()))
    assert seen == pytest.approx([0.5, -1.5, 1.5, -2.5], rel=1e-9)
    up_sum, down_sum = harm_coefficients(w, w, *coordinate_slopes(phi, 1))
    assert float(up_sum) == pytest.approx(5.5) and float(down_sum) == pytest.approx(3.5)  # 2.5 and 1.5 above


def test_a_subclass_that_changes_forward_declares_no_slopes():
    class Shifted(Log1p):
        def forward(self, x):
            return torch.log1p(torch.clamp(x, min=0.0)) - x  # no longer monotone

        def lipschitz(self, p):
            return 2.0

    class Opaque(FeatureMap):
        kind = "opaque"

        def forward(self, x):
            return x.flip(1)

        def lipschitz(self, p):
            return 1.0

    assert coordinate_slopes(Shifted(), 3) is None and coordinate_slopes(Opaque(), 3) is None
    assert coordinate_slopes(Log1p(), 3) is not None


# ---------------------------------------------------------------------------------------------
# Certificates: sound under constrained attacks, never below the plain ℓp certificate
# ---------------------------------------------------------------------------------------------


def _model(phi, d=6, seed=0, widths=(16, 16)):
    x = torch.rand(256, d, generator=torch.Generator().manual_seed(seed)) * 4
    return balanced_feature_convex(phi, x, widths, seed), x  # about half the inputs flagged


TM = ThreatModel(
    scale={"0": 2.0, "3": 0.25, "*": 0.5},
    immutable=[1],
    increase_only=[2, 5],
    decrease_only=[3],
    lower={"*": 0.0},
    upper={"4": 3.0},
)


@pytest.mark.parametrize(
    "phi",
    [PHIS[0], PHIS[2], PHIS[4], PHIS[6], PHIS[8], PHIS[10], PAIR_PHIS[1], PAIR_PHIS[3]],
    ids=[
        "id",
        "std",
        "log1p-std",
        "abs",
        "log1p-std-hinges",
        "std-hinges",
        "log1p-std-pairs-hinges",
        "log1p-std-sets-hinges",
    ],
)
@pytest.mark.parametrize("near", [False, True], ids=["typical", "near-boundary"])
@pytest.mark.parametrize("reach", [False, True], ids=["closed-form", "reach"])
def test_constrained_attacks_do_not_flip_inside_the_radius(phi, near, reach):
    model, x = _model(phi)
    if near:
        x = near_boundary(model, x)
    tm = TM.resolve(None, 6)
    cert = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=tm, reach=reach)
    flagged = cert.predicted.bool()
    assert int(flagged.sum()) > 20 and cert.units == "threat-model units (δ_i / scale_i)"
    gen = torch.Generator().manual_seed(1)
    for p, radius in cert.radii.items():
        r, xf = radius[flagged], x[flagged]
        # a radius of 0 promises nothing: such an input (score within its rounding bound of 0) may read
        # s = 0 in another batch, where the BLAS sums in another order
        finite = torch.isfinite(r) & (r > 0)
        assert int(finite.sum()) >= 20, f"ℓ{p}: too few positive radii to test"
        inside = threat_attack(model, xf[finite], r[finite] * 0.999, p, tm, steps=60, restarts=2, generator=gen)
        assert bool((move_sizes(xf[finite], inside, tm, p) <= r[finite] * 0.999).all())
        assert int((model(inside) <= 0).sum()) == 0, f"ℓ{p}: a flip inside the threat-model radius"
        # the attack has teeth, near the boundary too: far outside the radius it flips most inputs (pair-min's
        # and group-min's bounds count every partner of a coordinate as if it moved with it: 10–20× the
        # attack's radius here)
        far = 25 if "-min" in str(phi) else 4  # pair-min, group-min
        outside = threat_attack(model, xf[finite], r[finite] * far, p, tm, steps=60, restarts=2, generator=gen)
        assert int((model(outside) <= 0).sum()) > 0.3 * int(finite.sum())


@pytest.mark.parametrize("phi", PHIS + PAIR_PHIS, ids=[str(i) for i in range(len(PHIS + PAIR_PHIS))])
def test_never_below_the_plain_certificate_of_the_same_ball(phi):
    model, x = _model(phi, seed=3)
    norms = (1.0, 2.0, math.inf)
    plain = asymcert.certify(model, x, norms=norms)
    empty = ThreatModel().resolve(None, 6)
    closed_form = feature_convex_threat(model, x, norms, empty)  # the closed form itself, no shortcut
    scaled = asymcert.certify(model, x, norms=norms, threat_model=ThreatModel(scale={"*": 4.0}))
    for p in norms:
        assert bool((closed_form.radii[p] >= plain.radii[p] * (1 - 1e-12)).all())
        # unit scale 4: the same ball has a quarter of the radius
        assert torch.allclose(scaled.radii[p], closed_form.radii[p] / 4, rtol=1e-12)


def test_the_constrained_attack_and_move_sizes_take_an_empty_batch():
    model, x = _model(PHIS[0])
    tm = TM.resolve(None, 6)
    none = x[:0]
    adv = threat_attack(model, none, torch.zeros(0), 2.0, tm, steps=5, restarts=1)
    assert adv.shape == (0, 6) and move_sizes(none, adv, tm, 2.0).shape == (0,)


@pytest.mark.parametrize("phi", [PHIS[2], PHIS[6]], ids=["std", "abs"])
def test_an_empty_threat_model_gives_todays_radii_exactly(phi):
    model, x = _model(phi, seed=4)
    plain = asymcert.certify(model, x, norms=(1, 2, "inf"))
    for empty in (ThreatModel(), ThreatModel(scale={"*": 1.0}, immutable=[], norms=[2])):
        cert = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=empty)
        assert cert.units == "raw input units"
        assert all(torch.equal(cert.radii[p], plain.radii[p]) for p in plain.radii)
    assert not ThreatModel(lower={"0": -5.0}).resolve(None, 6).is_empty()


def test_independent_float64_radius_for_an_affine_map():
    """For φ affine (standardize) the harm of moving x_i is the directional derivative of s itself:
    r = s / ‖(scale_i · max over allowed directions of −∂s/∂(±x_i))_i‖_dual, computed here by autograd
    through the float64 model in input space."""
    model, x = _model(PHIS[2], seed=5)
    tm = TM.resolve(None, 6)
    cert = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=tm, guard=False, precision="float64")
    m64 = model.double()
    x64 = x.double().requires_grad_(True)
    s = m64(x64)
    (grad,) = torch.autograd.grad(s.sum(), x64)
    up, down = tm.directions(x)
    harm = torch.maximum(torch.where(up, (-grad).clamp_min(0), 0.0), torch.where(down, grad.clamp_min(0), 0.0))
    a = harm * tm.scale
    flagged = cert.predicted.bool()
    for p, q in ((1.0, math.inf), (2.0, 2.0), (math.inf, 1.0)):
        expected = (s.detach() / torch.linalg.vector_norm(a, ord=q, dim=1))[flagged]
        got = cert.radii[p][flagged]
        assert torch.allclose(got, expected, rtol=1e-7), p
        assert bool((got <= expected).all())  # rounded down, never up


def test_independent_float64_radius_for_hinges():
    """For φ = hinges ∘ standardize, w = ∇g(φ(x)) fixed, wᵀφ restricted to coordinate i is piecewise linear
    with breaks at the knots (raw units μ_i + σ_i·t_k): its slope on each segment, measured here by a
    difference inside the segment, gives the harm (max over segments of −slope moving up, of slope moving
    down), so r = s / ‖scale ⊙ harm over the allowed directions‖_dual without the backward weight bounds."""
    model, x = _model([{"kind": "standardize"}, {"kind": "hinges", "knots": 3}], seed=5)
    tm = TM.resolve(None, 6)
    cert = asymcert.certify(
        model, x, norms=(1, 2, "inf"), threat_model=tm, guard=False, precision="float64", reach=False
    )
    m64 = model.double()
    phi = m64.feature_map
    features = phi(x.double()).detach().requires_grad_(True)
    s = m64.score_from_features(features)
    (w,) = torch.autograd.grad(s.sum(), features)
    std, hinges = phi.maps
    knots = (std.mean + std.scale * hinges.knot_values).detach()  # (3, 6) raw units, increasing
    edges = [knots[0] - 10.0, *knots, knots[-1] + 10.0]
    slopes = []
    for low, high in itertools.pairwise(edges):  # every coordinate's points a_i < b_i inside one segment
        a, b = low + 0.25 * (high - low), low + 0.75 * (high - low)
        moved = (w * (phi(b[None]) - phi(a[None]))).reshape(len(x), 4, 6).sum(1)
        slopes.append(moved / (b - a))
    slope = torch.stack(slopes)  # (segments, N, 6)
    up, down = tm.directions(x)
    harm = torch.maximum(
        torch.where(up, (-slope.amin(0)).clamp_min(0), 0.0), torch.where(down, slope.amax(0).clamp_min(0), 0.0)
    )
    a = harm * tm.scale
    flagged = cert.predicted.bool()
    assert int(flagged.sum()) > 50
    for p, q in ((1.0, math.inf), (2.0, 2.0), (math.inf, 1.0)):
        expected = (s.detach() / torch.linalg.vector_norm(a, ord=q, dim=1))[flagged]
        got = cert.radii[p][flagged]
        assert torch.allclose(got, expected, rtol=1e-7), p
        assert bool((got <= expected).all())  # rounded down, never up


def _tangent_fall(model, x):
    """(s(x) (N,), fall): fall(moved) (N,) = −wᵀ(φ(moved) − φ(x)) with w = ∇g(φ(x)) fixed, in float64 with
    autograd (independent of the library's bounds)."""
    m64 = model.double()
    x64 = x.double()
    features = m64.features(x64).detach().requires_grad_(True)
    s = m64.score_from_features(features)
    (w,) = torch.autograd.grad(s.sum(), features)
    base = m64.features(x64).detach()
    return s.detach(), lambda moved: -(w * (m64.features(moved) - base)).flatten(1).sum(1)


def _reach_end(x64, tm, i, sign, r):
    """Where coordinate i of x64 (N, d) gets moving by r·scale_i one way (cut at the domain's walls when inside)."""
    end = x64[:, i] + sign * r * tm.scale[i]
    inside = (x64[:, i] >= tm.lower[i]) & (x64[:, i] <= tm.upper[i])  # (an input outside the domain moves freely)
    return torch.where(inside, end.clamp(float(tm.lower[i]), float(tm.upper[i])), end)


def _needed_harms(model, x, tm, r, samples=400):
    """(N, d) float64, independent of the library's bounds: per coordinate, the largest rate at which wᵀφ
    falls over moves from x_i to points of its reach at radius r (N,) (the allowed directions, the
    domain), with w = ∇g(φ(x)) fixed; from dense samples of the difference quotient (so a lower
    estimate of what a sound certificate must charge)."""
    s, fall = _tangent_fall(model, x)
    x64 = x.double()
    up, down = tm.directions(x64)
    harm = torch.zeros(x64.shape, dtype=torch.float64)
    steps = torch.linspace(1.0 / samples, 1.0, samples, dtype=torch.float64)
    for i in range(x64.shape[1]):
        for sign, allowed in ((1.0, up[:, i]), (-1.0, down[:, i])):
            end = _reach_end(x64, tm, i, sign, r)
            for t in steps:
                moved = x64.clone()
                moved[:, i] = x64[:, i] + t * (end - x64[:, i])
                delta = moved[:, i] - x64[:, i]
                # (moves below 1e-6 are skipped: their float64 difference quotients are mostly rounding)
                rate = torch.where(delta.abs() >= 1e-6, fall(moved) / delta.abs(), torch.zeros_like(delta))
                harm[:, i] = torch.where(allowed, torch.maximum(harm[:, i], rate.clamp_min(0)), harm[:, i])
    return s, harm


def _harm_curves(model, x, tm, r, levels=40):
    """(s(x) (N,), curves (N, d, levels + 1) float64), independent of the library's bounds: per coordinate, the
    largest fall of wᵀφ (w = ∇g(φ(x)) fixed) over moves to the sampled points k'·r/levels, k' ≤ k (threat-model
    units), of its allowed directions and domain."""
    s, fall = _tangent_fall(model, x)
    x64 = x.double()
    up, down = tm.directions(x64)
    curves = torch.zeros(*x64.shape, levels + 1, dtype=torch.float64)
    for i in range(x64.shape[1]):
        for sign, allowed in ((1.0, up[:, i]), (-1.0, down[:, i])):
            for k in range(1, levels + 1):
                moved = x64.clone()
                moved[:, i] = _reach_end(x64, tm, i, sign, r * k / levels)
                curves[:, i, k] = torch.where(allowed, torch.maximum(curves[:, i, k], fall(moved)), curves[:, i, k])
    return s, torch.cummax(curves.clamp_min(0.0), dim=2).values


def _ball_max(curves, q):
    """(N,) the largest Σ_i curves[i, k_i] over Σ_i k_i^q ≤ levels^q (exact on the sampled grid, by dynamic
    programming over the coordinates): the most an ℓq move (q = 1, 2) of size r is seen to lower the tangent
    plane."""
    n, d, size = curves.shape
    budget = (size - 1) ** q
    best = torch.zeros(n, budget + 1, dtype=torch.float64)
    for i in range(d):
        new = best.clone()
        for k in range(1, size):
            shifted = torch.full_like(best, -math.inf)
            shifted[:, k**q :] = best[:, : budget + 1 - k**q] + curves[:, i, k : k + 1]
            new = torch.maximum(new, shifted)
        best = new
    return best.amax(dim=1)


@pytest.mark.parametrize("phi", [PHIS[4], PHIS[8]], ids=["log1p-std", "log1p-std-hinges"])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_reach_radii_hold_for_the_slopes_each_coordinate_can_actually_reach(phi, p):
    """The reach-aware radius r: s ≥ r·‖scale ⊙ harm(r)‖_dual with the harms measured independently (dense
    difference quotients over each coordinate's reach at r); never below the closed form, above it for
    many inputs, and close to the largest r the measured harms allow."""
    model, x = _model(phi, seed=11)
    tm = TM.resolve(None, 6)
    options = {"norms": (p,), "threat_model": tm, "guard": False, "precision": "float64"}
    closed = asymcert.certify(model, x, **options).radii[p]
    cert = asymcert.certify(model, x, reach=True, **options)
    r = cert.radii[p]
    flagged = cert.predicted.bool() & torch.isfinite(r) & (r > 0)
    assert int(flagged.sum()) > 50
    assert bool((r >= closed).all()) and int((r > closed * 1.01).sum()) > 10
    if p == math.inf:  # the path bound: the largest fall of each coordinate over its reach, summed
        s, curves = _harm_curves(model, x[flagged], tm, r[flagged], levels=400)
        charged = curves[..., -1].sum(dim=1)
        s2, curves2 = _harm_curves(model, x[flagged], tm, r[flagged] * 1.3, levels=400)
        beyond = curves2[..., -1].sum(dim=1)
    else:  # the path bound: the most any split of the ℓp budget between the coordinates is seen to cost
        s, curves = _harm_curves(model, x[flagged], tm, r[flagged])
        charged = _ball_max(curves, int(p))
        s2, curves2 = _harm_curves(model, x[flagged], tm, r[flagged] * 1.3)
        beyond = _ball_max(curves2, int(p))
    assert bool((charged <= s * (1 + 1e-9)).all())  # the certificate covers every sampled move
    # and the search stops near the best radius: 30% further out, the measured harms exceed the score for
    # many inputs
    assert float((beyond > s2).double().mean()) > 0.3


@pytest.mark.parametrize("phi", [PHIS[4], PHIS[8]], ids=["log1p-std", "log1p-std-hinges"])
@pytest.mark.parametrize("size", [0.05, 0.3, 1.5])
def test_one_box_reach_costs_charge_every_rate_a_coordinate_can_reach(phi, size):
    """The one-box costs a(r) (reach_costs, where ℓ1's reach search starts): at least scale_i times the largest
    rate at which wᵀφ falls over moves of coordinate i inside its reach at r (dense difference quotients,
    independent of the library's bounds), and below the global costs (r = ∞) for many coordinates."""
    model, x = _model(phi, seed=11)
    tm = TM.resolve(None, 6)
    ref = asymcert.certify(model, x, norms=(1,), threat_model=tm, guard=False, precision="float64")
    x = x[ref.predicted.bool()][:40].double()
    problem = threat_model_module.reach_problem(model.double(), x, tm, "float64", None, False, True)[0]
    r = torch.full((x.shape[0],), size, dtype=torch.float64)
    costs = threat_model_module.reach_costs(problem, r)
    _, harm = _needed_harms(model, x, tm, r)
    assert bool((costs >= harm * tm.scale * (1 - 1e-9) - 1e-12).all())
    everywhere = threat_model_module.reach_costs(problem, torch.full_like(r, math.inf))
    assert bool((costs <= everywhere).all()) and int((costs < everywhere * 0.99).sum()) > 20


def test_inputs_that_cannot_move_are_certified_at_infinity():
    model, x = _model(PHIS[2], seed=1)
    frozen = ThreatModel(immutable=list(range(6)))
    cert = asymcert.certify(model, x, norms=(2,), threat_model=frozen)
    flagged, r = cert.predicted.bool(), cert.radii[2.0]
    with torch.no_grad():
        clear = model(x) > 1e-4  # scores above any rounding allowance (the rest may get 0: no promise)
    assert int((flagged & clear).sum()) > 20
    assert bool(torch.isinf(r[flagged & clear]).all()) and bool((r[~flagged] == 0).all())
    assert bool((torch.isinf(r[flagged]) | (r[flagged] == 0)).all())


def test_fallback_for_a_map_that_is_not_coordinate_wise_is_sound():
    class Reverse(FeatureMap):
        kind = "reverse"

        def forward(self, x):
            return x.flip(1)

        def lipschitz(self, p):
            return 1.0

    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [6],
            "feature_map": [{"kind": "identity"}],
            "convex": {"kind": "icnn", "widths": [16]},
        }
    ).eval()
    model.feature_map = Reverse()
    x = torch.rand(200, 6) * 4
    tm = TM.resolve(None, 6)
    plain = asymcert.certify(model, x, norms=(2,))
    cert = asymcert.certify(model, x, norms=(2,), threat_model=tm)
    flagged = cert.predicted.bool()
    assert torch.allclose(cert.radii[2.0][flagged], plain.radii[2.0][flagged] / 2.0, rtol=1e-12)  # max scale 2
    r = cert.radii[2.0][flagged]
    adv = threat_attack(model, x[flagged], r * 0.999, 2, tm, steps=60, generator=torch.Generator().manual_seed(0))
    assert int((model(adv) <= 0).sum()) == 0


@pytest.mark.parametrize("kind", ["linf-dist", "orthogonal"])
def test_other_families_get_the_generic_fallback(kind):
    configs = {
        "linf-dist": {"kind": "linf-dist", "input_shape": [6], "widths": [32, 32], "num_classes": 2},
        "orthogonal": {"kind": "orthogonal", "input_shape": [6], "arch": "mlp", "widths": [32, 32]},
    }
    torch.manual_seed(0)
    model = build_model(configs[kind]).eval()
    x = torch.rand(200, 6)
    tm = TM.resolve(None, 6)
    norms = (math.inf,) if kind == "linf-dist" else (2,)
    plain = asymcert.certify(model, x, norms=norms)
    cert = asymcert.certify(model, x, norms=norms, threat_model=tm)
    p = norms[0]
    positive = plain.radii[p] > 0
    assert int(positive.sum()) > 0 and cert.units.startswith("threat-model")
    assert torch.allclose(cert.radii[p][positive], plain.radii[p][positive] / 2.0, rtol=1e-12)
    r = cert.radii[p][positive]
    adv = threat_attack(model, x[positive], r * 0.999, p, tm, steps=60, generator=torch.Generator().manual_seed(0))
    assert bool((decisions(model, adv) == decisions(model, x[positive])).all())


def test_many_names_without_column_names_are_one_short_problem_with_the_index_range():
    """68 named entries against inputs without column names were 68 repeated sentences (12.5 KB) on one line."""
    names = [f"api_{i}" for i in range(30)]
    tm = ThreatModel(increase_only=names, upper={n: 1.0 for n in names}, scale={"api_0": 2.0}, immutable=["x"])
    with pytest.raises(ConfigError) as info:
        tm.resolve(None, 33)
    message = str(info.value)
    assert len(message) < 400 and message.count("no column names") == 1, message
    assert "'api_0', 'api_1', 'api_2', 'api_3' and 27 more" in message and "0 to 32" in message


def test_a_threat_model_with_feature_names_needs_them_resolved():
    model, x = _model(PHIS[0])
    with pytest.raises(
        ConfigError, match=r"features named \('hp'\), but these inputs have no column names .*tm\.resolve"
    ):
        asymcert.certify(model, x, threat_model=ThreatModel(immutable=["hp"]))
    with pytest.raises(ConfigError, match="for 3 features, the inputs have 6"):
        asymcert.certify(model, x, threat_model=ThreatModel().resolve(None, 3))


# ---------------------------------------------------------------------------------------------
# Training under a threat model: the margin loss uses the same bound the certificate inverts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phi", [PHIS[2], PHIS[4], PHIS[6], PHIS[8]], ids=["std", "log1p-std", "abs", "hinges"])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_margin_bound_is_positive_exactly_inside_the_certified_radius(phi, p):
    model, x = _model(phi, seed=7)
    model = model.double()
    x = x.double()
    tm = TM.resolve(None, 6)
    cert = asymcert.certify(model, x, norms=(p,), threat_model=tm, guard=False, precision="float64")
    flagged = cert.predicted.bool() & torch.isfinite(cert.radii[p])
    x = x[flagged]
    features = model.features(x).detach().requires_grad_(True)
    score = model.score_from_features(features)
    (grad,) = torch.autograd.grad(score.sum(), features)
    r = cert.radii[p][flagged]
    lip = model.feature_lipschitz(p)
    inside = torch.stack(
        [
            threat_lower_bound(s[None], g[None], xi[None], model.feature_map, lip, tm, float(ri) * 0.999, p)
            for s, g, xi, ri in zip(score.detach(), grad, x, r)
        ]
    )
    outside = torch.stack(
        [
            threat_lower_bound(s[None], g[None], xi[None], model.feature_map, lip, tm, float(ri) * 1.001, p)
            for s, g, xi, ri in zip(score.detach(), grad, x, r)
        ]
    )
    assert bool((inside > 0).all()) and bool((outside < 0).all())


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_the_margin_bound_through_a_phi_that_is_not_coordinate_wise_holds_under_attack(p):
    """φ = shift, concat-abs, pair-min declares no per-coordinate weights (pair-min of copies), so the training
    bound takes its generic form s − r·S·Lip_p(φ)·‖∇g‖_{p*}, S the largest scale of a feature the input may move
    (no test reached it before, coverage of session 31). Checked against that formula in float64, with S computed
    here from the masks and the domain, and against the scores of threat_attack's moves of size ≤ r, which the
    bound must never exceed (it is a lower bound of the score over the allowed moves)."""
    model, x = _model([{"kind": "shift"}, {"kind": "concat-abs"}, {"kind": "pair-min"}], seed=3)
    model = model.double().eval()
    x = x.double()
    tm = TM.resolve(None, 6)
    features = model.features(x).detach().requires_grad_(True)
    score = model.score_from_features(features)
    (grad,) = torch.autograd.grad(score.sum(), features)
    assert threat_model_module.harm_bounds(model.feature_map, grad, grad, 6) is None  # the generic form, really
    lip, r = model.feature_lipschitz(p), 0.05
    bound = threat_lower_bound(score.detach(), grad, x, model.feature_map, lip, tm, r, p)
    up = tm.can_increase[None] & (x < tm.upper[None])
    down = tm.can_decrease[None] & (x > tm.lower[None])
    top = torch.where(up | down, tm.scale[None].double(), torch.zeros_like(x)).amax(1)
    dual = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]
    expected = score.detach() - r * top * lip * torch.linalg.vector_norm(grad, ord=dual, dim=1)
    torch.testing.assert_close(bound, expected, rtol=1e-12, atol=1e-12)
    assert bool((bound < score.detach() - 1e-6).all())  # it does cost something: the check below can fail
    gen = torch.Generator().manual_seed(0)
    x_adv = threat_attack(model, x, torch.full((len(x),), r), p, tm, steps=50, restarts=2, generator=gen)
    assert bool((move_sizes(x, x_adv, tm, p) <= r * (1 + 1e-12)).all())
    moved = (x_adv != x).any(dim=1)
    assert int(moved.sum()) > len(x) // 2
    with torch.no_grad():
        assert torch.allclose(model(x), score.detach())  # the same score
        assert bool((model(x_adv) >= bound - 1e-12).all())


def test_the_pipeline_trains_under_the_runs_threat_model(tmp_path, monkeypatch):
    seen = []
    original = FeatureConvexRecipe.use_threat_model

    def spy(self, tm):
        seen.append(tm)
        original(self, tm)

    monkeypatch.setattr(FeatureConvexRecipe, "use_threat_model", spy)
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(120, 3, generator=rng)
    y = (x[:, 0] > 0.5).long()
    np_path = tmp_path / "d.npz"
    np.savez(np_path, x=x.numpy(), y=y.numpy())
    spec = {"npz": str(np_path), "sensitive_class": 1}
    tm = ThreatModel(immutable=[2], scale={"*": 0.5})
    train_run(
        spec, tmp_path / "a", train_overrides={"epochs": 1, "margin_radius": 0.1}, progress=False, threat_model=tm
    )
    train_run(spec, tmp_path / "b", train_overrides={"epochs": 1}, progress=False)
    assert (
        seen[0] is not None
        and seen[0].scale.tolist() == [0.5] * 3
        and seen[0].can_increase.tolist() == [True, True, False]
    )
    assert seen[1] is None


def test_std_scales_need_data_and_refuse_a_constant_feature():
    tm = ThreatModel.from_dict({"scale": {"*": "std", "b": 3.0}})
    assert tm.uses_data_scales() and tm.to_dict()["scale"] == {"*": "std", "b": 3.0}
    with pytest.raises(ConfigError, match='scale "std" is fixed from the training inputs'):
        tm.resolve(["a", "b", "c"], 3)
    fixed = tm.with_data_scales(torch.tensor([0.5, 7.0, 2.0]), ["a", "b", "c"])
    assert fixed.resolve(["a", "b", "c"], 3).scale.tolist() == [0.5, 3.0, 2.0]
    with pytest.raises(ConfigError, match="feature 'c': its training std is 0"):
        tm.with_data_scales(torch.tensor([0.5, 7.0, 0.0]), ["a", "b", "c"])
    with pytest.raises(ConfigError, match="must be a number from"):
        ThreatModel.from_dict({"scale": {"a": "stdev"}})


def test_one_vs_rest_class_radii_are_in_the_threat_models_units_too():
    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "one-vs-rest-convex",
            "input_shape": [6],
            "num_classes": 3,
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [12, 6]},
        }
    ).eval()
    x = torch.rand(120, 6, generator=torch.Generator().manual_seed(2))
    tm = ThreatModel(immutable=[0], scale={"*": 2.0}).resolve(None, 6)
    plain = asymcert.certify(model, x, norms=(2, "inf"))
    cert = asymcert.certify(model, x, norms=(2, "inf"), threat_model=tm)
    assert cert.units == "threat-model units (δ_i / scale_i)"
    flags = cert.extra["flags"]
    for p, label in ((2.0, "l2"), (math.inf, "linf")):
        class_radii = cert.extra[f"class_radii_{label}"]
        for k, member in enumerate(model.member_models):  # member k's own closed form under the threat model
            own = asymcert.certify(member, x, norms=(p,), threat_model=tm).radii[p]
            assert torch.equal(class_radii[:, k], torch.where(flags[:, k], own, torch.zeros_like(own)))
        # feature 0 immutable: never below the plain radius over the scale, above it where feature 0 matters
        assert bool((class_radii >= torch.nextafter(plain.extra[f"class_radii_{label}"] / 2, torch.tensor(0.0))).all())
        assert bool((class_radii > 1.01 * plain.extra[f"class_radii_{label}"] / 2).any())
        picked = class_radii.gather(1, cert.predicted[:, None])[:, 0]
        assert torch.equal(
            cert.radii[p], torch.where(cert.extra["predicted_flagged"], picked, torch.zeros_like(picked))
        )
    flagged = cert.extra["predicted_flagged"].bool() & (cert.radii[2.0] > 0)
    assert int(flagged.sum()) > 10
    for c in cert.predicted[flagged].unique().tolist():  # the predicted class's flag survives the attack
        rows = flagged & (cert.predicted == c)
        score_c = _ClassScore(model, c).eval()
        adv = threat_attack(
            score_c, x[rows], cert.radii[2.0][rows] * 0.999, 2, tm, steps=60, generator=torch.Generator().manual_seed(0)
        )
        assert bool((score_c(adv) > 0).all())


class _ClassScore(torch.nn.Module):
    def __init__(self, model, k):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x)[:, self.k]


def test_reach_verified_confirms_reach_radii_and_refuses_larger_ones():
    model, x = _model(PHIS[8], seed=13)
    tm = TM.resolve(None, 6)
    cert = asymcert.certify(model, x, norms=(2, "inf"), threat_model=tm, reach=True)
    ok = reach_verified(model, x, tm, cert.radii)
    bigger = reach_verified(model, x, tm, {p: r * 1.5 for p, r in cert.radii.items()})
    for p, r in cert.radii.items():
        assert bool(ok[p].all())
        finite = cert.sensitive & torch.isfinite(r) & (r > 0)
        assert float((~bigger[p][finite]).double().mean()) > 0.5  # most are at their reach optimum


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_allowance_covers_every_float32_component(seed):
    """Without a rigorous gradient error, each component of ∇g gets ± slack·max|∇g|: the float64 gradient
    lies inside the interval around the float32 one, small and cancelling components included."""
    model, x = _model(PHIS[8], seed=seed, widths=(64, 64))
    features = model.features(x).detach().requires_grad_(True)
    (g32,) = torch.autograd.grad(model.score_from_features(features).sum(), features)
    m64 = copy.deepcopy(model).double()
    f64 = m64.features(x.double()).detach().requires_grad_(True)
    (g64,) = torch.autograd.grad(m64.score_from_features(f64).sum(), f64)
    slack = required_slack(model, "model")
    lo, hi = threat_model_module.gradient_interval(g32, None, slack)
    flat = g64.reshape(x.shape[0], -1)
    assert bool((lo <= flat).all()) and bool((flat <= hi).all())
    width = (hi - lo) / 2
    assert float((width / g32.reshape(x.shape[0], -1).abs().amax(1, keepdim=True)).max()) < 3 * slack


def test_reach_changes_nothing_for_affine_maps_and_is_skipped_there():
    assert not reach_matters(build_feature_map([{"kind": "shift"}, {"kind": "standardize"}], (6,)))
    assert reach_matters(build_feature_map([{"kind": "standardize"}, {"kind": "hinges", "knots": 2}], (6,)))
    model, x = _model(PHIS[2], seed=4)
    tm = TM.resolve(None, 6)
    closed = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=tm)
    reach = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=tm, reach=True)
    for p in closed.radii:
        assert torch.equal(closed.radii[p], reach.radii[p])


@pytest.mark.parametrize("phi", [PHIS[8], PAIR_PHIS[1]], ids=["coordinate-wise", "pair-min"])
def test_each_norm_gets_the_one_box_search_at_most_once(phi, monkeypatch):
    """ℓ1's one-box search runs first for every φ (the path starts from it where it applies); a φ the path does
    not take (pair-min) must not search ℓ1 a second time, and a coordinate-wise one searches no other norm."""
    model, x = _model(phi, seed=3)
    calls = []
    original = threat_model_module.reach_radii
    monkeypatch.setattr(
        threat_model_module, "reach_radii", lambda problem, p, start: calls.append(p) or original(problem, p, start)
    )
    asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=TM.resolve(None, 6), reach=True)
    assert sorted(calls) == ([1.0, 2.0, math.inf] if phi is PAIR_PHIS[1] else [1.0])


@pytest.mark.parametrize(
    "names, message",
    [(["a", "b", "a"], "feature name(s) 'a' appear more than once"), (["a", "b"], "2 feature names for 3 features")],
)
def test_feature_names_must_be_one_per_feature_and_distinct(names, message):
    """A repeated name froze only its last column; a short list said 'unknown feature' of one that exists."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        ThreatModel(immutable=["a"]).resolve(names, 3)


def test_a_star_in_one_move_list_stands_for_every_feature_the_others_do_not_name():
    """`"immutable": ["*"]` was refused as "unknown feature '*'" (walkthrough 27f), so a team listed nine names."""
    names = ["amount", "n_tx_24h", "velocity", "age"]
    tm = ThreatModel.from_dict({"immutable": ["*"], "increase_only": ["n_tx_24h", "velocity"]}).resolve(names, 4)
    assert tm.can_increase.tolist() == [False, True, True, False]
    assert tm.can_decrease.tolist() == [False, False, False, False]
    tm = ThreatModel.from_dict({"increase_only": ["*"], "immutable": ["age"]}).resolve(names, 4)
    assert tm.can_increase.tolist() == [True, True, True, False] and not bool(tm.can_decrease.any())
    with pytest.raises(ConfigError, match=r'"\*" in both immutable and increase_only'):
        ThreatModel.from_dict({"immutable": ["*"], "increase_only": ["*"]}).resolve(names, 4)


def test_a_star_in_a_move_list_is_refused_when_a_feature_is_named_star():
    """Before '*' in a list was the wildcard, it named a CSV column called '*'; now it would silently freeze
    every feature, so the ambiguity is refused (review 27g)."""
    with pytest.raises(
        ConfigError, match=r'"\*" in immutable stands for every feature not named, and a feature is named'
    ):
        ThreatModel.from_dict({"immutable": ["*"]}).resolve(["a", "*", "b"], 3)
    tm = ThreatModel.from_dict({"scale": {"*": 2.0}}).resolve(["a", "*", "b"], 3)  # (a mapping's '*': as before)
    assert tm.scale.tolist() == [2.0, 2.0, 2.0]


def test_a_name_that_differs_only_in_its_unicode_form_is_shown_by_code_points():
    """'fréq' written as e + a combining accent (NFD) against a header's é (NFC): both print the same, so the
    refusal shows the two spellings by code point (audit 30 F4); the names are still not matched silently."""
    with pytest.raises(ConfigError) as refused:
        ThreatModel(immutable=["fre\u0301q"]).resolve(["a", "fr\u00e9q"], 2)
    assert r"differs from the column 'fr\xe9q' only in its Unicode form: 'fre\u0301q'" in str(refused.value)
    with pytest.raises(ConfigError) as other:
        ThreatModel(immutable=["freq"]).resolve(["a", "fr\u00e9q"], 2)
    assert "Unicode" not in str(other.value)
