"""Cutting planes of g: brackets of the exact radius, and the multi-cut certificate (sound, ≥ closed form)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import asymcert
from asymcert.certify import cutting_planes
from asymcert.certify.attacks import decision_flips, pgd_attack
from asymcert.certify.cutting_planes import bracket_radius, exact_radius_by_cuts, multi_cut_radii
from asymcert.certify.exact import UnsupportedModelError, exact_radius
from asymcert.certify.feature_convex import certify_feature_convex, score_and_feature_gradient
from asymcert.certify.modes import UnsoundOptionError
from asymcert.certify.tangent_cuts import TangentCuts, combine, feature_space_radii, halfspace_box_distance
from asymcert.certify.threat_attack import threat_attack
from asymcert.errors import ConfigError
from asymcert.models import build_model
from asymcert.threat import ThreatModel
from tests.conftest import near_boundary, small_feature_convex

NORMS = [1.0, 2.0, math.inf]
TOL = 1e-3
# relative accuracy of exact_radius: vertex solutions for ℓ1/ℓ∞, an interior-point method for ℓ2 (~1e-7)
ACCURACY = {1.0: 1e-8, 2.0: 1e-6, math.inf: 1e-8}


def _icnn(widths: list[int], bn: bool, seed: int = 0, phi: str = "shift"):
    """A small ICNN on 1×6×6 (1 or 2 hidden layers, with or without batch norm), about half flagged."""
    torch.manual_seed(seed)
    m = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [1, 6, 6],
            "input_range": [0.0, 1.0],
            "feature_map": [{"kind": phi}],
            "convex": {"kind": "icnn", "widths": widths, "batch_norm": bn},
        }
    )
    x = torch.rand(48, 1, 6, 6)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "weight" in name and p.dim() > 1 and "hidden" in name:
                p.mul_(20.0)
        m.train()
        m.feature_map.fit(x)
        for _ in range(3):
            m(x)
        m.eval()
        m.set_balance(-float(m(x).median()))
    return m, x


MODELS = {
    "icnn1": lambda: _icnn([16], False),
    "icnn2": lambda: _icnn([16, 8], False),
    "icnn2-bn": lambda: _icnn([16, 8], True),
    "conv": lambda: (small_feature_convex("conv", seed=3), torch.rand(32, 1, 6, 6)),
}


def _s64(model, x):
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("p", NORMS)
def test_bracket_holds_the_exact_radius_and_meets(name, p):
    model, x = MODELS[name]()
    res = bracket_radius(model, x, p, tol=TOL)
    exact = exact_radius(model, x, p)
    f = exact > 0
    acc = ACCURACY[p]
    assert int(f.sum()) > 5
    assert bool((res.lower[f] <= exact[f] * (1 + acc)).all())
    # exact ℓ2 radii below ~1e-6 are Clarabel's absolute tolerance (the checked upper bound can be far smaller)
    assert bool((res.upper[f] >= exact[f] * (1 - acc) - (1e-5 if p == 2 else 0.0)).all())
    assert all(s == "converged" for s, ff in zip(res.status, f.tolist(), strict=True) if ff)
    assert bool((res.upper[f] <= (1 + TOL) * res.lower[f]).all())
    # the upper bound's move is checked (s ≤ 0 in the library's own float64 pass); it lies on the boundary, so
    # evaluated in another batch its score can differ in the last bits (measured: +2.8e-17 where the library's was 0)
    assert bool((_s64(model, x[f] + res.delta[f]) <= 1e-12).all())
    assert bool(torch.isnan(res.exact(TOL)).sum() == 0)
    assert bool((res.lower[~f] == 0).all() and (res.upper[~f] == 0).all())


@pytest.mark.parametrize("p", [1.0, math.inf])
def test_forgetting_idle_cut_rows_keeps_every_bracket(monkeypatch, p):
    """With rows forgotten after one idle solve beyond 2 kept, the LP loses cuts every round; the
    brackets must still hold the exact radius and meet (λ is mapped back to the right cuts)."""
    monkeypatch.setattr(cutting_planes, "IDLE_SOLVES", 1)
    monkeypatch.setattr(cutting_planes, "KEEP_ROWS", 2)
    dropped = []
    forget = cutting_planes._HighsCuts._forget_idle_rows

    def counting(self, active):
        before = len(self.cut_of_row)
        forget(self, active)
        dropped.append(before - len(self.cut_of_row))

    monkeypatch.setattr(cutting_planes._HighsCuts, "_forget_idle_rows", counting)
    model, x = MODELS["icnn2"]()
    res = bracket_radius(model, x, p, tol=TOL)
    exact = exact_radius(model, x, p)
    f = exact > 0
    assert sum(dropped) > 50  # rows were forgotten
    assert all(s == "converged" for s, ff in zip(res.status, f.tolist(), strict=True) if ff)
    assert bool((res.lower[f] <= exact[f] * (1 + ACCURACY[p])).all())
    assert bool((res.upper[f] >= exact[f] * (1 - ACCURACY[p])).all())


@pytest.mark.parametrize("name", ["icnn2", "icnn2-bn", "conv"])
@pytest.mark.parametrize("p", NORMS)
def test_multi_cut_is_between_closed_form_and_exact_and_pgd_cannot_flip(name, p):
    model, x = MODELS[name]()
    # (scores up to 0.1: the random conv net's float guard is 8·eps·A with A near 10³, so scores below 10⁻³ get 0)
    for xs in (x, near_boundary(model, x, high=0.1)):
        base = certify_feature_convex(model, xs, (p,))
        r = multi_cut_radii(model, xs, (p,), cuts=4)[p]
        f = base.sensitive
        assert int(f.sum()) > 3
        assert bool((r >= base.radii[p]).all())
        assert bool((r[f] <= exact_radius(model, xs[f], p)).all())
        f &= r > 0  # a radius of 0 promises nothing (near the boundary: within rounding)
        assert int(f.sum()) > 3
        eps = (r[f] * 0.999).float()
        adv = pgd_attack(model, xs[f], eps, p, steps=100, restarts=2, generator=torch.Generator().manual_seed(0))
        assert not bool(decision_flips(model, xs[f], adv).any())


def test_multi_cut_adds_radius_on_a_conv_net():
    model, x = MODELS["conv"]()
    base = certify_feature_convex(model, x, tuple(NORMS))
    more = certify_feature_convex(model, x, tuple(NORMS), cuts=4)
    f = base.sensitive
    for p in NORMS:
        assert float((more.radii[p][f] / base.radii[p][f]).median()) > 1.01


def _cuts(model, x, k: int = 3) -> tuple[TangentCuts, torch.Tensor, torch.Tensor]:
    """k tangents per input at random feature points (margins without rounding terms) and z0."""
    m64 = copy.deepcopy(model).double()
    z0 = m64.features(x.double()).detach()
    zs = [z0] + [z0 + 0.3 * torch.randn_like(z0) for _ in range(k - 1)]
    ms, ws = [], []
    for z in zs:
        with torch.enable_grad():
            f = z.clone().requires_grad_(True)
            s = m64.score_from_features(f)
            (w,) = torch.autograd.grad(s.sum(), f)
        ms.append(s.detach() + ((z0 - z) * w).flatten(1).sum(1))
        ws.append(w.flatten(1))
    return TangentCuts(torch.stack(ms, 1), torch.stack(ws, 1)), z0.flatten(1), torch.stack(ws, 1)


def test_lambda_bound_matches_an_independent_float64_recomputation():
    model, x = MODELS["icnn2"]()
    cuts, _, _ = _cuts(model, x)
    lam = torch.rand(x.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for p, q in ((1.0, math.inf), (2.0, 2.0), (math.inf, 1.0)):
        r = feature_space_radii(cuts, lam, p, 1.0, 1e-9)
        ln = lam / lam.sum(1, keepdim=True)
        m = (ln * cuts.margins).sum(1)
        a = (ln[:, :, None] * cuts.normals).sum(1)
        ref = torch.where(m > 0, m / torch.linalg.vector_norm(a, ord=q, dim=1), torch.zeros_like(m))
        assert bool((r <= ref).all())
        assert torch.allclose(r, ref, rtol=1e-8, atol=0)
        assert bool((r > 0).any())


def test_box_distance_matches_the_lp_and_stays_below_it():
    """The greedy/water-filling closed forms against a brute-force solve (scipy) on random boxes."""
    from scipy.optimize import linprog, minimize

    g = torch.Generator().manual_seed(0)
    c = torch.randn(20, 6, dtype=torch.float64, generator=g)
    low = -torch.rand(20, 6, dtype=torch.float64, generator=g)
    high = torch.rand(20, 6, dtype=torch.float64, generator=g)
    m = torch.rand(20, dtype=torch.float64, generator=g) * 0.5
    for p in NORMS:
        t = halfspace_box_distance(c, m, p, low, high)
        for i in range(20):
            ci, lo, hi, mi = c[i].numpy(), low[i].numpy(), high[i].numpy(), float(m[i])
            if p == 2:
                cons = {"type": "ineq", "fun": lambda u, ci=ci, mi=mi: ci @ u - mi}
                res = minimize(lambda u: u @ u, hi * 0, bounds=list(zip(lo, hi, strict=True)), constraints=[cons])
                ref = math.sqrt(res.fun) if res.success and ci @ res.x >= mi - 1e-9 else math.inf
            else:
                cost, a_ub, b_ub, bounds = _lp(ci, lo, hi, mi, p)
                res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
                ref = res.fun if res.status == 0 else math.inf
            if math.isinf(ref):
                assert math.isinf(float(t[i])) or float(t[i]) <= 1e9
            else:
                assert float(t[i]) <= ref * (1 + 1e-6) + 1e-9 and float(t[i]) >= ref * (1 - 1e-4) - 1e-9


def _lp(c, lo, hi, m, p):
    import numpy as np

    d = c.size
    if p == 1:
        return (np.ones(2 * d), -np.hstack([c, -c])[None], [-m], list(zip([0] * 2 * d, np.concatenate([hi, -lo]))))
    a = np.vstack(
        [np.hstack([-c, [0]]), np.hstack([np.eye(d), -np.ones((d, 1))]), np.hstack([-np.eye(d), -np.ones((d, 1))])]
    )
    return (np.r_[np.zeros(d), 1.0], a, np.r_[-m, np.zeros(2 * d)], [*zip(lo, hi), (0, None)])


def test_mutations_are_caught():
    """A λ with a negative entry is refused; evaluated anyway, it (or dropping the tangent's slope term)
    claims radii above the exact ones — which the ≤ exact assertion of the tests above would catch."""
    model, x = MODELS["icnn2"]()
    cuts, _, _ = _cuts(model, x)
    bad = torch.tensor([[1.0, -0.9, 0.0]], dtype=torch.float64).expand(x.shape[0], 3)
    with pytest.raises(ValueError):
        combine(cuts, bad)
    s, _ = score_and_feature_gradient(copy.deepcopy(model).double(), x.double())
    exact = exact_radius(model, x, 2.0)
    f = exact > 0
    m = (bad * cuts.margins).sum(1)
    a = (bad[:, :, None] * cuts.normals).sum(1)
    mutant = m / torch.linalg.vector_norm(a, dim=1)
    assert bool((mutant[f] > exact[f]).any())
    # dropping ∇g(z_k)ᵀ(z0 − z_k): the score at z_k in place of the tangent's value at z0
    ms = torch.stack([s] + [cuts.margins[:, k] * 0 + s.abs().max() for k in (1, 2)], 1)
    dropped = feature_space_radii(TangentCuts(ms, cuts.normals), torch.ones_like(ms), 2.0, 1.0, 1e-9)
    assert bool((dropped[f] > exact[f]).any())


TM = ThreatModel(
    scale={"0": 2.0, "3": 0.25, "*": 0.5},
    immutable=[1],
    increase_only=[2, 5],
    decrease_only=[3],
    lower={"*": 0.0},
    upper={"4": 0.9, "6": 0.8},
)


@pytest.mark.parametrize("p", NORMS)
def test_bracket_under_a_threat_model_and_the_input_range(p):
    model, x = MODELS["icnn2"]()
    tm = TM.resolve(None, 36)
    for kw in ({"threat_model": tm}, {"respect_input_range": True}):
        res = bracket_radius(model, x, p, tol=TOL, **kw)
        exact = exact_radius(model, x, p, **kw)
        f = (exact > 0) & torch.isfinite(exact)
        assert int(f.sum()) > 5
        assert bool((res.lower[f] <= exact[f] * (1 + ACCURACY[p])).all())
        assert bool((res.upper[f] >= exact[f] * (1 - ACCURACY[p]) - (1e-5 if p == 2 else 0.0)).all())
        assert bool((res.upper[f] <= (1 + TOL) * res.lower[f]).all())
        assert bool((_s64(model, x[f] + res.delta[f]) <= 0).all())
        xa = x[f].double() + res.delta[f]
        assert bool((xa >= 0).all() and (xa <= 1).all()) or "threat_model" in kw
    res = bracket_radius(model, x, p, tol=TOL, threat_model=tm)
    g = (res.lower > 0) & torch.isfinite(res.lower)
    adv = threat_attack(
        model, x[g], (res.lower[g] * 0.999).float(), p, tm, steps=50, generator=torch.Generator().manual_seed(0)
    )
    assert not bool(decision_flips(model, x[g], adv).any())


def test_cuts_zero_and_one_are_todays_certificate_exactly():
    model, x = MODELS["icnn2"]()
    today = certify_feature_convex(model, x, tuple(NORMS))
    for k in (0, 1):
        c = certify_feature_convex(model, x, tuple(NORMS), cuts=k)
        assert all(torch.equal(c.radii[p], today.radii[p]) for p in NORMS)
        assert torch.equal(c.predicted, today.predicted)


def test_non_affine_feature_map_is_refused_by_name():
    model, x = _icnn([8], False, phi="shift")
    model2 = small_feature_convex("icnn", feature_map=[{"kind": "log1p"}, {"kind": "shift"}])
    with pytest.raises(UnsupportedModelError, match="log1p"):
        bracket_radius(model2, torch.rand(4, 1, 6, 6), 2.0)
    assert bracket_radius(model, x[:4], 2.0).lower.shape == (4,)


@pytest.mark.parametrize("p", NORMS)
def test_multi_cut_with_a_non_affine_feature_map_holds_against_pgd(p):
    """Feature-space cuts need only a Lipschitz φ (here log1p then shift, divided by Lip_p(φ))."""
    model = small_feature_convex("conv", feature_map=[{"kind": "log1p"}, {"kind": "shift"}], seed=1)
    x = torch.rand(48, 1, 6, 6)
    base = certify_feature_convex(model, x, (p,))
    r = multi_cut_radii(model, x, (p,), cuts=4)[p]
    f = base.sensitive
    assert int(f.sum()) > 5 and bool((r >= base.radii[p]).all())
    adv = pgd_attack(
        model, x[f], (r[f] * 0.999).float(), p, steps=100, restarts=2, generator=torch.Generator().manual_seed(0)
    )
    assert not bool(decision_flips(model, x[f], adv).any())


def test_exact_radius_by_cuts_is_nan_only_where_the_bracket_did_not_meet():
    model, x = MODELS["icnn2"]()
    exact = exact_radius(model, x, math.inf)
    radii, delta = exact_radius_by_cuts(model, x, math.inf)
    assert bool((_s64(model, x[radii > 0] + delta[radii > 0]) <= 0).all())
    assert torch.allclose(radii, exact, rtol=TOL, atol=0)
    with pytest.warns(RuntimeWarning):
        few, _ = exact_radius_by_cuts(model, x, 1.0, max_cuts=1)
    assert bool(torch.isnan(few).any()) and bool(
        (few[~torch.isnan(few)] >= exact_radius(model, x, 1.0)[~torch.isnan(few)] * (1 - 1e-8)).all()
    )


def test_tangent_margins_subtract_the_score_error_and_the_dot_products_rounding():
    """Each cut's margin is at most ŝ_k − E_k + ŵ_kᵀ(z0 − z_k) − (its rounding allowance): dropping the
    error term or the allowance (a mutation) makes this fail."""
    from asymcert.certify.tangent_cuts import GRAD_REL_ERROR, tangent_margins

    g = torch.Generator().manual_seed(0)
    z0, zk, w = (torch.randn(16, 50, dtype=torch.float64, generator=g) for _ in range(3))
    sk, err = torch.randn(16, dtype=torch.float64, generator=g), torch.rand(16, dtype=torch.float64, generator=g)
    m = tangent_margins(z0, zk, sk, w, err)
    plain = sk - err + ((z0 - zk) * w).sum(1)
    allowance = GRAD_REL_ERROR * (w.abs() * (z0 - zk).abs()).sum(1)
    assert bool((m <= plain - allowance).all())
    assert bool((m >= plain - 2 * allowance).all())  # and not more than needed


def test_the_cuts_option_through_certify_and_its_refusals():
    model = small_feature_convex("icnn", seed=3)
    x = torch.rand(30, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    plain = asymcert.certify(model, x)
    more = asymcert.certify(model, x, cuts=4)
    for p in plain.radii:
        assert torch.all(more.radius(p) >= plain.radius(p)) and bool((more.radius(p) > plain.radius(p)).any())
    for bad in (-1, 2.5, True):
        with pytest.raises(UnsoundOptionError, match="cuts"):
            asymcert.certify(model, x, cuts=bad)
    tm = ThreatModel.from_dict({"scale": {"*": 2.0}})
    with pytest.raises(ConfigError, match="threat model"):
        asymcert.certify(model, x, threat_model=tm, cuts=4)
    assert torch.equal(
        asymcert.certify(model, x, threat_model=tm, cuts=1).radius(2),
        asymcert.certify(model, x, threat_model=tm).radius(2),
    )


def _flagged_icnn():
    model, x = _icnn([8], bn=False)
    return model, x[_s64(model, x) > 0][:2]


def test_an_empty_batch_gives_empty_results():
    """N = 0 returns empty results, as exact_radius and the mixed-integer solvers do (it crashed in a reshape:
    audit 33 F4)."""
    model, _ = _flagged_icnn()
    empty = torch.zeros(0, 1, 6, 6)
    for p in (1.0, 2.0, math.inf):
        res = bracket_radius(model, empty, p)
        assert res.lower.shape == res.upper.shape == (0,) and res.delta.shape == (0, 1, 6, 6) and res.status == []
        radii, delta = exact_radius_by_cuts(model, empty, p)
        assert radii.shape == (0,) and delta.shape == (0, 1, 6, 6)


@pytest.mark.parametrize("limit", [0, -1.0, float("nan"), True])
def test_a_time_limit_that_is_not_a_positive_number_is_refused(limit):
    """One ConfigError, as every exact solver gives (not status "time limit" for 0 or −1, nor no limit for NaN:
    audit 33 F5)."""
    model, x = _flagged_icnn()
    with pytest.raises(ConfigError, match="time_limit must be a positive number"):
        bracket_radius(model, x, math.inf, time_limit=limit)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_nothing_movable_is_unreachable_in_every_norm(p):
    """An all-immutable threat model: ∞ with status "unreachable" in ℓ1 too (it ran every round and said
    "max cuts" with [0, ∞]: audit 33 F6)."""
    model, x = _flagged_icnn()
    tm = ThreatModel(immutable=["*"]).resolve(None, 36)
    res = bracket_radius(model, x, p, threat_model=tm)
    assert res.status == ["unreachable"] * len(x)
    assert bool(torch.isinf(res.lower).all() and torch.isinf(res.upper).all())
    assert int(res.iterations.sum()) == 0
