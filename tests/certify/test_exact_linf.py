"""Exact ℓ∞ radii through log1p, pair-min and hinges (mixed-integer programs): against a dense grid, never below a
certificate, counterexamples that respect the threat model, infinite and zero radii, refusals by name,
and the audit's --exact-milp."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch

import asymcert
from asymcert.audit import ExactCheck, ExactUnavailable, audit
from asymcert.certify import exact_linf as exact_linf_module
from asymcert.certify.exact import UnsupportedModelError
from asymcert.certify.exact_linf import exact_linf_radii, hinge_chain
from asymcert.certify.exact_lp import cross_check, exact_l1_radii, exact_l2_radii
from asymcert.errors import ConfigError, InputError
from asymcert.models import build_model
from asymcert.threat import ThreatModel
from tests.conftest import balanced_feature_convex, grid_flip, near_boundary, near_boundary64, scaled_score, score64

SPAM_PHI = [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 2}]
PHIS = {
    "log1p-standardize-hinges": SPAM_PHI,
    "shift-hinges": [{"kind": "shift"}, {"kind": "hinges", "knots": 3}],
    "log1p-standardize": [{"kind": "log1p"}, {"kind": "standardize"}],
    "pairs": [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "pair-min"}, {"kind": "hinges", "knots": 2}],
}
# scales, an immutable feature, one-sided moves and a domain (frequencies ≥ 0, one capped)
TM = ThreatModel(
    scale={"0": 2.0, "*": 0.5}, immutable=[1], increase_only=[2], decrease_only=[3], lower={"*": 0.0}, upper={"4": 3.0}
)


def _model(phi: list[dict], d: int, seed: int = 0, n: int = 40, widths=(6, 4)):
    """A small random ICNN on heavy-tailed inputs in [0, 8)^d (many zeros), about half of them flagged."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen) ** 3 * 8 * (torch.rand(n, d, generator=gen) < 0.7)
    return balanced_feature_convex(phi, x, widths, seed), x


def _grid_radius(model, x: torch.Tensor, reach: float, steps: int = 241) -> float:
    """The smallest ℓ∞ move among a (steps × steps) grid of the 2-d box of half-width ``reach`` that gets s ≤ 0."""
    axis = torch.linspace(-reach, reach, steps, dtype=torch.float64)
    u, v = torch.meshgrid(axis, axis, indexing="ij")
    moves = torch.stack([u.flatten(), v.flatten()], dim=1)
    flips = score64(model, x.double()[None] + moves) <= 0
    return float(moves[flips].abs().amax(dim=1).min()) if bool(flips.any()) else math.inf


@pytest.mark.parametrize("phi", list(PHIS))
def test_the_bracket_matches_a_dense_grid_in_two_dimensions(phi):
    """No grid point closer than lo flips the decision, and the grid finds a flip within a grid step of hi."""
    model, x = _model(PHIS[phi], 2, seed=3)
    x = x[score64(model, x) > 0][:6]
    found = exact_linf_radii(model, x, rtol=1e-6)
    assert set(found.status) == {"exact"}
    for i in range(len(x)):
        lo, hi = float(found.lo[i]), float(found.hi[i])
        assert 0 < lo <= hi <= lo * (1 + 1e-6)
        step = 2 * 1.5 * hi / 240
        grid = _grid_radius(model, x[i], 1.5 * hi)
        assert grid >= lo * (1 - 1e-9)
        assert grid <= hi + 2 * step


