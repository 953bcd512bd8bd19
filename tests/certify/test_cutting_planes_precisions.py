"""The multi-cut certificate (``cuts=4``) with the guard off and with ``precision="model"``/``"float64"``, on typical
inputs and on inputs within 1e-7…0.1 of the boundary (the guard-on, ``auto`` case is in test_cutting_planes.py).

Promises checked:

- the multi-cut radius is at least the closed form with the same options, and at most the exact radius (the float64
  LP/SOCP of ``exact_radius``, up to its relative accuracy);
- PGD on a float64 copy at 0.999·r and random points of the ℓp sphere of radius 0.999·r never make the float64 score
  ≤ 0 (with the guard off the radius certifies the exact function);
- with the guard on, PGD at 0.999·r never flips the float32 model's own decision.
"""

from __future__ import annotations

import copy

import pytest
import torch

from asymcert.certify.attacks import decision_flips, pgd_attack
from asymcert.certify.cutting_planes import multi_cut_radii
from asymcert.certify.exact import exact_radius
from asymcert.certify.feature_convex import certify_feature_convex
from tests.certify.test_certifier_boundary import _sphere
from tests.certify.test_cutting_planes import ACCURACY, MODELS, NORMS, _s64
from tests.conftest import near_boundary

OPTIONS = [(False, "auto"), (False, "model"), (False, "float64"), (True, "model"), (True, "float64")]


def _lp(v: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(v.double().flatten(1), ord=p, dim=1)


@pytest.mark.parametrize(("guard", "precision"), OPTIONS, ids=[f"guard={g}-{pr}" for g, pr in OPTIONS])
@pytest.mark.parametrize("name", ["icnn2", "icnn2-bn", "conv"])
@pytest.mark.parametrize("p", NORMS)
def test_multi_cut_without_guard_or_in_model_precision_holds(name, p, guard, precision):
    """closed form ≤ r ≤ exact; no float64 flip inside r (PGD and sphere points); guard on: no own-decision flip."""
    model, x = MODELS[name]()
    m64 = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(0)
    for near, xs in ((False, x), (True, near_boundary(model, x, high=0.1))):
        base = certify_feature_convex(model, xs, (p,), guard=guard, precision=precision).radii[p]
        r = multi_cut_radii(model, xs, (p,), cuts=4, guard=guard, precision=precision)[p]
        assert bool((r >= base).all())
        f = r > 0  # a radius of 0 promises nothing (near the boundary: within rounding)
        assert int(f.sum()) > 3, f"near={near}: too few positive radii"
        assert bool((_s64(model, xs[f]) > 0).all())
        assert bool((r[f] <= exact_radius(model, xs[f], p) * (1 + ACCURACY[p])).all()), "above the exact radius"
        eps = r[f] * 0.999
        adv64 = pgd_attack(m64, xs[f].double(), eps, p, steps=100, restarts=2, generator=gen)
        assert bool((_lp(adv64 - xs[f].double(), p) <= r[f]).all())
        assert bool((_s64(model, adv64) > 0).all()), f"near={near}: float64 score ≤ 0 inside the multi-cut radius"
        d = xs[0].numel()
        for _ in range(4):
            pts = (xs[f].double().flatten(1) + eps[:, None] * _sphere(int(f.sum()), d, p, gen)).reshape(xs[f].shape)
            assert bool((_s64(model, pts) > 0).all()), f"near={near}: a sampled point inside r has float64 score ≤ 0"
        if guard:
            adv = pgd_attack(model, xs[f], eps.float(), p, steps=100, restarts=2, generator=gen)
            assert not bool(decision_flips(model, xs[f], adv).any()), f"near={near}: the model's decision flipped"
