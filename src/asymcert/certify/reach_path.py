"""Reach along the path: tighter ℓ∞ radii under a threat model for coordinate-wise feature maps.

The reach-aware bound (:func:`~asymcert.certify.threat_model.reach_radii`) charges a move of coordinate i
by r·scale_i at the steepest slope φ has anywhere on the box x_i can reach. Along the way the slope
changes (log1p flattens, a hinge switches on): cut each coordinate's path from x_i at fractions
0 < f_1 < … < f_J = 1 of the radius, and the score's tangent-plane change telescopes over the pieces,

    wᵀ(φ(x + δ) − φ(x)) = Σ_i Σ_j wᵀ(φ(x + δ_{i,≤j} e_i) − φ(x + δ_{i,<j} e_i)),

each piece a move inside the box [x_i + f_{j−1}·r·scale_i, x_i + f_j·r·scale_i] (one side per direction, cut
at the domain's walls as the reach box is), so bounded by φ's weight bounds on that piece's box times its
length (:func:`~asymcert.nn.feature_maps.coordinate_weights_within`, valid between any two points of the
box). An ℓ∞ move of size ≤ r moves each coordinate at most r·scale_i, one way, and for a coordinate-wise φ
coordinate i's harm depends on δ_i alone, so the harm of any allowed move is at most
Σ_i max(harm up to r·scale_i upwards, harm down to r·scale_i downwards): a piecewise-linear function of
each move, largest at the full length since every piece's harm is ≥ 0. Certified when that bound stays
below the margin (with the precision's slack, as :func:`~asymcert.certify.functional.safe_radius`).
Every product and sum is rounded upward. Only ℓ∞ balls and coordinate-wise maps: ℓ1 and ℓ2 balls let a
coordinate take the whole radius, where the steepest first piece dominates anyway.
"""

from __future__ import annotations

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

PATH_STEPS = 8
"""Radii tried per input by :func:`linf_path_radii`: bisection of [start, 2·start] in log scale."""


def _piece_harms(
    phi: torch.nn.Module, grads: tuple[torch.Tensor, torch.Tensor], lo: torch.Tensor, hi: torch.Tensor, up: bool
) -> torch.Tensor | None:
    """(N, n) upper bounds on the score's fall over a move of each coordinate across its box [lo, hi] (N, n),
    upwards (``up``) or downwards: the weight bound on the box times its length, rounded up; 0 for empty boxes."""
    weights = coordinate_weights_within(phi, grads[0], grads[1], lo, hi)
    if weights is None:
        return None
    rate = (-weights[0]).clamp_min(0.0) if up else weights[1].clamp_min(0.0)
    length = round_up((hi - lo).clamp_min(0.0))
    return torch.where(hi > lo, round_up(rate * length), torch.zeros_like(rate))


def linf_path_harm(
    phi: torch.nn.Module,
    grads: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    tm: ResolvedThreatModel,
    radius: torch.Tensor,
) -> torch.Tensor | None:
    """(N,) float64 upper bound on how far an allowed move of ℓ∞ size ≤ r (N,) (threat-model units) can lower
    the tangent plane of g at φ(x) (module docstring); None when φ is not coordinate-wise or declares no
    weight bounds.

    Args:
        phi: the feature map. grads: (N, K·n) bounds on ∇g(φ(x)). x: (N, *shape) raw inputs. tm: the threat
            model. radius: (N,) float64 radii ≥ 0.
    """
    x64 = x.detach().reshape(x.shape[0], -1).double()
    if coordinate_slopes(phi, x64.shape[1]) is None:
        return None
    scale, lower, upper = (t.to(x64.device).double()[None, :] for t in (tm.scale, tm.lower, tm.upper))
    up_ok, down_ok = (d.to(x64.device) for d in tm.directions(x))
    inside = (x64 >= lower) & (x64 <= upper)
    reach = round_up(radius.double().to(x64.device)[:, None] * scale)  # (N, n) raw reach per coordinate
    total_up, total_down = torch.zeros_like(x64), torch.zeros_like(x64)
    start = 0.0
    for end in PATH_FRACTIONS:
        a = torch.where(inside, torch.minimum(round_down(x64 + start * reach), upper), round_down(x64 + start * reach))
        b = torch.where(inside, torch.minimum(round_up(x64 + end * reach), upper), round_up(x64 + end * reach))
        c = torch.where(inside, torch.maximum(round_down(x64 - end * reach), lower), round_down(x64 - end * reach))
        d = torch.where(inside, torch.maximum(round_up(x64 - start * reach), lower), round_up(x64 - start * reach))
        ups = _piece_harms(phi, grads, x64 if start == 0 else a, b, up=True)  # the first piece starts at x itself
        downs = _piece_harms(phi, grads, c, x64 if start == 0 else d, up=False)
        if ups is None or downs is None:
            return None
        total_up, total_down = round_up(total_up + ups), round_up(total_down + downs)
        start = end
    worst = torch.maximum(torch.where(up_ok, total_up, 0.0), torch.where(down_ok, total_down, 0.0))
    n = worst.shape[1]
    return round_up(worst.sum(dim=1) * (1.0 + 2 * n * EPS64))  # a sum of n nonnegative terms, rounded up


def linf_path_holds(
    phi: torch.nn.Module,
    grads: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    tm: ResolvedThreatModel,
    margin: torch.Tensor,
    slack: float,
    radius: torch.Tensor,
) -> torch.Tensor | None:
    """(N,) bool: the path bound certifies ℓ∞ radius r (N,): harm(r) < margin·(1 − slack) rounded down, the
    margin positive; None where :func:`linf_path_harm` is."""
    harm = linf_path_harm(phi, grads, x, tm, radius)
    if harm is None:
        return None
    budget = round_down(margin.double().to(harm.device) * (1.0 - slack))
    return (margin.to(harm.device) > 0) & (harm < budget)


def linf_path_radii(
    phi: torch.nn.Module,
    grads: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    tm: ResolvedThreatModel,
    margin: torch.Tensor,
    slack: float,
    start: torch.Tensor,
) -> torch.Tensor:
    """ℓ∞ radii (N,) float64 ≥ ``start`` (already certified) from the path bound: PATH_STEPS radii bisect
    [start, 2·start] in log scale (doubling instead while the upper end holds), and the largest radius
    that :func:`linf_path_holds` certifies is kept. Inputs whose ``start`` is 0 or ∞ keep it, as does every
    input when φ is not coordinate-wise or has affine steps only (:func:`~asymcert.nn.feature_maps.reach_matters`)."""
    best = start.double().clone()
    active = (best > 0) & torch.isfinite(best)
    if not bool(active.any()) or not reach_matters(phi):  # affine steps only: nothing to gain
        return best
    lo, hi = best.clone(), 2.0 * best
    r = hi.clone()
    for _ in range(PATH_STEPS):
        holds = linf_path_holds(phi, grads, x, tm, margin, slack, torch.where(active, r, torch.zeros_like(r)))
        if holds is None:
            return start.double().clone()
        holds = holds.to(best.device) & active
        best = torch.where(holds, torch.maximum(best, r), best)
        doubling = holds & (r >= hi)
        lo = torch.where(holds, r, lo)
        hi = torch.where(holds, torch.where(doubling, 2.0 * r, hi), r)
        r = torch.where(doubling, hi, torch.sqrt(lo * hi))
    return best
