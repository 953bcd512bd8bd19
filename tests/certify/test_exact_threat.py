"""Exact radii under a threat model: never below the closed-form certificate, allowed perturbations on
the boundary, units, unreachable inputs, and constraints that only ever lengthen the way."""

from __future__ import annotations

import copy
import math
import types

import numpy as np
import pytest
import torch

import asymcert
from asymcert.certify.exact import ExactRadiusSolver, UnsupportedModelError, exact_radius, solver_units
from asymcert.certify.threat_attack import move_sizes, threat_attack
from asymcert.errors import ConfigError
from asymcert.models import build_model
from asymcert.threat import ThreatModel
from tests.conftest import balanced_feature_convex, score64

D = 8
NORMS = [1.0, 2.0, math.inf]
PHIS = {"identity": [{"kind": "identity"}], "shift": [{"kind": "shift"}], "standardize": [{"kind": "standardize"}]}
# every kind of constraint: scales, an immutable feature, one-sided ones, a domain that some inputs
# (x ∈ [0, 4)) sit outside of on feature 4 and that binds on feature 6 and at 0
TM = ThreatModel(
    scale={"0": 2.0, "3": 0.25, "*": 0.5},
    immutable=[1],
    increase_only=[2, 5],
    decrease_only=[3],
    lower={"*": 0.0},
    upper={"4": 3.0, "6": 2.5},
)
SAME_UNITS = ThreatModel(scale={"0": 2.0, "3": 0.25, "*": 0.5})  # the same sizes, every move allowed


def _model(phi: str, seed: int = 0, n: int = 48, widths: tuple[int, ...] = (16, 16)):
    """A small ICNN feature-convex model and inputs in [0, 4)^D, about half of them flagged."""
    x = torch.rand(n, D, generator=torch.Generator().manual_seed(seed)) * 4
    return balanced_feature_convex(PHIS[phi], x, widths, seed), x


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("phi", list(PHIS))
def test_never_below_the_closed_form_certificate_and_perturbations_are_allowed(phi, p):
    model, x = _model(phi, seed=1)
    tm = TM.resolve(None, D)
    cert = asymcert.certify(model, x, norms=(p,), threat_model=tm, guard=False, precision="float64")
    radii, delta = exact_radius(model, x, p, return_perturbation=True, threat_model=tm)
    flagged = score64(model, x) > 0  # the exact radius is 0 exactly where the float64 score is ≤ 0
    assert 10 <= int(flagged.sum()) <= 38 and radii.dtype == torch.float64
    assert bool((radii[~flagged] == 0).all())
    r = radii[flagged]
    assert bool(torch.isfinite(r).all()) and bool((r > 0).all())
    assert int(cert.predicted.bool()[flagged].sum()) >= int(flagged.sum()) - 2
    assert bool((cert.radius(p) <= radii * (1 + 1e-7)).all()), (cert.radius(p) / radii).max()
    # the perturbation is an allowed move of exactly that size ...
    xf, df = x[flagged].double(), delta[flagged]
    sizes = move_sizes(xf, xf + df, tm, p)
    assert bool(torch.isfinite(sizes).all())
    torch.testing.assert_close(sizes, r, rtol=1e-6, atol=0)
    # ... which the model itself sends to {s ≤ 0} when pushed 1e-6 further
    s0, s_beyond = score64(model, xf), score64(model, xf + df * (1 + 1e-6))
    assert bool((s_beyond <= 1e-9 * s0.abs().clamp_min(1)).all()), s_beyond.max()
    # and a constrained attack finds no flip just inside it (the radius is not overstated)
    gen = torch.Generator().manual_seed(2)
    inside = threat_attack(model, x[flagged], (r * 0.999).float(), p, tm, steps=60, restarts=2, generator=gen)
    assert bool((move_sizes(x[flagged], inside, tm, p) <= r * 0.999 * (1 + 1e-5)).all())
    assert int((score64(model, inside) <= 0).sum()) == 0


