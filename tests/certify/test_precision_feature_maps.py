"""Feature-convex radii with ``precision`` "model" and "float64", the guard on and off, for NON-affine feature maps
(log1p, hinges, pair-min, group-min), on inputs within 1e-7…1e-2 of the boundary and on typical ones.

Promises checked (a radius of 0 promises nothing, so only positive radii are attacked):

- PGD on a float64 copy at 0.999·r and random points of the ℓp sphere of radius 0.999·r never make the float64 score
  ≤ 0 (the exact function's promise, guard on or off);
- with the guard on, PGD on the float32 model at 0.999·r never flips its own decision;
- (float64 recomputation) every radius is below the float64 distance from x to the boundary point that a far attack
  (30·r; 80·r for pair-min and group-min, whose radii are loose) finds, bisected in float64 along the segment (an
  upper bound of the exact radius written in the test).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import asymcert
from asymcert.certify.attacks import decision_flips, pgd_attack
from tests.certify.test_certifier_boundary import _sphere
from tests.conftest import balanced_feature_convex, bisect_segments, near_boundary

INF = math.inf
FMAPS = {
    "log1p-shift": [{"kind": "log1p"}, {"kind": "shift"}],
    "shift-hinges": [{"kind": "shift"}, {"kind": "hinges", "knots": 3}],
    "pair-min": [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "pair-min"}, {"kind": "hinges", "knots": 2}],
    "group-min": [
        {"kind": "log1p"},
        {"kind": "standardize"},
        {"kind": "group-min", "order": 3},
        {"kind": "hinges", "knots": 2},
    ],
}


def _lp(v: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(v.double().flatten(1), ord=p, dim=1)


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("precision", ["model", "float64"])
@pytest.mark.parametrize("fmap", list(FMAPS))
def test_non_affine_feature_maps_hold_in_every_precision_near_the_boundary(fmap, precision, guard, p):
    """No flip of the float64 score (and, guard on, of the model's decision) inside the radius; r below the float64
    distance to a boundary point."""
    x = torch.rand(300, 7, generator=torch.Generator().manual_seed(2)) * 4
    model = balanced_feature_convex(FMAPS[fmap], x, widths=(16, 16), seed=1)
    xs = torch.cat([x[:100], near_boundary(model, x)])
    is_near = torch.arange(len(xs)) >= 100
    cert = asymcert.certify(model, xs, norms=(p,), precision=precision, guard=guard)
    r = cert.radii[p]
    rows = cert.sensitive & (r > 0) & torch.isfinite(r)
    assert int(rows.sum()) >= 30 and int((rows & is_near).sum()) >= 10, "too few positive radii to test"
    xr, rr = xs[rows], r[rows]
    m64 = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        assert bool((m64(xr.double()) > 0).all())
    # the exact function: PGD on the float64 copy, and random points of the sphere
    adv64 = pgd_attack(m64, xr.double(), rr * 0.999, p, steps=60, restarts=2, generator=gen)
    assert bool((_lp(adv64 - xr.double(), p) <= rr).all())
    checked = 0
    with torch.no_grad():
        assert int((m64(adv64) <= 0).sum()) == 0, "the float64 score reaches 0 inside the radius"
        for _ in range(4):
            pts = xr.double() + 0.999 * rr[:, None] * _sphere(len(xr), 7, p, gen)
            assert int((m64(pts) <= 0).sum()) == 0, "a sampled point inside the radius has float64 score ≤ 0"
            checked += len(pts)
    assert checked >= 4 * 30
    if guard:  # the model's own decision
        adv = pgd_attack(model, xr, rr * 0.999, p, steps=60, restarts=2, generator=gen)
        assert bool((_lp(adv - xr, p) <= rr).all())
        assert not bool(decision_flips(model, xr, adv).any()), "the model's decision flipped inside the radius"
    # an upper bound of the exact radius: the boundary between x and a far counterexample, bisected in float64
    # (pair-min's and group-min's Lipschitz constants count every partner of a coordinate: their radii are loose)
    far = pgd_attack(m64, xr.double(), rr * (80 if "min" in fmap else 30), p, steps=60, restarts=2, generator=gen)
    with torch.no_grad():
        hit = m64(far) <= 0
    assert int(hit.sum()) > 0.3 * len(xr), "the attack has no teeth"
    _, hi = bisect_segments(m64, xr.double()[hit], far[hit], torch.zeros(int(hit.sum()), dtype=torch.float64))
    boundary_distance = hi * _lp(far[hit] - xr.double()[hit], p)
    assert bool((rr[hit] < boundary_distance).all()), "a radius reaches past a float64 boundary point"
