"""Every public precision × guard × norm of the feature-convex certifiers is sound, on typical inputs
and on NEAR-BOUNDARY inputs (float64 score within a few float32 ulps·magnitude of 0), where a
relative slack cannot absorb the score's rounding (issue 14, item 3).

(a) Against an independent float64 reference (float64 copy of the model, autograd gradient,
    radius s/(Lip·‖∇g‖_{p*})): no radius above it (up to the reference's own rounding), and away
    from the boundary within 1e-4 of it.
(b) Attacks just inside the radius — the worst-case direction of the tangent plane, random points on
    the sphere, PGD — never flip the deployed float32 model's decision (guard=True) and never make
    the float64 score ≤ 0 (guard=False).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import asymcert
from asymcert.certify.attacks import pgd_attack
from asymcert.certify.feature_convex import (
    FLOAT_GUARD_FACTOR,
    required_slack,
    score_and_feature_gradient,
    score_magnitudes,
)
from asymcert.certify.functional import dual_norm
from asymcert.certify.one_vs_rest import class_radii_key
from asymcert.errors import AsymcertError
from asymcert.models.one_vs_rest import OneVsRestConvex
from tests.conftest import small_feature_convex

NORMS = (1.0, 2.0, math.inf)
SHAPE = (1, 6, 6)
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
# multiples of eps32·M (M: magnitude of the score's terms) at which near-boundary inputs are placed
ULPS = torch.tensor([-2.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 64.0, 256.0, 4096.0])


def reference(model, x):
    """The float64 reference of a feature-convex model at x (N, *shape), as a dict: ``s`` (N,) score,
    ``mag`` (N,) M = Σ|∇g ⊙ φ| + |s| + |b|, ``grad_x`` ∇_x s, and per norm p: ``r[p]`` the radius
    s⁺/(Lip_p·‖∇g‖_{p*}) and ``upper[p]`` the same with s + 8·eps64·M (the exact score may exceed the
    float64 one by its rounding)."""
    m64 = copy.deepcopy(model).double().eval()
    xd = x.double().requires_grad_(True)
    f = m64.features(xd)
    s = m64.score_from_features(f)
    grad_f, grad_x = torch.autograd.grad(s.sum(), [f, xd])
    s, f = s.detach(), f.detach()
    mag = (grad_f.abs() * f.abs()).flatten(1).sum(1) + s.abs() + float(m64.balance.abs())
    absolute, _ = score_magnitudes(m64, f)  # A: the absolute evaluation, which sees terms that cancel
    high = s + FLOAT_GUARD_FACTOR * EPS64 * torch.maximum(mag, absolute)
    den = {p: model.feature_lipschitz(p) * dual_norm(grad_f, p) for p in NORMS}
    return {
        "s": s,
        "mag": mag,
        "absolute": absolute,
        "grad_x": grad_x,
        "r": {p: s.clamp_min(0) / d for p, d in den.items()},
        "upper": {p: high.clamp_min(0) / d for p, d in den.items()},
    }


def near_boundary_inputs(model, n: int = 16, seed: int = 0) -> torch.Tensor:
    """(n·len(ULPS), *SHAPE) float32 inputs with float64 score ≈ k·eps32·M for every k in ULPS.

    Each segment between a flagged and an unflagged random input is bisected (in float64) to its
    zero, then moved along the segment by k·eps32·M / (directional derivative).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(8 * n, *SHAPE, generator=gen)
    s = reference(model, x)["s"]
    pos, neg = x[s > 0][:n].double(), x[s <= 0][:n].double()
    assert len(pos) == len(neg) == n
    d = pos - neg
    lo, hi = torch.zeros(n, 1, 1, 1, dtype=torch.float64), torch.ones(n, 1, 1, 1, dtype=torch.float64)
    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for _ in range(60):
            mid = (lo + hi) / 2
            up = (m64(neg + mid * d) > 0).view(-1, 1, 1, 1)
            hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
    base = neg + hi * d
    ref = reference(model, base)
    slope = (ref["grad_x"] * d).flatten(1).sum(1)
    steps = ULPS[None, :].double() * EPS32 * ref["mag"][:, None] / slope[:, None]  # (n, len(ULPS))
    out = base[:, None] + steps.view(n, -1, 1, 1, 1) * d[:, None]
    return out.reshape(-1, *SHAPE).float()