@pytest.mark.parametrize("phi", list(PHIS))
def test_certificates_never_exceed_the_exact_radius_under_a_threat_model(phi):
    """Typical and near-boundary inputs, every kind of constraint: closed form ≤ reach ≤ exact."""
    model, x = _model(PHIS[phi], 6, seed=1)
    tm = TM.resolve(None, 6)
    k = 4 if phi == "pairs" else 8  # pair-min's programs have a binary per overlapping pair: fewer inputs
    x = x[score64(model, x) > 0][:k]
    inputs = torch.cat([x, near_boundary(model, x[: k // 2])])
    found = exact_linf_radii(model, inputs, tm)
    assert sum(s == "exact" for s in found.status) >= len(inputs) - 1
    flagged = torch.tensor([s != "not flagged" for s in found.status])
    for reach in (False, True):
        cert = asymcert.certify(model, inputs, norms=(math.inf,), threat_model=tm, reach=reach)
        closed = cert.radii[math.inf].double()
        assert bool((closed[flagged] <= found.hi[flagged] * (1 + 1e-9)).all())
    # the bracket is informative: the exact radius is positive wherever the certificate is
    assert bool((found.lo[flagged & (closed > 0)] > 0).all())


def test_no_allowed_move_is_an_infinite_radius_and_unflagged_inputs_get_zero():
    model, x = _model(SPAM_PHI, 3, seed=0)
    frozen = ThreatModel(immutable=[0, 1, 2]).resolve(None, 3)
    s = score64(model, x)
    found = exact_linf_radii(model, x, frozen)
    assert bool(torch.isinf(found.hi[s > 0]).all()) and bool(torch.isinf(found.lo[s > 0]).all())
    assert {found.status[i] for i in range(len(x)) if s[i] > 0} == {"no flip"}
    assert bool((found.hi[s <= 0] == 0).all()) and {found.status[i] for i in range(len(x)) if s[i] <= 0} == {
        "not flagged"
    }


@pytest.mark.parametrize(
    ("phi", "convex", "message"),
    [
        ([{"kind": "pair-min"}, {"kind": "standardize"}], {"kind": "icnn", "widths": [4]}, "'pair-min' is not one"),
        ([{"kind": "concat-abs"}], {"kind": "icnn", "widths": [4]}, "'concat-abs' is not one"),
        ([{"kind": "standardize"}, {"kind": "log1p"}], {"kind": "icnn", "widths": [4]}, "'log1p' is not one"),
    ],
)
def test_other_feature_maps_are_refused_by_name(phi, convex, message):
    model = build_model({"kind": "feature-convex", "input_shape": [4], "feature_map": phi, "convex": convex})
    with pytest.raises(UnsupportedModelError, match=message):
        hinge_chain(model)
    with pytest.raises(UnsupportedModelError, match=message):
        exact_linf_radii(model, torch.rand(2, 4))


def test_the_chain_reproduces_the_model():
    """The extracted chain computes the model's own score (float64) on inputs of both signs and any size."""
    model, x = _model(SPAM_PHI, 5, seed=4)
    chain = hinge_chain(copy.deepcopy(model).double())
    probe = torch.cat([x, -x, x * 100]).double()
    np.testing.assert_allclose(
        chain.g.score(chain.features(probe.numpy())), score64(model, probe).numpy(), rtol=1e-10, atol=1e-12
    )


def test_the_audit_compares_certificates_with_exact_linf_radii():
    """--exact-milp: ℓ∞ gets exact radii (tightness reported, no violation); without it, none."""
    model, x = _model(SPAM_PHI, 5, seed=5)
    tm = ThreatModel(lower={"*": 0.0}).resolve(None, 5)
    report = audit(model, x[:12], norms=(math.inf,), threat_model=tm, exact_milp=True, restarts=1, steps=20)
    exact = report.methods["feature-convex"].norms["linf"].exact
    assert isinstance(exact, ExactCheck) and exact.violations == 0
    assert exact.tightness is not None and 0 < exact.tightness.median <= 1
    plain = audit(model, x[:12], norms=(math.inf,), threat_model=tm, restarts=1, steps=20)
    assert isinstance(plain.methods["feature-convex"].norms["linf"].exact, ExactUnavailable)


@pytest.mark.parametrize("solver", [exact_linf_radii, exact_l1_radii, exact_l2_radii])
def test_bad_inputs_and_settings_are_refused_in_one_line(solver):
    """The checks every exact solver shares (exact_linf.bracket_radii), for ℓ∞, ℓ1 and ℓ2."""
    model, x = _model(SPAM_PHI, 3, seed=0)
    bad = x[:2].clone()
    bad[1, 0] = math.nan
    with pytest.raises(InputError, match="NaN"):
        solver(model, bad)
    with pytest.raises(InputError, match="shape"):
        solver(model, x[:, :2])
    with pytest.raises(ConfigError, match="for 4 features"):
        solver(model, x[:2], ThreatModel().resolve(None, 4))
    for name, value in (("time_limit", 0), ("rtol", -1.0), ("rtol", True)):
        with pytest.raises(ConfigError, match=name):
            solver(model, x[:2], **{name: value})
    empty = solver(model, x[:0])  # an empty batch is an empty bracket, not a crash
    assert empty.lo.shape == (0,) and empty.delta.shape == (0, 3) and empty.status == []
    # a ThreatModel naming features by index is resolved here, as exact_radius does
    by_index = solver(model, x[:4], ThreatModel(immutable=[0, 1, 2]))
    assert set(by_index.status) <= {"no flip", "not flagged"}


def test_the_solver_prints_nothing_and_python_output_before_it_survives(capfd, monkeypatch):
    """scipy's HiGHS prints a debug line on stdout on some solves (seen in `asymcert audit --exact-milp` on a
    pair-min model): run_milp silences the C-level stdout around the solve, after flushing Python's own."""
    real = exact_linf_module.milp

    def noisy(*args, **kwargs):
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(exact_linf_module, "milp", noisy)
    model, x = _model(PHIS["pairs"], 3, seed=1)
    x = x[score64(model, x) > 0][:2]
    print("before the solve", end="")  # buffered by Python: must come out, not vanish with the C output
    found = exact_linf_radii(model, x, rtol=1e-3)
    out = capfd.readouterr().out
    assert out == "before the solve"
    assert set(found.status) <= {"exact"}


MILPS = {math.inf: exact_linf_radii, 1.0: exact_l1_radii, 2.0: exact_l2_radii}


def _flips(model, x: torch.Tensor, found) -> None:
    """Every finite upper end's move, re-evaluated on the float64 model, reaches s ≤ 0 (no tolerance)."""
    for i in range(len(x)):
        if math.isfinite(float(found.hi[i])) and float(found.hi[i]) > 0:
            assert float(score64(model, (x[i].double() + found.delta[i])[None])[0]) <= 0, (i, found.status[i])


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
@pytest.mark.parametrize("phi", ["log1p-standardize-hinges", "shift-hinges", "log1p-standardize"])
def test_near_the_boundary_an_exact_radius_is_never_above_a_verified_flip(phi, p):
    """Inputs with float64 scores of about 1e-8 (radii near 1e-8): no "exact" lower end lies above the smallest
    flip of a dense float64 grid (the programs' absolute tolerances once gave 2.6–22× too much: audit 33 F1),
    and every upper end is a real flip."""
    model, x = _model(PHIS[phi], 2, seed=10)
    model = model.double()  # (float64 inputs, which no rounding moves off their score)
    xs = near_boundary64(model, x, 1e-8)[:3]
    found = MILPS[p](model, xs, time_limit=20)
    _flips(model, xs, found)
    for i in range(len(xs)):
        lo, hi = float(found.lo[i]), float(found.hi[i])
        assert 0 < hi < math.inf, found.status[i]
        grid = grid_flip(model, xs[i], 2 * hi, p)
        assert lo <= grid * (1 + 1e-3), (i, lo, grid, found.status[i])
        if found.status[i] == "exact":
            assert hi <= grid * (1 + 1e-2), (i, hi, grid)


@pytest.mark.parametrize("p", [math.inf, 1.0, 2.0])
def test_brackets_do_not_depend_on_the_scale_of_the_score(p):
    """s multiplied by c = 1e-6 or 1e-9 changes no decision, so no bracket (measured before the programs were
    scaled to the score: ℓ∞ 3–8% above the true radius, ℓ1/ℓ2 [0, 0] "exact" with a zero move: audit 33 F2)."""
    model, x = _model(SPAM_PHI, 2, seed=3)
    model = model.double()
    xs = x[score64(model, x) > 0][:2].double()
    base = MILPS[p](model, xs, time_limit=20)
    assert set(base.status) == {"exact"}
    for c in (1e-6, 1e-9):
        scaled = scaled_score(model, c)
        found = MILPS[p](scaled, xs, time_limit=20)
        _flips(scaled, xs, found)
        assert set(found.status) == {"exact"}, (c, found.status)
        assert torch.allclose(found.lo, base.lo, rtol=1e-3) and torch.allclose(found.hi, base.hi, rtol=1e-3), c


def test_lower_ends_above_another_norms_upper_end_are_not_exact():
    """‖δ‖₂ ≤ ‖δ‖₁: an ℓ2 lower end above the same input's ℓ1 upper end is the programs' error, so the audit's
    cross-check takes "exact" away from it."""
    one = exact_linf_module.ExactBracket(
        torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), torch.zeros(2, 2), ["exact", "exact"], 0.0
    )
    two = exact_linf_module.ExactBracket(
        torch.tensor([1.5, 0.9]), torch.tensor([1.5, 0.9]), torch.zeros(2, 2), ["exact", "exact"], 0.0
    )
    cross_check({1.0: one, 2.0: two})
    assert two.status[0].startswith("inconsistent") and two.status[1] == "exact" and one.status == ["exact"] * 2
