"""The path bound on one grid (asymcert.certify.reach_path): the grid, the curves' formulas against their
definitions, the ℓ2 dual against a dense search, blocking, and the check at a given radius."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import asymcert
from asymcert.certify import reach_path
from asymcert.certify.reach_path import (
    GRID_MAX_PIECES,
    PathCurves,
    dual_pieces,
    grid_cuts,
    grid_points,
    harm_at,
    linf_path_harm,
    path_dual,
    path_holds,
    verify_cuts,
)
from asymcert.certify.threat_model import reach_problem
from asymcert.threat import ThreatModel
from tests.conftest import balanced_feature_convex

PHI = [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 3}]
TM = ThreatModel(scale={"0": 2.0, "*": 0.5}, increase_only=[2], decrease_only=[3], lower={"*": 0.0}, upper={"4": 3.0})


def test_grid_points_are_powers_of_two_to_the_quarter_increasing_and_the_same_in_every_call():
    k = torch.arange(-40, 41)
    points = grid_points(k)
    exact = torch.tensor([2.0 ** (int(v) / 4) for v in k], dtype=torch.float64)
    assert torch.allclose(points, exact, rtol=1e-15, atol=0)
    assert torch.equal(points[k % 4 == 0], torch.tensor([2.0 ** (int(v) // 4) for v in k[k % 4 == 0]]).double())
    assert bool((points[1:] > points[:-1]).all())
    assert torch.equal(grid_points(k.flip(0)), points.flip(0))


@settings(max_examples=60, deadline=None)
@given(low=st.floats(1e-6, 1e3), spread=st.floats(1.0, 1e6))
def test_grid_cuts_start_at_zero_and_cover_low_to_high(low, spread):
    f64 = torch.float64
    cuts = grid_cuts(torch.tensor([low, 2 * low], dtype=f64), torch.tensor([low * spread, 2 * low], dtype=f64))
    alone = grid_cuts(torch.tensor([2 * low], dtype=f64), torch.tensor([2 * low], dtype=f64))
    assert bool((cuts[:, 0] == 0).all()) and bool((cuts[:, 1:] >= cuts[:, :-1]).all())
    assert cuts.shape[1] - 1 <= GRID_MAX_PIECES
    assert float(cuts[0, 1]) <= low and float(cuts[1, 1]) <= 2 * low
    if spread < 2.0**15:  # within the most pieces allowed
        assert float(cuts[0, -1]) >= low * spread
    # the second input's cuts do not depend on the first's: the same points, then its end repeated
    assert torch.equal(cuts[1, : alone.shape[1]], alone[0]) and bool((cuts[1, alone.shape[1] :] == alone[0, -1]).all())


def _random_curves(seed: int, n_rows=5, n=4, pieces=6) -> PathCurves:
    gen = torch.Generator().manual_seed(seed)
    steps = torch.rand(n_rows, pieces, generator=gen, dtype=torch.float64) + 0.05
    cuts = torch.cat([torch.zeros(n_rows, 1, dtype=torch.float64), steps.cumsum(1)], dim=1)
    slope = torch.rand(2, n_rows, n, pieces, generator=gen, dtype=torch.float64) * 3
    slope[torch.rand(slope.shape, generator=gen) < 0.2] = 0.0
    widths = (cuts[:, 1:] - cuts[:, :-1])[None, :, None, :]
    fall = slope * widths * torch.rand(slope.shape, generator=gen, dtype=torch.float64)  # at most slope × width
    cum = torch.cat([torch.zeros(2, n_rows, n, 1, dtype=torch.float64), fall.cumsum(-1)], dim=-1)
    return PathCurves(cum, slope, cuts)


def _h(curves: PathCurves, row: int, d: int, i: int, rho: float) -> float:
    """H_i(ρ) from its definition, in plain Python (the module docstring)."""
    cuts = curves.cuts[row].tolist()
    for j in range(1, len(cuts)):
        if rho <= cuts[j] or j == len(cuts) - 1:
            cum = curves.cum[d, row, i]
            along = float(cum[j - 1]) + float(curves.slope[d, row, i, j - 1]) * (rho - cuts[j - 1])
            return min(float(cum[j]), along)
    raise AssertionError


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), where=st.floats(0.0, 1.0))
def test_harm_at_is_the_defined_curve_rounded_up_and_nondecreasing(seed, where):
    curves = _random_curves(seed)
    r = curves.cuts[:, -1] * where
    got = harm_at(curves, r)
    for row in range(r.shape[0]):
        for d in range(2):
            for i in range(curves.cum.shape[2]):
                want = _h(curves, row, d, i, float(r[row]))
                assert want <= float(got[d, row, i]) <= want * (1 + 1e-12) + 1e-300
    later = harm_at(curves, torch.minimum(r * 1.01 + 1e-3, curves.cuts[:, -1]))
    assert bool((later >= got).all())
    assert torch.allclose(linf_path_harm(curves, r), got.amax(0).sum(1), rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), lam=st.floats(0.05, 20.0), cap_at=st.floats(0.1, 1.0), q=st.sampled_from([1, 2]))
def test_the_dual_bounds_a_dense_search_of_its_sup_and_is_close_to_it(seed, lam, cap_at, q):
    """F_R(λ) = Σ_i max over directions of sup_{ρ ≤ R} (H_i(ρ) − λρ^q), q = 2 (ℓ2) and 1 (ℓ1): at least the
    largest value of 4001 sampled ρ per coordinate, and within the sampling's error of it."""
    curves = _random_curves(seed)
    cap = curves.cuts[:, -1] * cap_at
    lams = torch.full((cap.shape[0],), lam, dtype=torch.float64)
    got = path_dual(dual_pieces(curves, cap, q), lams)
    for row in range(cap.shape[0]):
        grid = torch.linspace(0.0, float(cap[row]), 4001, dtype=torch.float64).tolist()
        total = 0.0
        for i in range(curves.cum.shape[2]):
            total += max(max(_h(curves, row, d, i, rho) - lam * rho**q for rho in grid) for d in range(2))
        assert float(got[row]) >= total
        assert float(got[row]) <= total + 4 * 3 * float(cap[row]) / 4000 + 1e-6