@pytest.mark.parametrize("p", NORMS)
def test_trivial_threat_model_is_no_threat_model_and_scale_divides(p):
    model, x = _model("standardize", seed=2)
    plain = exact_radius(model, x, p)
    trivial = exact_radius(model, x, p, threat_model=ThreatModel())
    resolved = exact_radius(model, x, p, threat_model=ThreatModel().resolve(None, D))
    quarter = exact_radius(model, x, p, threat_model=ThreatModel(scale={"*": 4.0}))
    assert int((plain > 0).sum()) >= 10 and bool(torch.isfinite(plain).all())
    torch.testing.assert_close(trivial, plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(resolved, plain, rtol=1e-12, atol=0)
    # ℓ2 (interior point) is accurate to ~1e-10 in ½‖u‖²: absolute 1e-7 on the smallest radii
    torch.testing.assert_close(quarter, plain / 4, rtol=1e-7, atol=1e-7 if p == 2 else 0)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("s", [1e-10, 1e-6, 1e6, 1e8])
def test_far_from_unit_scales_only_change_the_units(p, s):
    """Scales of 10⁻¹⁰ … 10⁸ on every feature: the radius divided by s, with a domain. Before the solvers worked in
    solver_units, ℓ2 gave ∞ (a flip exists) or up to 5× the distance, and ℓ1/ℓ∞ NaN (audit 30 F1)."""
    model, x = _model("identity", seed=3)
    box = {"lower": {"*": 0.0}, "upper": {"*": 4.0}}
    plain = exact_radius(model, x, p, threat_model=ThreatModel(**box))
    scaled, delta = exact_radius(model, x, p, return_perturbation=True, threat_model=ThreatModel(scale={"*": s}, **box))
    flagged = plain > 0
    assert int(flagged.sum()) >= 10 and bool(torch.isfinite(plain).all())
    torch.testing.assert_close(scaled, plain / s, rtol=1e-6, atol=0)
    assert bool((score64(model, x[flagged].double() + delta[flagged] * (1 + 1e-6)) <= 1e-6).all())


def test_solver_units_divide_every_scale_by_one_power_of_two_near_their_middle():
    scale = np.array([3e-7, 1e-6, 5e-6, 1e-5])
    unit = solver_units(scale)
    factor = scale / unit
    assert bool((factor == factor[0]).all()) and math.frexp(factor[0])[0] == 0.5  # exactly one power of two
    assert 0.1 < float(np.exp(np.log(unit).mean())) < 10
    assert bool((solver_units(np.ones(5)) == 1).all()) and solver_units(np.zeros(0)).shape == (0,)


@pytest.mark.parametrize("status", ["AlmostSolved", "AlmostPrimalInfeasible"])
def test_a_qp_solved_at_reduced_accuracy_gives_a_checked_radius_or_nan_never_inf(monkeypatch, status):
    """Clarabel's "AlmostPrimalInfeasible" is no proof that no flip exists: NaN with a warning, not ∞ (it said so for
    flips that exist, audit 30 F1). "AlmostSolved" keeps its point, moved to the boundary and checked like any other
    (as NaN, 5 of 51 radii of a normal audit were lost, review 30)."""
    import clarabel

    real = clarabel.DefaultSolver

    class Inexact:
        def __init__(self, *args):
            self.solver = real(*args)

        def solve(self):
            solution = self.solver.solve()
            return types.SimpleNamespace(status=status, x=solution.x)

    model, x = _model("identity", seed=3, n=12)
    solved = exact_radius(model, x, 2.0, threat_model=TM)
    monkeypatch.setattr(clarabel, "DefaultSolver", Inexact)
    flagged = score64(model, x) > 0
    assert int(flagged.sum()) >= 3 and bool(torch.isfinite(solved[flagged]).all())
    if status == "AlmostSolved":
        torch.testing.assert_close(exact_radius(model, x, 2.0, threat_model=TM), solved, rtol=0, atol=0)
        return
    with pytest.warns(RuntimeWarning, match="stopped early"):
        radii = exact_radius(model, x, 2.0, threat_model=TM)
    assert bool(radii[flagged].isnan().all()) and bool((radii[~flagged] == 0).all())


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("phi", ["identity", "standardize"])
def test_constraints_never_shorten_the_way_and_often_lengthen_it(phi, p):
    model, x = _model(phi, seed=3)
    free, _ = exact_radius(model, x, p, return_perturbation=True, threat_model=SAME_UNITS)
    constrained = exact_radius(model, x, p, threat_model=TM)
    flagged = free > 0
    assert bool(((constrained > 0) == flagged).all())
    f, c = free[flagged], constrained[flagged]
    assert bool((c >= f * (1 - 1e-7)).all())
    longer = c > f * 1.01
    assert int(longer.sum()) >= 5, c / f  # the constraints bind on several inputs
    assert bool(torch.isfinite(c).all())


def _with_dead_features(seed: int, dead: list[int]):
    """A model whose score does not depend on the features ``dead`` (their passthrough columns are 0)."""
    model, x = _model("shift", seed=seed)
    with torch.no_grad():
        for lin in model.convex.passthrough:
            lin.weight[:, dead] = 0.0
        model.balance -= model(x).median()  # re-centre: about half flagged again
    return model, x


@pytest.mark.parametrize("p", NORMS)
def test_freezing_every_feature_that_matters_is_unreachable(p):
    dead = [5, 6, 7]
    model, x = _with_dead_features(4, dead)
    frozen = ThreatModel(immutable=[i for i in range(D) if i not in dead])
    res = ExactRadiusSolver(model, p, threat_model=frozen).solve(x)
    flagged = score64(model, x) > 0
    assert int(flagged.sum()) >= 10
    assert bool(torch.isinf(res.radii[flagged]).all()) and bool((res.radii[~flagged] == 0).all())
    assert {res.status[i] for i in torch.nonzero(flagged).flatten().tolist()} == {"unreachable"}
    # the same model with one more feature free reaches the region (the test can fail)
    one_free = ThreatModel(immutable=[i for i in range(D) if i not in dead + [0]])
    assert bool(torch.isfinite(exact_radius(model, x, p, threat_model=one_free)[flagged]).any())


@pytest.mark.parametrize("p", NORMS)
def test_a_domain_or_directions_that_forbid_the_boundary_are_unreachable(p):
    model, x = _model("standardize", seed=5)
    r_inf = exact_radius(model, x, math.inf)
    rows = torch.nonzero(r_inf > 0).flatten()[:5].tolist()
    x64 = x.double().requires_grad_(True)
    (grad,) = torch.autograd.grad(copy.deepcopy(model).double()(x64).sum(), x64)
    for i in rows:
        xi = x[i : i + 1]

        def box(k: float, i: int = i) -> ThreatModel:  # x ± k·(the ℓ∞ distance), per feature
            r = float(r_inf[i])
            return ThreatModel(
                lower={j: float(x[i, j]) - k * r for j in range(D)}, upper={j: float(x[i, j]) + k * r for j in range(D)}
            )

        # the domain lies inside an ℓ∞ ball that does not reach {s ≤ 0}
        assert math.isinf(float(exact_radius(model, xi, p, threat_model=box(0.9))[0]))
        assert math.isfinite(float(exact_radius(model, xi, p, threat_model=box(1.5))[0]))
        # every allowed direction raises s to first order (s convex): never reaches {s ≤ 0}
        uphill = ThreatModel(
            increase_only=[j for j in range(D) if grad[i, j] > 0], decrease_only=[j for j in range(D) if grad[i, j] < 0]
        )
        assert math.isinf(float(exact_radius(model, xi, p, threat_model=uphill)[0]))
        downhill = ThreatModel(
            increase_only=[j for j in range(D) if grad[i, j] < 0], decrease_only=[j for j in range(D) if grad[i, j] > 0]
        )
        assert math.isfinite(float(exact_radius(model, xi, p, threat_model=downhill)[0]))


@pytest.mark.parametrize("p", NORMS)
def test_input_range_is_intersected_with_the_domain(p):
    model, x = _model("shift", seed=6)
    model.input_range = (1.0, 3.0)
    try:
        x = x.clamp(1.0, 3.0)
        tm_only = exact_radius(model, x, p, threat_model=TM)
        both, delta = exact_radius(model, x, p, return_perturbation=True, threat_model=TM, respect_input_range=True)
    finally:
        model.input_range = None
    ok = torch.isfinite(both) & (both > 0)
    assert int(ok.sum()) >= 5
    assert bool((both >= tm_only * (1 - 1e-7)).all()) and bool((both > tm_only * 1.01).any())
    adv = x.double() + delta
    assert float(adv.min()) >= 1.0 and float(adv.max()) <= 3.0
    assert bool(torch.isfinite(move_sizes(x[ok], adv[ok], TM.resolve(None, D), p)).all())


def test_log1p_hinges_and_bad_threat_models_are_refused():
    model, x = _model("shift")
    for kind in ("log1p", "hinges"):
        bent = build_model(
            {
                "kind": "feature-convex",
                "input_shape": [D],
                "feature_map": [{"kind": kind}],
                "convex": {"kind": "icnn", "widths": [8]},
            }
        ).eval()
        for tm in (None, TM, TM.resolve(None, D)):
            with pytest.raises(UnsupportedModelError, match=f"{kind}.*is not affine"):
                exact_radius(bent, x, 2, threat_model=tm)
    with pytest.raises(ConfigError, match=r"features named \('hp'\), but these inputs have no column names"):
        exact_radius(model, x, 2, threat_model=ThreatModel(immutable=["hp"]))
    with pytest.raises(ConfigError, match="for 3 features"):
        ExactRadiusSolver(model, 1, threat_model=ThreatModel().resolve(None, 3))


def test_perturbations_at_the_domain_bound_stay_inside_it_in_float64():
    """u at its box bound (U − x) / unit gives x + unit·u > U after rounding for some x (here 0.7%
    of uniform draws with scale 0.3 or 1.1): the returned δ is nudged back inside by a few ulps."""
    model, _ = _model("shift")
    tm = ThreatModel(scale={"*": 0.3, "1": 1.1}, upper={"*": 3.0}, lower={"*": -1.0})
    solver = ExactRadiusSolver(model, math.inf, threat_model=tm)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(500, D, generator=gen, dtype=torch.float64) * 4 - 0.5).numpy()
    low, high = solver._boxes(x)
    scale = solver.unit  # (the solver's variable is u = δ / unit, unit = tm's scale / a power of two)
    assert np.unique(tm.resolve(None, D).scale.numpy() / scale).tolist() == [0.25]  # (2 ** round(mean log2 scale))
    assert int(((x + high * scale > 3.0) & (x <= 3.0)).sum()) > 5  # naive δ = unit·u leaves the domain
    for u in (high, low):
        delta = np.stack([solver._raw_move(x[i], u[i], (low[i], high[i])) for i in range(len(x))])
        y = x + delta
        assert bool(((y <= 3.0) | (x > 3.0)).all()) and bool(((y >= -1.0) | (x < -1.0)).all())
        assert np.allclose(delta, u * scale, rtol=1e-12, atol=1e-15)  # a few ulps, no more
