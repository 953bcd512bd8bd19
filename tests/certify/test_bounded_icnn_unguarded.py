"""The bounded-ICNN path (one hidden layer, φ = shift) with ``guard=False``: radii for the exact function.

With the guard off the certificate is about the exact-arithmetic score (not the float32 model's decision), so the
checks run on a float64 copy. On typical inputs and on inputs within 1e-7…1e-2 of the boundary, for
``precision="auto"`` (which is the bounded path for this model) and ``"bounded"``:

- every radius is at most the independent float64 tangent radius s⁺/‖∇ₓs‖_{p*} (s raised by its own float64
  rounding, 8·eps64 times the magnitude of its terms; exact for convex g and φ = shift, which is 1-Lipschitz in
  every norm), computed in the test by autograd, and within 1e-4 of it away from the boundary;
- PGD on the float64 copy at 0.999·r, the tangent plane's worst direction and random sphere points at 0.999·r
  never make the float64 score ≤ 0.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import asymcert
from asymcert.certify.attacks import pgd_attack
from asymcert.certify.bounded_icnn import supports_bounded_icnn
from tests.certify.test_bounded_icnn import icnn_model
from tests.certify.test_certifier_boundary import _sphere, _worst_direction
from tests.conftest import near_boundary

NORMS = (1.0, 2.0, math.inf)
DUAL = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}
SHAPE = (1, 4, 5)
EPS64 = torch.finfo(torch.float64).eps


def _lp(v: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(v.flatten(1).double(), ord=p, dim=1)


@pytest.mark.parametrize("precision", ["auto", "bounded"])
@pytest.mark.parametrize("seed", [0, 3])
def test_unguarded_bounded_radii_hold_for_the_exact_function(seed, precision):
    """guard=False on the bounded-ICNN path: r ≤ the test's float64 tangent radius (and close to it away from the
    boundary), and no attack inside 0.999·r makes the float64 score ≤ 0."""
    model = icnn_model(seed)
    assert supports_bounded_icnn(model, torch.device("cpu"))
    x = torch.rand(200, *SHAPE, generator=torch.Generator().manual_seed(seed + 1))
    xs = torch.cat([x, near_boundary(model, x)])
    near = torch.arange(len(xs)) >= len(x)
    m64 = copy.deepcopy(model).double()
    x64 = xs.double().requires_grad_(True)
    f = m64.features(x64)
    s = m64.score_from_features(f)
    grad_f, grad = torch.autograd.grad(s.sum(), [f, x64])
    s, grad = s.detach(), grad.flatten(1)
    mag = (grad_f * f.detach()).abs().flatten(1).sum(1) + s.abs() + float(m64.balance.abs())
    cert = asymcert.certify(model, xs, norms=NORMS, precision=precision, guard=False)
    gen = torch.Generator().manual_seed(0)
    d = math.prod(SHAPE)
    for p in NORMS:
        r = cert.radii[p]
        den = _lp(grad, DUAL[p])
        assert bool((r <= (s + 8 * EPS64 * mag).clamp_min(0) / den * (1 + 1e-9)).all()), (precision, p)
        away = s > 0.05 * mag
        assert int(away.sum()) > 10 and bool((r[away] >= s[away] / den[away] * (1 - 1e-4)).all()), (precision, p)
        rows = r > 0
        assert int((rows & near).sum()) >= 20 and float(s[rows].min()) < 1e-5  # really near the boundary
        xr, rr = xs[rows].double(), r[rows]
        points = [pgd_attack(m64, xr, rr * 0.999, p, steps=60, restarts=2, generator=gen)]
        for direction in [_worst_direction(grad[rows], p)] + [_sphere(len(xr), d, p, gen) for _ in range(4)]:
            points.append((xr.flatten(1) + 0.999 * rr[:, None] * direction).reshape(xr.shape))
        with torch.no_grad():
            for pt in points:
                assert bool((_lp(pt - xr, p) < rr).all())
                assert int((m64(pt) <= 0).sum()) == 0, f"ℓ{p}: float64 score ≤ 0 inside the unguarded radius"
        # the worst direction has teeth: at twice the reference radius most scores drop below 0
        far = xr.flatten(1) + 2 * (s[rows] / den[rows])[:, None] * _worst_direction(grad[rows], p)
        with torch.no_grad():
            assert float((m64(far.reshape(xr.shape)) <= 0).double().mean()) > 0.5