def _certified(seed=3, n=6):
    x = torch.rand(200, n, generator=torch.Generator().manual_seed(seed)) * 4
    model = balanced_feature_convex(PHI, x, (16, 16), seed)
    tm = TM.resolve(None, n)
    cert = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=tm, reach=True, precision="float64")
    return model, x, tm, cert


def _problem(model, x, tm):
    return reach_problem(model, x, tm, "float64", None, True, True)[0]


def test_blocks_of_any_size_give_the_same_radii(monkeypatch):
    model, x, tm, cert = _certified()
    monkeypatch.setattr(reach_path, "BLOCK_ELEMENTS", 1)  # one input per block
    again = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=tm, reach=True, precision="float64")
    for p, r in cert.radii.items():  # (the same up to the order of float64 sums: a few ulps)
        assert torch.allclose(r, again.radii[p], rtol=1e-12, atol=0)


def test_the_check_at_a_radius_confirms_the_search_and_refuses_most_larger_radii():
    model, x, tm, cert = _certified()
    problem = _problem(model, x, tm)
    for p, r in cert.radii.items():
        searched = cert.sensitive & (r > 0) & torch.isfinite(r)
        assert int(searched.sum()) > 40
        ok = path_holds(problem, p, r)
        assert bool(ok[searched].all())
        # the search stops near the bound's limit (ℓ1 spends the whole radius on one coordinate, where the grid
        # piece holding r, up to 19% longer, counts fully: it is found within 15% of the check's limit here)
        larger = path_holds(problem, p, r * (1.15 if p == 1 else 1.05))
        assert float((~larger[searched]).double().mean()) > 0.8
        assert not bool(path_holds(problem, p, torch.zeros_like(r)).any())
    assert path_holds(problem, 3.0, cert.radii[2.0]) is None


@pytest.mark.parametrize("radius", [1e-3, 0.37, 1.0, 2.0**0.25, 5.5])
def test_verify_cuts_hold_every_grid_point_below_the_radius_then_the_radius(radius):
    cuts = verify_cuts(torch.tensor([radius], dtype=torch.float64))[0]
    assert float(cuts[0]) == 0.0 and float(cuts[-1]) == radius
    assert bool((cuts[1:] >= cuts[:-1]).all())
    k = torch.arange(-400, 400)
    below = grid_points(k)[(grid_points(k) < radius) & (grid_points(k) >= radius / 2.0 ** (GRID_MAX_PIECES / 4))]
    assert set(below.tolist()) <= set(cuts.tolist())
    assert not math.isinf(float(cuts.max()))


def test_a_rows_radii_do_not_depend_on_the_rows_certified_with_it():
    model, x, tm, cert = _certified()
    rows = torch.nonzero(cert.sensitive & (cert.radii[2.0] > 0)).flatten()[:8]
    for i in rows.tolist():
        alone = asymcert.certify(
            model, x[i : i + 1], norms=(1, 2, "inf"), threat_model=tm, reach=True, precision="float64"
        )
        for p, r in cert.radii.items():  # (up to the order of float64 sums)
            assert math.isclose(float(alone.radii[p][0]), float(r[i]), rel_tol=1e-12), (i, p)


