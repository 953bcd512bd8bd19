"""The generic threat-model fallback (certifiers without a threat form of their own): R / largest movable scale,
rounded towards 0, for linf-dist, orthogonal, relu-ibp (ibp, crown-ibp, crown) and Gaussian smoothing.

Promises checked, on typical and near-boundary inputs, for a power-of-two scale (2), and scales that are not (3, 0.3):

- (rounding direction, exact) every threat-model radius is strictly below R / S in exact rational arithmetic
  (``Fraction``), where R is the plain ℓp radius of the same inputs and S the largest scale of a feature the input
  may move (computed here from the threat model's masks and domain, not by ``max_movable_scale``); a positive R
  stays positive and within a few ulps of R / S, a zero R stays zero;
- (attack) ``threat_attack`` at 0.999·r, its moves re-measured with ``move_sizes``, never changes the decision;
- (independent sampling) random allowed moves (immutable features held, one-way features moved their way, clipped
  to the domain) of threat-model size 0.999·r never change the decision;
- (smoothing, closed form) for an affine base model the smoothed decision is the base decision, so its exact
  threat-model radius is s / ‖scale ⊙ harm‖_dual (harm: the allowed fall of s per unit move), and the fallback
  radius is below it.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import asymcert
from asymcert.certify.attacks import decisions
from asymcert.certify.threat_attack import move_sizes, threat_attack
from asymcert.models import build_model
from asymcert.threat import ThreatModel
from tests.certify.test_certifier_boundary import _sphere
from tests.conftest import near_boundary

INF = math.inf
D = 6
DUAL = {1.0: INF, 2.0: 2.0, INF: 1.0}


def _tm(scale: float):
    """Feature 0 has the largest scale and may always move (only a lower bound of 0 below inputs in [0, 1])."""
    return ThreatModel(
        scale={"0": scale, "*": scale / 4},
        immutable=[1],
        increase_only=[2],
        decrease_only=[3],
        lower={"*": 0.0},
        upper={"4": 1.0},
    ).resolve(None, D)


def _largest_movable_scale(x: torch.Tensor, tm) -> torch.Tensor:
    """(N,) float64, written here: max scale_i over features i that may move up (allowed, below upper) or down."""
    x64 = x.double().flatten(1)
    up = tm.can_increase[None] & (x64 < tm.upper[None])
    down = tm.can_decrease[None] & (x64 > tm.lower[None])
    return torch.where(up | down, tm.scale[None].double(), torch.zeros_like(x64)).amax(1)


def _median_balanced(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        model.net[-1].bias -= model(x).median()
    return model


def _model(kind: str) -> tuple[nn.Module, tuple[float, ...], dict]:
    """(model, norms, certify options): small models on inputs in [0, 1]^6, about half of U(0, 1) flagged."""
    torch.manual_seed(0)
    x = torch.rand(256, D)
    if kind == "linf-dist":
        model = build_model(
            {"kind": "linf-dist", "input_shape": [D], "widths": [32, 32], "num_classes": 2, "binary": True}
        ).eval()
        with torch.no_grad():
            model.out.bias[1] += model(x).median()
        return model, (INF,), {}
    if kind == "orthogonal":
        model = build_model({"kind": "orthogonal", "input_shape": [D], "arch": "mlp", "widths": [16, 16]}).eval()
        return _median_balanced(model, x), (1.0, 2.0, INF), {}
    model = build_model(
        {"kind": "relu-ibp", "input_shape": [D], "arch": "mlp", "widths": [16, 16], "input_range": [0, 1]}
    )
    model.fit_input(x[:32])
    return _median_balanced(model.eval(), x), (1.0, 2.0, INF), {"method": kind}


def _allowed_moves(x: torch.Tensor, radius: torch.Tensor, p: float, tm, gen: torch.Generator) -> torch.Tensor:
    """Random points x + scale ⊙ u, ‖u‖_p = radius, u zero on immutable features and of the allowed sign on
    one-way ones, then clipped to the domain (which only shrinks the move)."""
    u = _sphere(len(x), D, p, gen).abs() * torch.where(torch.rand(len(x), D, generator=gen) < 0.5, -1.0, 1.0).double()
    u = torch.where(tm.can_increase[None], u, -u.abs())
    u = torch.where(tm.can_decrease[None], u, u.abs())
    u = torch.where(tm.can_increase[None] | tm.can_decrease[None], u, torch.zeros_like(u))
    norm = torch.linalg.vector_norm(u, ord=p, dim=1).clamp_min(1e-300)
    moved = x.double() + tm.scale[None] * u * (radius / norm)[:, None]
    return torch.minimum(torch.maximum(moved, tm.lower[None]), tm.upper[None]).float()


def _check_rounding(r: torch.Tensor, plain: torch.Tensor, top: torch.Tensor) -> None:
    """Exact: 0 < r < R / S (rationals) for R > 0, r within 8 ulps of R / S, r = 0 for R = 0."""
    for ri, big_r, s in zip(r.tolist(), plain.double().tolist(), top.tolist()):
        if big_r == 0:
            assert ri == 0
            continue
        exact = Fraction(big_r) / Fraction(s)
        assert 0 < Fraction(ri) < exact, (ri, big_r, s)
        assert Fraction(ri) >= exact * (1 - Fraction(8 * 2**-52)), (ri, big_r, s)


@pytest.mark.parametrize("scale", [2.0, 3.0, 0.3])
@pytest.mark.parametrize("kind", ["linf-dist", "orthogonal", "ibp", "crown-ibp", "crown"])
def test_fallback_radius_is_below_r_over_scale_and_holds_under_attack(kind, scale):
    """R / S rounded down, exactly (Fraction), and no decision flip inside it (attack and allowed-move sampling)."""
    model, norms, options = _model(kind)
    x = torch.rand(200, D, generator=torch.Generator().manual_seed(1))
    xs = torch.cat([x, near_boundary(model, x)])
    tm = _tm(scale)
    top = _largest_movable_scale(xs, tm)
    assert bool((top == float(tm.scale[0])).all())
    plain = asymcert.certify(model, xs, norms=norms, **options)
    cert = asymcert.certify(model, xs, norms=norms, threat_model=tm, **options)
    assert cert.units.startswith("threat-model")
    assert torch.equal(cert.predicted, plain.predicted)
    pred = decisions(model, xs)
    gen = torch.Generator().manual_seed(2)
    for p in norms:
        _check_rounding(cert.radii[p], plain.radii[p], top)
        pos = torch.isfinite(cert.radii[p]) & (cert.radii[p] > 0)
        assert int(pos.sum()) >= 20 and int(pos[len(x) :].sum()) >= 5, f"ℓ{p}: too few positive radii"
        r, xp = cert.radii[p][pos], xs[pos]
        adv = threat_attack(model, xp, r * 0.999, p, tm, steps=40, restarts=2, generator=gen)
        assert bool((move_sizes(xp, adv, tm, p) <= r * 0.999).all())
        assert bool((decisions(model, adv) == pred[pos]).all()), f"ℓ{p}: a flip inside the fallback radius"
        checked = 0
        for _ in range(4):
            moved = _allowed_moves(xp, r * 0.999, p, tm, gen)
            inside = move_sizes(xp, moved, tm, p) < r  # float32 rounding of x + δ may leave the ball
            flips = (decisions(model, moved) != pred[pos]) & inside
            assert not bool(flips.any()), f"ℓ{p}: a sampled flip inside the radius"
            checked += int(inside.sum())
        assert checked >= 2 * int(pos.sum())
        # the attack has teeth: far outside the radius it changes many decisions
        far = threat_attack(model, xp, r * 50, p, tm, steps=40, restarts=2, generator=gen)
        assert int((decisions(model, far) != pred[pos]).sum()) > 0.2 * int(pos.sum())


class _Affine(nn.Module):
    """s(x) = w·x + c."""

    def __init__(self, w: torch.Tensor, c: float) -> None:
        super().__init__()
        self.w, self.c = nn.Parameter(w.clone()), nn.Parameter(torch.tensor(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.c


@pytest.mark.parametrize("scale", [2.0, 3.0, 0.3])
def test_smoothing_fallback_is_below_r_over_scale_and_the_affine_threat_radius(scale):
    """Gaussian smoothing of an affine score under a threat model: R / S rounded down (exact), and below the exact
    threat-model distance of the (identical) smoothed decision's boundary."""
    w = torch.tensor([1.0, -0.5, 0.8, 0.6, -0.7, 0.3])
    c = -float(w.sum()) / 2
    x = torch.rand(40, D, generator=torch.Generator().manual_seed(3))
    model = _Affine(w, c)
    tm = _tm(scale)
    options = {"method": "smoothing-gaussian", "sigma": 0.25, "n0": 100, "n": 20_000, "alpha": 0.001}
    plain = asymcert.certify(model, x, norms=(1, 2, "inf"), generator=torch.Generator().manual_seed(4), **options)
    cert = asymcert.certify(
        model, x, norms=(1, 2, "inf"), threat_model=tm, generator=torch.Generator().manual_seed(4), **options
    )
    top = _largest_movable_scale(x, tm)
    s64 = x.double() @ w.double() + c
    up = tm.can_increase[None] & (x.double() < tm.upper[None])
    down = tm.can_decrease[None] & (x.double() > tm.lower[None])
    harm = torch.where(up, (-w.double()).clamp_min(0), 0.0) + torch.where(down, w.double().clamp_min(0), 0.0)
    pos = cert.radii[2.0] > 0
    assert int(pos.sum()) >= 8
    for p in (1.0, 2.0, INF):
        _check_rounding(cert.radii[p], plain.radii[p], top)
        exact = s64 / torch.linalg.vector_norm(harm * tm.scale[None], ord=DUAL[p], dim=1)
        assert bool((cert.radii[p][pos] < exact[pos]).all()), f"ℓ{p}: above the affine threat-model radius"
        assert bool((s64[pos] > 0).all())
