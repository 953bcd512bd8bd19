"""One-vs-rest certificates under a threat model with one-way moves, an immutable feature, a domain and unequal scales,
in ℓ1, ℓ2 and ℓ∞, on typical inputs and on inputs within 1e-7…1e-2 of each member's boundary.

Promises checked for every class k and every input that member k flags (s_k > 0) with a positive class radius
r_k = ``extra[class_radii_key(p)][:, k]``:

- (attack) ``threat_attack`` on s_k at 0.999·r_k, its moves re-measured with ``move_sizes``, never makes s_k ≤ 0:
  x stays flagged as class k;
- (independent sampling) random allowed moves of threat-model size 0.999·r_k never make s_k ≤ 0;
- (float64 recomputation) r_k is at most the float64 tangent-plane radius under the threat model, s_k / ‖c‖_dual with
  c_i = scale_i · the part of ∂s_k/∂x_i an allowed move of x_i can use against the flag (φ is affine here, so the
  tangent plane is a lower bound of s_k), written here without the certifier's code (autograd through a float64 copy
  of member k), and at least the generic fallback (the plain radius over the largest movable scale);
- ``radii[p]`` is the predicted class's column where it is flagged, 0 elsewhere.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import asymcert
from asymcert.certify.result import class_radii_key
from asymcert.certify.threat_attack import move_sizes, threat_attack
from asymcert.models import build_model
from tests.certify.test_threat_fallback import _allowed_moves
from tests.conftest import near_boundary
from tests.test_threat import TM as THREAT_TESTS_TM

INF = math.inf
DUAL = {1.0: INF, 2.0: 2.0, INF: 1.0}
TM = THREAT_TESTS_TM  # (scales, an immutable feature, one-way moves and bounds, on 6 features)
TM_SCALE = torch.tensor([2.0, 0.5, 0.5, 0.25, 0.5, 0.5], dtype=torch.float64)  # TM's, written out by hand
TM_MOVES = (2, 0, 1, -1, 2, 1)  # feature 1 immutable, 2 and 5 increase-only, 3 decrease-only


class _ClassScore(nn.Module):
    """s_k(x) (N,) of a one-vs-rest model."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.k]


def _one_vs_rest(x: torch.Tensor, seed: int = 0) -> nn.Module:
    """3 members (ICNN [16, 8] on standardize(x), hidden weights ×40), each balanced at its median score on x."""
    torch.manual_seed(seed)
    model = build_model(
        {
            "kind": "one-vs-rest-convex",
            "input_shape": [6],
            "num_classes": 3,
            "input_range": None,
            "feature_map": [{"kind": "standardize"}],
            "convex": {"kind": "icnn", "widths": [16, 8], "batch_norm": False},
        }
    ).eval()
    with torch.no_grad():
        for member in model.member_models:
            for name, p in member.named_parameters():
                if "hidden" in name:
                    p.mul_(40.0)
            member.feature_map.fit(x)
            member.balance -= member(x).median()
    return model


def _tangent_lp_radius64(member: nn.Module, x: torch.Tensor, p: float, threat: bool = False) -> torch.Tensor:
    """(N,) s / ‖c‖_dual of a float64 copy, s raised by 1e-12 (its own rounding): c = ∇ₓs, or with ``threat`` the
    part of it TM's moves can use against the flag, times TM's scales (TM_SCALE, TM_MOVES, by hand)."""
    m64 = copy.deepcopy(member).double()
    x64 = x.double().requires_grad_(True)
    s = m64(x64)
    (grad,) = torch.autograd.grad(s.sum(), x64)
    if threat:  # +1: may only rise (uses −∂s), −1: may only fall (uses +∂s), 0: fixed, 2: both ways
        usable = {0: torch.zeros_like, 1: lambda g: (-g).clamp_min(0), -1: lambda g: g.clamp_min(0), 2: torch.abs}
        grad = torch.stack([usable[m](grad[:, i]) for i, m in enumerate(TM_MOVES)], dim=1) * TM_SCALE
    return (s.detach() + 1e-12).clamp_min(0) / torch.linalg.vector_norm(grad, ord=DUAL[p], dim=1)


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_class_radii_hold_under_one_way_moves_and_bounds_near_the_boundary(p):
    """No allowed move of threat-model size < r_k removes member k's flag; r_k ≤ the float64 tangent radius / 2."""
    x = torch.rand(200, 6, generator=torch.Generator().manual_seed(1)) * 3
    model = _one_vs_rest(x)
    near = [near_boundary(_ClassScore(model, k), x) for k in range(3)]
    xs = torch.cat([x, *near])
    is_near = torch.arange(len(xs)) >= len(x)
    tm = TM.resolve(None, 6)
    assert bool((tm.max_movable_scale(xs) == 2.0).all())  # feature 0 may always move
    cert = asymcert.certify(model, xs, norms=(p,), threat_model=tm)
    plain = asymcert.certify(model, xs, norms=(p,))
    assert cert.units == "threat-model units (δ_i / scale_i)"
    class_radii = cert.extra[class_radii_key(p)]
    with torch.no_grad():
        scores = model(xs)
    pred = cert.predicted
    flagged_pred = scores[torch.arange(len(xs)), pred] > 0
    assert torch.equal(cert.radii[p][flagged_pred], class_radii[flagged_pred, pred[flagged_pred]])
    assert bool((cert.radii[p][~flagged_pred] == 0).all())
    gen = torch.Generator().manual_seed(2)
    for k, member in enumerate(model.member_models):
        r = class_radii[:, k]
        assert bool((r[scores[:, k] <= 0] == 0).all())
        rows = (scores[:, k] > 0) & (r > 0) & torch.isfinite(r)
        assert int(rows.sum()) >= 40 and int((rows & is_near).sum()) >= 10, f"class {k}: too few radii to test"
        xk, rk, score_k = xs[rows], r[rows], _ClassScore(model, k)
        assert bool((rk <= _tangent_lp_radius64(member, xk, p, threat=True)).all()), f"class {k}: above float64's"
        fallback = torch.nextafter(
            plain.extra[class_radii_key(p)][rows, k] / 2.0, torch.tensor(0.0, dtype=torch.float64)
        )
        assert bool((rk >= fallback).all()) and bool((rk > 1.5 * fallback).any()), f"class {k}: below the fallback"
        adv = threat_attack(score_k, xk, rk * 0.999, p, tm, steps=60, restarts=2, generator=gen)
        assert bool((move_sizes(xk, adv, tm, p) <= rk * 0.999).all())
        with torch.no_grad():
            assert int((score_k(adv) <= 0).sum()) == 0, f"class {k}, ℓ{p}: the flag is lost inside the radius"
            checked = 0
            for _ in range(4):
                moved = _allowed_moves(xk, rk * 0.999, p, tm, gen)
                inside = move_sizes(xk, moved, tm, p) < rk
                assert not bool(((score_k(moved) <= 0) & inside).any()), f"class {k}: a sampled move drops the flag"
                checked += int(inside.sum())
            assert checked >= 2 * len(xk)
            # the attack has teeth: well outside the radius it removes many flags
            far = threat_attack(score_k, xk, rk * 10, p, tm, steps=60, restarts=2, generator=gen)
            assert int((score_k(far) <= 0).sum()) > 0.3 * len(xk)