def test_a_norms_radii_do_not_depend_on_the_other_norms_asked_for():
    """The grid is anchored at the closed-form ℓ∞ radius whatever the norms, and each norm searches to its own cap,
    so `certify --norms 1` gives the ℓ1 radii of `--norms 1,2,inf` (it once started the grid from the smallest
    radius asked for: ℓ1 alone got a coarser grid and smaller radii)."""
    model, x, tm, cert = _certified()
    for p, r in cert.radii.items():
        alone = asymcert.certify(model, x, norms=(p,), threat_model=tm, reach=True, precision="float64")
        assert torch.allclose(alone.radii[p], r, rtol=1e-12, atol=0), p


def test_a_box_of_one_point_at_a_knot_gives_finite_reach_radii_at_least_the_closed_forms():
    """log1p then a hinge whose knot is 0, at inputs x_i ≤ 0: a move down reaches the one-point box [0, 0]
    (log1p clamps there), which counted the knot on neither side and left no prefix sum, so the weight bounds
    were ±∞ and log1p's ∞·0 made the ℓ1/ℓ2 reach radii NaN (session 32's adversarial review)."""
    torch.manual_seed(0)
    model = asymcert.models.build_model(
        {
            "kind": "feature-convex",
            "input_shape": [2],
            "feature_map": [{"kind": "log1p"}, {"kind": "hinges", "knots": 1}],
            "convex": {"kind": "icnn", "widths": [4], "batch_norm": False},
        }
    ).eval()
    with torch.no_grad():
        model.feature_map.maps[1].knot_values.zero_()
        for name, p in model.named_parameters():
            if "hidden" in name:
                p.copy_(torch.rand_like(p))
        x = torch.tensor([[0.0, 1.0], [-0.5, 2.0]])
        model.set_balance(-float(model(x).min()) + 0.05)
    tm = ThreatModel(scale={"0": 1.0, "1": 2.0})
    for norms in [(1.0,), (2.0,), (1.0, 2.0, math.inf)]:
        reach = asymcert.certify(model, x, norms=norms, reach=True, threat_model=tm)
        closed = asymcert.certify(model, x, norms=norms, threat_model=tm)
        for p in norms:
            assert bool(torch.isfinite(reach.radii[p]).all()), (p, reach.radii[p])
            assert bool((reach.radii[p] >= closed.radii[p]).all()) and bool((closed.radii[p] > 0).all())


def test_guarded_reach_radii_are_never_below_the_guarded_closed_form_under_extreme_scales():
    """The float guard sizes its box of allowed moves by the largest radius of any norm; under scales 1e-6 and
    1e-30 the reach-aware ℓ1 radius (6e29 units) made that box so wide that the guard lowered every norm's
    radius to 0 where the closed form certifies 6e5 (session 32's adversarial review, its seed 27)."""
    torch.manual_seed(27)
    model = asymcert.models.build_model(
        {
            "kind": "feature-convex",
            "input_shape": [2],
            "feature_map": [{"kind": "hinges", "knots": 2}],
            "convex": {"kind": "icnn", "widths": [3], "batch_norm": False},
        }
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand_like(p) if "hidden" in name else torch.randn_like(p) if "passthrough" in name else p)
        hinges = model.feature_map.maps[0]
        hinges.knot_values.copy_(torch.sort(torch.rand_like(hinges.knot_values) * 3, dim=0).values)
        x = torch.tensor([[3.4886810779571533, 0.0]])
        model.set_balance(-float(model(x)[0]) + 0.5)
    tm = ThreatModel(scale={"0": 1e-6, "1": 1e-30}, lower={"*": 0.0}, increase_only=["0"])
    norms = (1.0, 2.0, math.inf)
    closed = asymcert.certify(model, x, norms=norms, threat_model=tm)
    reach = asymcert.certify(model, x, norms=norms, threat_model=tm, reach=True)
    unguarded = asymcert.certify(model, x, norms=norms, threat_model=tm, reach=True, guard=False)
    for p in norms:
        assert float(closed.radii[p][0]) > 1e3, closed.radii  # the closed form certifies far
        assert float(unguarded.radii[p][0]) > float(closed.radii[p][0])  # and reach without the guard further
        assert float(reach.radii[p][0]) >= float(closed.radii[p][0]), (p, reach.radii[p], closed.radii[p])
