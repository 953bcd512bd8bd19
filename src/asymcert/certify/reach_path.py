"""Reach along the path: tighter ℓ∞ and ℓ2 radii under a threat model for coordinate-wise feature maps.

The reach-aware bound (:func:`~asymcert.certify.threat_model.reach_radii`) charges a move of coordinate i
by r·scale_i at the steepest slope φ has anywhere on the box x_i can reach. Along the way the slope
changes (log1p flattens, a hinge switches on): cut each coordinate's path from x_i at fractions
0 < f_1 < … < f_J = 1 of the radius, and the score's tangent-plane change telescopes over the pieces,

    wᵀ(φ(x + δ) − φ(x)) = Σ_i Σ_j wᵀ(φ(x + δ_{i,≤j} e_i) − φ(x + δ_{i,<j} e_i)),

each piece a move inside the box [x_i + f_{j−1}·r·scale_i, x_i + f_j·r·scale_i] (one side per direction, cut
at the domain's walls as the reach box is), so bounded by φ's weight bounds on that piece's box times its
length (:func:`~asymcert.nn.feature_maps.coordinate_weights_within`, valid between any two points of the
box). For a coordinate-wise φ coordinate i's share depends on δ_i alone, and a move of ℓp size ≤ r moves
it one way by at most r·scale_i, so its share is at most H_i(ρ_i), ρ_i = |δ_i| / scale_i, a piecewise-linear
bound (:class:`PathCurves`). ℓ∞: the harm is at most Σ_i H_i(r) (every piece's fall is ≥ 0). ℓ2: at most
min_λ≥0 λ·r² + Σ_i sup_ρ (H_i(ρ) − λρ²) (weak duality, :func:`l2_path_harm`). Certified when that bound
stays below the margin (with the precision's slack, as :func:`~asymcert.certify.functional.safe_radius`).
Every product and sum is rounded upward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from asymcert.nn.feature_maps import (
    EPS64,
    coordinate_slopes,
    coordinate_weights_within,
    reach_matters,
    round_down,
    round_up,
)
from asymcert.threat import ResolvedThreatModel

PATH_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
"""Where each coordinate's path is cut, as fractions of the radius (finer near the start, where log1p bends most)."""

LAMBDA_OCTAVES = 8
"""The dual bound of ℓ2 balls (:func:`l2_path_harm`) tries λ over this many octaves each way (in half octaves)."""

PATH_NORMS = (2.0, math.inf)
"""The norms the path bound takes (for ℓ1 a ball lets one coordinate take the whole radius, where the first,
steepest piece decides: a probe gained 1.4% of radius at the median, so it is not run)."""

PATH_STEPS = 8
"""Radii tried per input and norm by :func:`path_radii`: bisection of [start, 2·start] in log scale."""


