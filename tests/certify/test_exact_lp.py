"""Exact ℓ1 and ℓ2 radii through log1p, pair-min and hinges (outer approximation by mixed-integer programs):
against a dense grid, never below a certificate, counterexamples that respect the threat model, infinite,
zero and unbracketed radii, refusals by name, and the audit's --exact-milp."""

from __future__ import annotations

import math

import pytest
import torch

import asymcert
from asymcert import audit as audit_module
from asymcert.audit import ExactCheck, ExactSolve, audit
from asymcert.certify import exact_lp
from asymcert.certify.exact import UnsupportedModelError
from asymcert.certify.exact_linf import BISECTION_RTOL, exact_linf_radii
from asymcert.certify.exact_lp import exact_l1_radii, exact_l2_radii
from asymcert.models import build_model
from asymcert.threat import ThreatModel
from tests.certify.test_exact_linf import PHIS, SPAM_PHI, TM, _model
from tests.conftest import balanced_feature_convex, near_boundary, score64

EXACT = {1.0: exact_l1_radii, 2.0: exact_l2_radii}
# two features: scales, a one-sided move and a domain (both ≥ 0), as the grid can check them
TM2 = ThreatModel(scale={"0": 2.0, "1": 0.5}, increase_only=[1], lower={"*": 0.0})