def worst_direction(grad_x: torch.Tensor, p: float) -> torch.Tensor:
    """Unit-ℓp directions (N, *shape) that decrease the tangent plane fastest: argmin_{‖u‖_p ≤ 1} ∇ᵀu."""
    g = grad_x.flatten(1)
    if p == 2:
        u = -g / g.norm(dim=1, keepdim=True)
    elif math.isinf(p):
        u = -g.sign()
    else:
        u = torch.zeros_like(g)
        i = g.abs().argmax(dim=1)
        u[torch.arange(len(g)), i] = -g[torch.arange(len(g)), i].sign()
    return u.view_as(grad_x)


def candidates(model, x, r, grad_x, p, gen):
    """Attack points (K, N, *shape) float32 for inputs x with radii r: the tangent plane's worst direction
    at 0.999·r, 6 random points on the sphere of radius 0.999·r, and PGD inside 0.999·r."""
    scale = (0.999 * r).view(-1, *[1] * (x.dim() - 1))
    pts = [x.double() + scale * worst_direction(grad_x, p)]
    for _ in range(6):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        pts.append(x.double() + scale * v / torch.linalg.vector_norm(v.flatten(1), ord=p, dim=1).view_as(scale))
    pts.append(pgd_attack(model, x, (0.999 * r).float(), p, steps=30, restarts=2, generator=gen).double())
    return torch.stack(pts).float()


def check_precision(model, x, precision, guard, near):
    """(a) and (b) of the module docstring for one model, batch, precision and guard."""
    cert = asymcert.certify(model, x, norms=NORMS, precision=precision, guard=guard)
    ref = reference(model, x)
    gen = torch.Generator().manual_seed(1)
    checked = 0
    for p in NORMS:
        r = cert.radii[p]
        # (a) never above the reference, and tight away from the boundary
        assert bool((r <= ref["upper"][p] * (1 + 1e-6)).all()), (precision, guard, p)
        if not near:  # away from the boundary: s at least 5% of the magnitude of its terms
            away = ref["s"] > 0.05 * ref["mag"]
            assert int(away.sum()) > 5
            # each guard is 8·eps·max(M, A) (two with precision="model" and guard=True): within 1e-4 plus those
            allowance = 1e-4 + 3 * 16 * EPS32 * torch.maximum(ref["mag"], ref["absolute"]) / ref["s"].abs()
            below = (ref["r"][p] - r) / ref["r"][p]
            assert bool((below[away] <= allowance[away]).all()), (precision, guard, p, float(below[away].max()))
        # (b) attacks just inside the radius
        rows = (r > 0) & torch.isfinite(r)
        if not bool(rows.any()):
            continue
        pts = candidates(model, x[rows], r[rows], ref["grad_x"][rows], p, gen)
        dist = torch.linalg.vector_norm((pts.double() - x[rows].double()).flatten(2), ord=p, dim=2)
        inside = dist <= 0.9995 * r[rows]  # float32 rounding of a point may leave the ball: skip those
        with torch.no_grad():
            own = torch.stack([model(pt) for pt in pts]) > 0
            exact = torch.stack([copy.deepcopy(model).double()(pt.double()) for pt in pts]) > 0
        assert bool(exact[inside].all()), f"{precision} guard={guard} ℓ{p}: float64 score ≤ 0 inside the radius"
        if near:  # the worst direction has teeth: at twice the reference radius the score does drop below 0
            far = x[rows].double() + (2 * ref["r"][p][rows]).view(-1, 1, 1, 1) * worst_direction(ref["grad_x"][rows], p)
            with torch.no_grad():
                assert float((copy.deepcopy(model).double()(far) <= 0).double().mean()) > 0.5
        if guard:
            assert bool(own[inside].all()), f"{precision} guard={guard} ℓ{p}: the model's decision flipped"
        checked += int(inside.sum())
    return cert, checked


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("precision", ["auto", "bounded", "float64", "model"])
@pytest.mark.parametrize("kind", ["conv", "icnn"])
def test_every_precision_is_sound_near_the_boundary_and_tight_away_from_it(kind, precision, guard):
    fmap = [{"kind": "shift"}, {"kind": "concat-abs"}] if kind == "conv" else [{"kind": "shift"}]
    model = small_feature_convex(kind, SHAPE, feature_map=fmap, seed=5)
    if precision == "bounded" and kind == "icnn":
        with pytest.raises(AsymcertError, match="bounded"):
            asymcert.certify(model, torch.rand(2, *SHAPE), precision=precision, guard=guard)
        return
    near = near_boundary_inputs(model)
    cert, checked = check_precision(model, near, precision, guard, near=True)
    flagged = cert.sensitive & (cert.radii[2.0] > 0)
    assert int(flagged.sum()) > 30  # near-boundary inputs were certified (and attacked)...
    assert checked > 200
    ref = reference(model, near)
    assert float((ref["s"][flagged] / ref["mag"][flagged]).min()) < 300 * EPS32  # ...some within 300 ulps·M of 0
    typical = torch.rand(48, *SHAPE, generator=torch.Generator().manual_seed(2))
    check_precision(model, typical, precision, guard, near=False)


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("precision", ["float64", "model"])
def test_one_vs_rest_precisions_are_sound_near_the_boundary(precision, guard):
    """Member 0's near-boundary inputs: its class radius is below its own float64 reference, and
    no attack inside it makes s_0 ≤ 0 (float64) or flips the model's own flag (guard=True)."""
    members = [small_feature_convex("icnn", SHAPE, seed=s) for s in (5, 6, 7)]
    model = OneVsRestConvex(members).eval()
    x = near_boundary_inputs(members[0], n=12)
    cert = asymcert.certify(model, x, norms=NORMS, precision=precision, guard=guard)
    ref = reference(members[0], x)
    gen = torch.Generator().manual_seed(3)
    certified = 0
    for p in NORMS:
        r = cert.extra[class_radii_key(p)][:, 0]
        assert bool((r <= ref["upper"][p] * (1 + 1e-6)).all())
        rows = r > 0
        certified += int(rows.sum())
        pts = candidates(members[0], x[rows], r[rows], ref["grad_x"][rows], p, gen)
        dist = torch.linalg.vector_norm((pts.double() - x[rows].double()).flatten(2), ord=p, dim=2)
        inside = dist <= 0.9995 * r[rows]
        with torch.no_grad():
            own = torch.stack([model(pt)[:, 0] for pt in pts]) > 0
            exact = torch.stack([copy.deepcopy(members[0]).double()(pt.double()) for pt in pts]) > 0
        assert bool(exact[inside].all())
        if guard:
            assert bool(own[inside].all())
    assert certified > 30