def _piece_rates(
    phi: torch.nn.Module, grads: tuple[torch.Tensor, torch.Tensor], lo: torch.Tensor, hi: torch.Tensor, up: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(fall, rate): (N, n) upper bounds on the score's fall over a move of each coordinate across its box
    [lo, hi] (N, n), upwards (``up``) or downwards, and on its rate per raw unit (φ's weight bound on the box),
    rounded up; 0 for empty boxes."""
    weights = coordinate_weights_within(phi, grads[0], grads[1], lo, hi)
    if weights is None:
        return None
    rate = (-weights[0]).clamp_min(0.0) if up else weights[1].clamp_min(0.0)
    length = round_up((hi - lo).clamp_min(0.0))
    empty = ~(hi > lo)
    return torch.where(empty, 0.0, round_up(rate * length)), torch.where(empty, 0.0, rate)


@dataclass(frozen=True)
class PathCurves:
    """Bounds on each coordinate's harm along its path (module docstring), both directions.

    Attributes:
        cum: (2, N, n, J + 1) float64 upper bounds on the fall of the tangent plane after moving coordinate i
            up (index 0) or down (1) to the cut j (cum[..., 0] = 0); 0 where that direction is not allowed.
        slope: (2, N, n, J) upper bounds on the fall per threat-model unit inside piece j.
        cuts: (N, J + 1) the cuts f_j·r in threat-model units (f_0 = 0).
    """

    cum: torch.Tensor
    slope: torch.Tensor
    cuts: torch.Tensor


def path_curves(
    phi: torch.nn.Module,
    grads: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    tm: ResolvedThreatModel,
    radius: torch.Tensor,
) -> PathCurves | None:
    """:class:`PathCurves` for moves of threat-model size ≤ r (N,) (each coordinate moves at most r·scale_i);
    None when φ is not coordinate-wise or declares no weight bounds.

    Args:
        phi: the feature map. grads: (N, K·n) bounds on ∇g(φ(x)). x: (N, *shape) raw inputs. tm: the threat
            model. radius: (N,) float64 radii ≥ 0.
    """
    x64 = x.detach().reshape(x.shape[0], -1).double()
    if coordinate_slopes(phi, x64.shape[1]) is None:
        return None
    scale, lower, upper = (t.to(x64.device).double()[None, :] for t in (tm.scale, tm.lower, tm.upper))
    allowed = torch.stack([d.to(x64.device) for d in tm.directions(x)])[..., None]  # (2, N, n, 1)
    inside = (x64 >= lower) & (x64 <= upper)
    reach = round_up(radius.double().to(x64.device)[:, None] * scale)  # (N, n) raw reach per coordinate
    falls, slopes = [torch.zeros(2, *x64.shape, dtype=torch.float64)], []
    start = 0.0
    for end in PATH_FRACTIONS:  # piece [start, end]·r, up: [x + start·reach, x + end·reach], down mirrored
        a, b = round_down(x64 + start * reach), round_up(x64 + end * reach)
        c, d = round_down(x64 - end * reach), round_up(x64 - start * reach)
        a, b = (torch.where(inside, torch.minimum(v, upper), v) for v in (x64 if start == 0 else a, b))
        c, d = (torch.where(inside, torch.maximum(v, lower), v) for v in (c, x64 if start == 0 else d))
        ups, downs = _piece_rates(phi, grads, a, b, up=True), _piece_rates(phi, grads, c, d, up=False)
        if ups is None or downs is None:
            return None
        falls.append(round_up(falls[-1] + torch.stack([ups[0], downs[0]])))
        slopes.append(round_up(torch.stack([ups[1], downs[1]]) * scale))
        start = end
    cuts = radius.double().to(x64.device)[:, None] * torch.tensor((0.0, *PATH_FRACTIONS), dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    cum = torch.where(allowed, torch.stack(falls, dim=-1), zero)
    return PathCurves(cum, torch.where(allowed, torch.stack(slopes, dim=-1), zero), cuts)


def _sum_up(terms: torch.Tensor) -> torch.Tensor:
    """Σ over the last dimension of nonnegative float64 terms, rounded up (relative error below 2·n·eps)."""
    return round_up(terms.sum(dim=-1) * (1.0 + 2 * terms.shape[-1] * EPS64))


def linf_path_harm(curves: PathCurves) -> torch.Tensor:
    """(N,) float64 upper bound on how far an allowed move of ℓ∞ size ≤ r can lower the tangent plane of g at
    φ(x): Σ_i the larger direction's fall at the full reach (module docstring)."""
    return _sum_up(curves.cum[..., -1].amax(dim=0))


def l2_path_harm(curves: PathCurves, radius: torch.Tensor) -> torch.Tensor:
    """(N,) upper bound on the fall over allowed moves of ℓ2 size ≤ r, by weak duality: for any λ ≥ 0,
    Σ_i H_i(ρ_i) ≤ λ·r² + Σ_i sup_ρ (H_i(ρ) − λ·ρ²) whenever Σ ρ_i² ≤ r², with H_i(ρ) ≤ cum_{j−1} +
    slope_j·(ρ − f_{j−1}·r) on piece j (each coordinate moves one way, at most r; on a piece the sup is at the
    stationary point clamped to it). The least bound over LAMBDA_OCTAVES octaves each side of ‖a‖₂ / 2r, the
    λ at which it is the closed form ‖a‖₂·r of the steepest slopes a, is kept, inflated by 10⁻⁹ (far above
    the float64 error of these sums of nonnegative terms)."""
    lo, hi = curves.cuts[None, :, None, :-1], curves.cuts[None, :, None, 1:]  # (1, N, 1, J) piece ends
    base, slope = curves.cum[..., :-1], curves.slope  # (2, N, n, J)
    r = radius.double()
    lam0 = torch.linalg.vector_norm(slope.amax(dim=(0, 3)), dim=1) / (2.0 * r.clamp_min(1e-300))
    best = torch.full_like(r, math.inf)
    for k in range(-2 * LAMBDA_OCTAVES, 2 * LAMBDA_OCTAVES + 1):
        lam = (lam0 * 2.0 ** (k / 2))[None, :, None, None]
        rho = torch.minimum(torch.maximum(slope / (2.0 * lam).clamp_min(1e-300), lo), hi)
        sup = (base + slope * (rho - lo) - lam * rho * rho).clamp_min(0.0).amax(dim=(0, 3))  # ρ = 0 gives 0
        best = torch.minimum(best, lam[0, :, 0, 0] * r * r + sup.sum(dim=1))
    return round_up(best * (1.0 + 1e-9))


def path_holds(
    phi: torch.nn.Module,
    grads: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    tm: ResolvedThreatModel,
    margin: torch.Tensor,
    slack: float,
    p: float,
    radius: torch.Tensor,
) -> torch.Tensor | None:
    """(N,) bool: the path bound certifies ℓp radius r (N,), p ∈ PATH_NORMS: harm(r) < margin·(1 − slack)
    rounded down, the margin positive (:func:`linf_path_harm`, :func:`l2_path_harm`); None for another p,
    or where :func:`path_curves` is None."""
    if p not in PATH_NORMS:
        return None
    curves = path_curves(phi, grads, x, tm, radius)
    if curves is None:
        return None
    harm = linf_path_harm(curves) if math.isinf(p) else l2_path_harm(curves, radius)
    budget = round_down(margin.double().to(harm.device) * (1.0 - slack))
    return (margin.to(harm.device) > 0) & (harm < budget)


def path_radii(
    phi: torch.nn.Module,
    grads: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    tm: ResolvedThreatModel,
    margin: torch.Tensor,
    slack: float,
    p: float,
    start: torch.Tensor,
) -> torch.Tensor:
    """ℓp radii (N,) float64 ≥ ``start`` (already certified) from the path bound: PATH_STEPS radii bisect
    [start, 2·start] in log scale (doubling instead while the upper end holds), and the largest radius
    that :func:`path_holds` certifies is kept. Inputs whose ``start`` is 0 or ∞ keep it, as does every input
    for a p outside PATH_NORMS, a φ that is not coordinate-wise or one with affine steps only
    (:func:`~asymcert.nn.feature_maps.reach_matters`)."""
    best = start.double().clone()
    active = (best > 0) & torch.isfinite(best)
    if p not in PATH_NORMS or not bool(active.any()) or not reach_matters(phi):  # nothing to gain
        return best
    lo, hi = best.clone(), 2.0 * best
    r = hi.clone()
    for _ in range(PATH_STEPS):
        holds = path_holds(phi, grads, x, tm, margin, slack, p, torch.where(active, r, torch.zeros_like(r)))
        if holds is None:
            return start.double().clone()
        holds = holds.to(best.device) & active
        best = torch.where(holds, torch.maximum(best, r), best)
        doubling = holds & (r >= hi)
        lo = torch.where(holds, r, lo)
        hi = torch.where(holds, torch.where(doubling, 2.0 * r, hi), r)
        r = torch.where(doubling, hi, torch.sqrt(lo * hi))
    return best