def _grid(model, x: torch.Tensor, reach: float, tm, p: float, steps: int = 241) -> float:
    """The smallest ℓp size (threat-model units) among the allowed moves of a (steps × steps) grid of
    [−reach, reach]² in those units that get s ≤ 0."""
    axis = torch.linspace(-reach, reach, steps, dtype=torch.float64)
    u, v = torch.meshgrid(axis, axis, indexing="ij")
    units = torch.stack([u.flatten(), v.flatten()], dim=1)
    if tm is not None:
        units = units[units[:, 1] >= 0]  # increase_only on feature 1
    moved = x.double()[None] + units * (1.0 if tm is None else tm.scale.double())
    if tm is not None:
        keep = (moved >= 0).all(dim=1)  # the domain
        units, moved = units[keep], moved[keep]
    flips = score64(model, moved) <= 0
    return float(units[flips].norm(p=p, dim=1).min()) if bool(flips.any()) else math.inf


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("phi", list(PHIS))
def test_the_bracket_matches_a_dense_grid_in_two_dimensions(phi, constrained, p):
    """No allowed grid move of smaller ℓp size than lo flips the decision, and the grid finds a flip within
    a few grid steps of hi."""
    model, x = _model(PHIS[phi], 2, seed=3)
    tm = TM2.resolve(None, 2) if constrained else None
    x = x[score64(model, x) > 0][:6]
    found = EXACT[p](model, x, tm, rtol=1e-6)
    assert all(s == "exact" or s.startswith("no flip") for s in found.status) and "exact" in found.status
    for i in range(len(x)):
        lo, hi = float(found.lo[i]), float(found.hi[i])
        if found.status[i] != "exact":  # none within the whole reach, or (unbounded) up to lo
            assert math.isinf(hi) and lo > 20 and _grid(model, x[i], 20.0, tm, p) == math.inf
            continue
        assert 0 < lo <= hi <= lo * (1 + 1e-6)
        step = 2 * 1.5 * hi / 240
        grid = _grid(model, x[i], 1.5 * hi, tm, p)
        assert grid >= lo * (1 - 1e-9)
        assert grid <= hi + 4 * step


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("phi", list(PHIS))
def test_certificates_never_exceed_the_exact_radius_under_a_threat_model(phi, p):
    """Typical and near-boundary inputs, every kind of constraint: closed form ≤ reach ≤ a verified flip."""
    model, x = _model(PHIS[phi], 6, seed=1)
    tm = TM.resolve(None, 6)
    k = 4 if phi == "pairs" else 8
    x = x[score64(model, x) > 0][:k]
    inputs = torch.cat([x, near_boundary(model, x[: k // 2])])
    found = EXACT[p](model, inputs, tm, rtol=1e-3)
    assert sum(s == "exact" for s in found.status) >= len(inputs) - 1
    flagged = torch.tensor([s != "not flagged" for s in found.status])
    for reach in (False, True):
        cert = asymcert.certify(model, inputs, norms=(p,), threat_model=tm, reach=reach)
        closed = cert.radii[p].double()
        assert bool((closed[flagged] <= found.hi[flagged] * (1 + 1e-9)).all())
        assert bool((found.lo[flagged & (closed > 0)] > 0).all())  # informative wherever the certificate is


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_counterexamples_respect_the_threat_model_and_flip_the_decision(p):
    """Every reported move (ℓ1, ℓ2 and exact_linf's ℓ∞): immutable and forbidden directions untouched, inside
    the domain, of ℓp size hi in threat-model units, and s(x + δ) ≤ 0 (to rounding) on the float64 model."""
    model, x = _model(SPAM_PHI, 6, seed=2)
    tm = TM.resolve(None, 6)
    x = x[score64(model, x) > 0][:10]
    found = {**EXACT, math.inf: exact_linf_radii}[p](model, x, tm)
    rows = torch.isfinite(found.hi) & (found.hi > 0)
    assert int(rows.sum()) >= 5
    delta, xs = found.delta[rows], x[rows].double()
    assert bool((delta[:, 1] == 0).all()) and bool((delta[:, 2] >= 0).all()) and bool((delta[:, 3] <= 0).all())
    moved = xs + delta
    assert bool((moved >= 0).all()) and bool((moved[:, 4] <= torch.clamp(xs[:, 4], min=3.0)).all())
    size = (delta / tm.scale).norm(p=p, dim=1)
    torch.testing.assert_close(size, found.hi[rows], rtol=1e-12, atol=0)
    assert bool((score64(model, moved) <= 1e-9 * score64(model, xs).abs().clamp_min(1)).all())


def test_no_allowed_move_unflagged_inputs_and_negative_inputs_under_log1p():
    """∞ where nothing may move, 0 where nothing is flagged, and no bracket (said so) for x < 0 under log1p."""
    model, x = _model(SPAM_PHI, 3, seed=0)
    s = score64(model, x)
    found = exact_l1_radii(model, x, ThreatModel(immutable=[0, 1, 2]))
    assert bool(torch.isinf(found.hi[s > 0]).all()) and bool(torch.isinf(found.lo[s > 0]).all())
    assert {found.status[i] for i in range(len(x)) if s[i] > 0} == {"no flip"}
    assert bool((found.hi[s <= 0] == 0).all())
    negative = x.clone()
    negative[:, 0] = -1.0
    flagged = score64(model, negative) > 0
    assert int(flagged.sum()) >= 2
    odd = exact_l1_radii(model, negative[flagged])
    assert set(odd.status) == {"not bracketed: x < 0 under log1p"} and bool((odd.lo == 0).all())


def test_other_feature_maps_are_refused_by_name():
    concat = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [4],
            "feature_map": [{"kind": "concat-abs"}],
            "convex": {"kind": "icnn", "widths": [4]},
        }
    )
    for solver in EXACT.values():  # bad inputs and settings: test_exact_linf, for all three solvers
        with pytest.raises(UnsupportedModelError, match="'concat-abs' is not one"):
            solver(concat, torch.rand(2, 4))


def test_the_audit_compares_certificates_with_exact_l1_and_l2_radii():
    """--exact-milp: ℓ1, ℓ2 and ℓ∞ get exact radii through log1p and hinges, with no violation."""
    model, x = _model(SPAM_PHI, 5, seed=5)
    tm = ThreatModel(lower={"*": 0.0}).resolve(None, 5)
    report = audit(
        model, x[:8], norms=(1, 2, math.inf), threat_model=tm, exact_milp=True, restarts=1, steps=20, exact_time_limit=5
    )
    exact = {label: item.exact for label, item in report.methods["feature-convex"].norms.items()}
    for norm in ("l1", "l2", "linf"):
        check = exact[norm]
        assert isinstance(check, ExactCheck) and check.violations == 0
        assert check.tightness is not None and 0 < check.tightness.median <= 1
    l1, l2 = exact["l1"], exact["l2"]
    assert isinstance(l1, ExactCheck) and isinstance(l2, ExactCheck)
    assert "outer approximation" in str(l1.solve.method) and "norm" in str(l2.solve.method)
    assert report.violations == 0


@pytest.mark.parametrize("radii", [exact_linf_radii, exact_l1_radii, exact_l2_radii])
def test_an_unbounded_reach_without_a_flip_is_said_so_not_a_solver_error(radii):
    """An increase-only feature without an upper bound: the box doubled on to about 1e15, where HiGHS answered
    "Model error" (audit 27b F3); the search now stops at MAX_BOX with "no flip up to r = …"."""
    model, x = _model(PHIS["shift-hinges"], 3, seed=0)
    tm = ThreatModel(
        scale={"0": 2.0, "*": 0.5}, increase_only=[1], decrease_only=[2], lower={"*": 0.0}, upper={"0": 3.0}
    )
    flagged = x[score64(model, x) > 0][:1]
    found = radii(model, flagged, tm, time_limit=20.0)
    assert found.status[0].startswith("no flip up to r = ")
    assert float(found.lo[0]) > 1e11 and math.isinf(float(found.hi[0]))


def test_a_program_finding_nothing_below_a_known_flip_never_puts_lo_above_hi(monkeypatch):
    """With a known flip of size hi as its cutoff, a program that finds nothing set lo to the box radius r > hi
    and called the bracket exact (audit 27b F1: lo 1.30e-3, hi 8.26e-4)."""
    model, x = _model(PHIS["pairs"], 5, seed=0)
    flagged = x[score64(model, x) > 0][:1]
    real = exact_lp._solve_round

    def no_point_once_a_flip_is_known(costs, lo, hi, time_limit, cutoff, gap):
        return (
            exact_lp._Round(None, None, None, None, "infeasible")
            if math.isfinite(cutoff)
            else real(costs, lo, hi, time_limit, cutoff, gap)
        )

    monkeypatch.setattr(exact_lp, "_solve_round", no_point_once_a_flip_is_known)
    for radii in (exact_l1_radii, exact_l2_radii):
        found = radii(model, flagged, TM, time_limit=20.0)
        assert float(found.lo[0]) <= float(found.hi[0]) < math.inf


def test_the_audit_table_says_when_exact_brackets_stay_open():
    """audit.json counted the brackets left open at the time limit, audit.md showed only seconds and a tightness
    measured against their upper ends (audit 27b F4: 38 of 39 open on SpamBase, unsaid)."""
    model, x = _model(SPAM_PHI, 5, seed=5)
    tm = ThreatModel(lower={"*": 0.0}).resolve(None, 5)
    report = audit(
        model, x[:8], norms=(1,), threat_model=tm, exact_milp=True, restarts=1, steps=5, exact_time_limit=1e-9
    )
    exact = report.methods["feature-convex"].norms["l1"].exact
    assert isinstance(exact, ExactCheck) and exact.solve.open_brackets
    row = next(line for line in audit_module._markdown(report).splitlines() if line.startswith("| l1 |"))
    assert f"{exact.solve.open_brackets} brackets open (max gap" in row and "against a verified flip" in row


@pytest.mark.parametrize("s", [1e-6, 1e6])
def test_far_from_unit_scales_only_change_the_units_of_every_bracket(s):
    """Scales of 10⁻⁶ or 10⁶ on every feature divide every bracket by s. Before the programs worked in solver units
    (exact.solver_units), ℓ2 claimed lower ends up to 2.3× the exact radius at 10⁶ (audit 30 F1)."""
    model, x = _model(SPAM_PHI, 4, seed=5, n=16)
    box = {"lower": {"*": 0.0}}
    for bracket in (exact_linf_radii, exact_l1_radii, exact_l2_radii):
        plain = bracket(model, x, ThreatModel(**box))
        scaled = bracket(model, x, ThreatModel(scale={"*": s}, **box))
        shown = [i for i, why in enumerate(plain.status) if why == "exact"]
        assert len(shown) >= 4 and [scaled.status[i] for i in shown] == ["exact"] * len(shown)
        for end in ("lo", "hi"):
            want, got = getattr(plain, end)[shown] / s, getattr(scaled, end)[shown]
            torch.testing.assert_close(got, want, rtol=3 * BISECTION_RTOL, atol=0)


def test_scales_spanning_more_than_the_programs_hold_are_left_unbracketed():
    """One feature's scale 10⁸ times the others': the ℓ2 program's lower end was up to 4.5× a flip the QP finds and
    checks (audit 30 F1). Such inputs are [0, ∞) with the reason; ℓ∞'s boxes still bracket them."""
    x = torch.rand(30, 5, generator=torch.Generator().manual_seed(1)) * 4
    model = balanced_feature_convex([{"kind": "standardize"}], x, (8,), 0)
    x = x[:10]
    tm = ThreatModel(scale={"0": 1e8, "*": 1.0}, lower={"*": 0.0})
    for p, bracket in ((2.0, exact_l2_radii), (1.0, exact_l1_radii)):
        found = asymcert.exact_radius(model, x, p, threat_model=tm)  # (LP/QP: each radius a checked flip's size)
        result = bracket(model, x, tm)
        flagged = found > 0
        assert int(flagged.sum()) >= 3 and bool(torch.isfinite(found[flagged]).all())
        assert bool((result.lo <= found * (1 + 1e-6)).all()), (result.lo / found)[flagged]
        why = [result.status[i] for i in range(10) if flagged[i]]
        assert all(s.startswith("not bracketed: the movable features' scales span") for s in why), why
    linf = exact_linf_radii(model, x, tm)
    assert "exact" in linf.status
    info = audit_module._milp_bracket(model, x, 2.0, 20.0, tm.resolve(None, 5))
    info = audit_module._exact_milp(info, "outer approximation")  # (the audit said "max gap 0")
    assert isinstance(info, ExactSolve) and info.open_brackets is not None
    assert info.open_brackets >= 3 and info.max_relative_gap == math.inf
