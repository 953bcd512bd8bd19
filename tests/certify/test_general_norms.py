"""Certified radii in ℓp norms other than 1, 2 and ∞ (p = 1.5 and 3), for every certifier that accepts them.

Promises checked on typical and near-boundary inputs (``near_boundary``: float64 scores 1e-7…1e-2):

- PGD in the same ℓp norm at 0.999·r (``pgd_attack`` supports any p ≥ 1) never flips the float32 decision
  (never makes the float64 score ≤ 0 for feature-convex with the guard off, which certifies the exact function);
- each radius is at most an independent float64 value computed in the test: the tangent-plane radius
  s / ‖∇s‖_{p*} of a feature-convex model with φ = shift (exact for convex g), the exact distance
  s / ‖w‖_{p*} of an affine net (IBP is exact there), s / (L₂ · c_p) for an orthogonal net (with r_p the
  closed-form conversion of r₂), and for the ℓ∞-distance net r_p = r_∞ (‖δ‖∞ ≤ ‖δ‖_p); for ReLU nets
  without a closed form, the float64 distance to every counterexample a wider attack finds (bisected to
  the boundary along the segment).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import asymcert
from asymcert.certify.attacks import decisions, pgd_attack
from asymcert.models import build_model
from tests.certify.test_certifier_boundary import _linear_score_net, _linf_net, _orthogonal_net, _spectral_product
from tests.conftest import bisect_segments, near_boundary, small_feature_convex

P_VALUES = (1.5, 3.0)
NORMS = (1.5, 3.0, 2.0)
EPS64 = torch.finfo(torch.float64).eps


def _lp(v: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1).double(), ord=p, dim=1)


def _dual(p: float) -> float:
    return p / (p - 1)


def _pgd(model, x, eps, p, predicted=None, seed=0):
    """PGD in ℓp at eps (N,), 40 steps, 2 restarts, checked to stay inside the ball."""
    gen = torch.Generator().manual_seed(seed)
    adv = pgd_attack(model, x, eps, p, steps=40, restarts=2, generator=gen, targeted_decision=predicted)
    assert bool((_lp(adv.double() - x.double(), p) <= eps.double() * (1 + 1e-9)).all())
    return adv


def _assert_no_flip(model, x, r, predicted, p):
    """PGD at 0.999·r keeps every float32 decision."""
    adv = _pgd(model, x, (r * 0.999).to(x.dtype), p, predicted)
    flips = decisions(model, adv) != predicted
    assert not bool(flips.any()), f"{int(flips.sum())} flips inside the certified ℓ{p} radius"


def _inputs(model, x):
    """(xs, near): x followed by near-boundary inputs bisected from it, and a mask of the latter."""
    near = near_boundary(model, x)
    xs = torch.cat([x, near])
    return xs, torch.arange(len(xs)) >= len(x)


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("kind", ["icnn", "conv"])
def test_feature_convex_radii_in_other_norms(kind, guard):
    """Feature-convex (φ = shift), p = 1.5 and 3: r ≤ the float64 tangent radius s/‖∇s‖_{p*} (within 1e-3 of it
    away from the boundary), and PGD at 0.999·r flips neither the own decision (guard) nor the float64 score."""
    model = small_feature_convex(kind, seed=3)
    xs, near = _inputs(model, torch.rand(200, 1, 6, 6, generator=torch.Generator().manual_seed(1)))
    m64 = copy.deepcopy(model).double()
    x64 = xs.double().requires_grad_(True)
    f = m64.features(x64)
    s = m64.score_from_features(f)
    grad_f, grad = torch.autograd.grad(s.sum(), [f, x64])
    s = s.detach()
    mag = (grad_f * f.detach()).abs().flatten(1).sum(1) + s.abs() + float(m64.balance.abs())
    cert = asymcert.certify(model, xs, norms=NORMS, guard=guard)
    for p in P_VALUES:
        r = cert.radii[p]
        den = _lp(grad, _dual(p))
        assert bool((r <= (s + 8 * EPS64 * mag).clamp_min(0) / den * (1 + 1e-9)).all()), (kind, guard, p)
        away = s > 0.05 * mag  # there the guard (a few eps32 of the terms' magnitudes) costs < 1e-3 of r
        assert int(away.sum()) > 5 and bool((r[away] >= s[away] / den[away] * (1 - 1e-3)).all()), (kind, guard, p)
        rows = cert.sensitive & (r > 0)
        assert int((rows & near).sum()) >= 10
        if guard:
            _assert_no_flip(model, xs[rows], r[rows], cert.predicted[rows], p)
        else:  # the exact function: attack the float64 copy
            adv = _pgd(m64, xs[rows].double(), r[rows] * 0.999, p)
            with torch.no_grad():
                assert int((m64(adv) <= 0).sum()) == 0, f"ℓ{p}: float64 score ≤ 0 inside the radius"


@pytest.mark.parametrize("precision", ["float64", "model"])
def test_ibp_on_an_affine_net_matches_the_exact_distance_in_other_norms(precision):
    """IBP on Shift → Linear(d, 1), p = 1.5 and 3: r ≤ s64/‖w‖_{p*} (the exact distance), within 1e-3 of it
    away from the boundary, the exact worst-case move at 0.999·r and PGD keep the decision."""
    d = 12
    net = _linear_score_net(d, 0, None)
    net64 = copy.deepcopy(net).double()
    gen = torch.Generator().manual_seed(2)
    xs, near = _inputs(net, torch.rand(200, d, generator=gen) * 3)
    with torch.no_grad():
        s64 = net64(xs.double())[:, 0]
    w = net[-1].weight.detach().double()[0]
    cert = asymcert.certify(net, xs, norms=NORMS, method="ibp", precision=precision)
    for p in P_VALUES:
        q = _dual(p)
        r = cert.radii[p]
        exact = s64.clamp_min(0) / w.norm(p=q)
        assert bool((r <= exact).all()), (precision, p)
        away = s64 > 1e-1
        assert bool((r[away] >= exact[away] * (1 - 1e-3)).all()), (precision, p)
        rows = r > 0
        assert int((rows & near).sum()) >= 10
        # the minimiser of wᵀδ over the unit ℓp ball: δ_i = −sign(w_i)|w_i|^{q−1} / ‖w‖_q^{q−1}
        worst = -torch.sign(w) * w.abs() ** (q - 1) / w.norm(p=q) ** (q - 1)
        assert abs(float(worst.norm(p=p)) - 1) < 1e-12
        xa = (xs[rows].double() + 0.999 * r[rows][:, None] * worst).float()
        inside = _lp(xa - xs[rows], p) < r[rows]
        assert int(inside.sum()) > 50
        assert bool((decisions(net, xa)[inside] == cert.predicted[rows][inside]).all())
        _assert_no_flip(net, xs[rows], r[rows], cert.predicted[rows], p)


def _relu_mlp(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"kind": "relu-ibp", "input_shape": [6], "widths": [16, 16], "input_range": [0, 1]})
    model.fit_input(torch.rand(32, 6))
    model.eval()
    with torch.no_grad():
        model.net[-1].bias -= model(torch.rand(256, 6)).median()
    return model


def _counterexample_distances(model, x, r, p):
    """ℓp distances (k,) float64 from x to boundary points of the float64 copy that PGD at 20·r finds (bisected
    along x → x_adv); the rows where it finds none are left out."""
    m64 = copy.deepcopy(model).double()
    x64 = x.double()
    adv = _pgd(m64, x64, r * 20, p, seed=5)
    with torch.no_grad():
        hit = m64(adv).reshape(-1) <= 0
    a, b = x64[hit], adv[hit]
    _, hi = bisect_segments(m64, a, b, torch.zeros(len(a), dtype=torch.float64))
    return _lp(hi[:, None] * (b - a), p), hit


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_bound_propagation_radii_in_other_norms_on_a_relu_net(method):
    """relu-ibp MLP [16, 16] whose ReLUs switch, p = 1.5 and 3: PGD at 0.999·r never flips the decision, and r is
    below the float64 distance to every counterexample a 20·r attack finds."""
    model = _relu_mlp()
    xs, near = _inputs(model, torch.rand(200, 6, generator=torch.Generator().manual_seed(1)))
    cert = asymcert.certify(model, xs, norms=NORMS, method=method)
    for p in P_VALUES:
        r = cert.radii[p]
        rows = r > 0
        assert int(rows.sum()) >= 40 and int((rows & near).sum()) >= 10, (method, p)
        _assert_no_flip(model, xs[rows], r[rows], cert.predicted[rows], p)
        flagged = rows & (cert.predicted == 1)
        dist, hit = _counterexample_distances(model, xs[flagged], r[flagged], p)
        assert int(hit.sum()) >= 10  # the wider attack has teeth
        assert bool((r[flagged][hit] <= dist).all()), (method, p)


def test_orthogonal_radii_in_other_norms_are_the_l2_radius_converted():
    """Orthogonal MLP (d = 16): r_1.5 = r₂ and r₃ = r₂ / d^{1/6} (up to rounding down), both ≤ s64/(L₂·c_p), and
    PGD at 0.999·r in ℓ1.5 and ℓ3 keeps the decision."""
    d = 16
    model = _orthogonal_net(7, d)
    xs, near = _inputs(model, torch.randn(200, d, generator=torch.Generator().manual_seed(2)) * 2)
    with torch.no_grad():
        s64 = copy.deepcopy(model).double()(xs.double()).reshape(-1)
    lip = _spectral_product(model)
    cert = asymcert.certify(model, xs, norms=NORMS)
    r2 = cert.radii[2.0]
    for p in P_VALUES:
        c_p = 1.0 if p <= 2 else d ** (0.5 - 1 / p)
        r = cert.radii[p]
        assert bool((r <= s64.clamp_min(0) / (lip * c_p)).all()), p
        assert bool((r <= r2 / c_p).all()) and torch.allclose(r, r2 / c_p, rtol=1e-9, atol=0), p
        rows = r > 0
        assert int((rows & near).sum()) >= 10
        _assert_no_flip(model, xs[rows], r[rows], cert.predicted[rows], p)


def test_linf_dist_radii_in_other_norms_are_the_linf_radius():
    """ℓ∞-distance net (binary): r_1.5 = r₃ = r_∞ exactly (the ℓp ball lies in the ℓ∞ ball of the same radius),
    and PGD at 0.999·r in ℓ1.5 and ℓ3 keeps the decision."""
    model = _linf_net(0, None, True, 8)
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(3))
    xs, near = _inputs(model, x)
    cert = asymcert.certify(model, xs, norms=(*P_VALUES, math.inf))
    for p in P_VALUES:
        r = cert.radii[p]
        assert torch.equal(r, cert.radii[math.inf])
        rows = r > 0
        assert int((rows & near).sum()) >= 10
        _assert_no_flip(model, xs[rows], r[rows], cert.predicted[rows], p)