def test_model_precision_without_guard_is_not_above_the_exact_radius_on_the_boundary():
    """The issue-14 probe: precision="model", guard=False used the float32 score with only a relative
    slack, so radii of inputs a few ulps from the boundary came out up to 19% above the float64
    value, and midpoints between the true and the claimed radius flipped the decision."""
    model = small_feature_convex("conv", SHAPE, seed=1)
    x = near_boundary_inputs(model, n=16)
    cert = asymcert.certify(model, x, norms=(2.0,), precision="model", guard=False)
    assert bool((cert.radii[2.0] <= reference(model, x)["upper"][2.0] * (1 + 1e-6)).all())
    assert int((cert.radii[2.0] > 0).sum()) > 20


def test_options_that_cannot_be_sound_are_refused():
    icnn = small_feature_convex("icnn", SHAPE)
    x = torch.rand(3, *SHAPE)
    with pytest.raises(AsymcertError, match=r"precision='bounded'.*'float64'"):
        asymcert.certify(icnn, x, precision="bounded")
    with pytest.raises(AsymcertError, match="precision must be one of"):
        asymcert.certify(icnn, x, precision="float16")
    with pytest.raises(AsymcertError, match=r"slack=0.*'model'"):
        asymcert.certify(icnn, x, precision="model", slack=0.0)
    with pytest.raises(AsymcertError, match=r"slack must be a finite number ≥ 0, got -1\.0"):
        asymcert.certify(icnn, x, slack=-1.0)
    assert asymcert.certify(icnn, x, precision="model", slack=1e-3).radii[2.0].shape == (3,)


def test_model_precision_gradient_norm_error_is_far_inside_its_slack():
    """The slack of precision="model" stands for the float32 dual norm's relative error: measured ≤ 3·eps32,
    reserved 42·eps32 (DEFAULT_SLACK = 5e-6)."""
    for kind in ("icnn", "conv"):
        model = small_feature_convex(kind, SHAPE, seed=2)
        x = torch.rand(500, *SHAPE)
        _, g32 = score_and_feature_gradient(model, x)
        _, g64 = score_and_feature_gradient(copy.deepcopy(model).double(), x.double())
        for p in NORMS:
            n32, n64 = dual_norm(g32, p), dual_norm(g64, p)
            assert int((n64 > 0).sum()) > 100
            rel = (n32[n64 > 0] / n64[n64 > 0] - 1).abs().max()
            assert float(rel) < required_slack(model, "model") / 8
