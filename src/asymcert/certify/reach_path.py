"""Reach along the path, on one grid: tighter ℓ1, ℓ2 and ℓ∞ radii under a threat model for coordinate-wise feature maps.

The reach-aware bound (:func:`~asymcert.certify.threat_model.reach_radii`) charges a move of coordinate i
by r·scale_i at the steepest slope φ has anywhere on the box x_i can reach. Along the way the slope
changes (log1p flattens, a hinge switches on): cut each coordinate's path from x_i at points
0 = c_0 < c_1 < … < c_M (threat-model units), and the score's tangent-plane change telescopes over the pieces,

    wᵀ(φ(x + δ) − φ(x)) = Σ_i Σ_j wᵀ(φ(x + δ_{i,≤j} e_i) − φ(x + δ_{i,<j} e_i)),

each piece a move inside the box [x_i + c_{j−1}·scale_i, x_i + c_j·scale_i] (one side per direction, cut at the
domain's walls as the reach box is), so bounded by φ's weight bounds on that piece's box times its length
(:func:`~asymcert.nn.feature_maps.coordinate_weights_within`, valid between any two points of the box). For
a coordinate-wise φ coordinate i's share depends on δ_i alone, and a move of ℓp size ≤ r moves it one way by
at most r·scale_i, so its share is at most H_i(ρ_i), ρ_i = |δ_i| / scale_i, with

    H_i(ρ) = min(C_{i,j}, C_{i,j−1} + S_{i,j}·(ρ − c_{j−1}))   for ρ in piece j,

C the bounds on the fall at the cuts and S the fall per unit inside a piece (:class:`PathCurves`; the
partial piece [c_{j−1}, ρ] is inside piece j's box, and its fall is at most the whole piece's, as rates are
clamped at 0). H_i is nondecreasing. ℓ∞: the harm is at most Σ_i H_i(r). ℓq, q = 1, 2: a move of size ≤ r ≤ R
has Σ_i ρ_i^q ≤ r^q and every ρ_i ≤ R, so for every λ > 0 its harm is at most

    Σ_i (H_i(ρ_i) − λρ_i^q) + λ·r^q ≤ F_R(λ) + λ·r^q,   F_R(λ) = Σ_i sup_{0≤ρ≤R} (H_i(ρ) − λρ^q)

(weak duality), and r is certified when r^q < (margin − F_R(λ)) / λ for some λ (for ℓ1 the best λ gives the
largest Σ_i Ĥ_i(ρ_i) over Σ_i ρ_i ≤ r, Ĥ_i the concave envelope of H_i). Certified when the bound stays below the
margin (with the precision's slack, as :func:`~asymcert.certify.functional.safe_radius`). Every product and sum
of the curves is rounded upward, the dual's value inflated far above its float64 error.

The cuts are the points 2^(k / GRID_PER_OCTAVE) for integers k (:func:`grid_points`), the same for every
input and precision, so the curves are computed once per input (:func:`path_radii`), from GRID_BELOW octaves
below the closed-form ℓ∞ radius (the smallest of any norm's) to GRID_ABOVE octaves above the largest radius asked
for, each norm searching GRID_ABOVE octaves past its own (further where a radius reaches
the end: GRID_EXTENSIONS), each input's cuts its own, and any radius is then
tried at the cost of a few tensor operations. A check at a given radius (:func:`path_holds`, the audit's)
cuts at every grid point below it and at the radius itself: a refinement of the search's pieces, whose
bounds are never wider on a smaller box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from asymcert.certify.reach_problem import ReachProblem
from asymcert.nn.feature_maps import (
    EPS64,
    coordinate_slopes,
    coordinate_weights_within,
    reach_matters,
    round_down,
    round_up,
)
from asymcert.threat import ResolvedThreatModel

PATH_NORMS = (1.0, 2.0, math.inf)
"""The norms the path bound takes."""

GRID_PER_OCTAVE = 4
"""Cuts per octave of each coordinate's path (:func:`grid_points`)."""

GRID_BELOW = 3
"""The grid starts this many octaves below the closed-form ℓ∞ radius (the smallest closed-form radius of any norm)."""

GRID_ABOVE = 2
"""... and ends this many octaves above the largest radius asked for; each norm searches this many octaves past its
own radius (:func:`_norm_cap`)."""

GRID_EXTENSIONS = 3
"""A norm whose radius reaches its search's end is searched again on a grid 2·GRID_ABOVE octaves longer, this many
times at most."""

GRID_MAX_PIECES = 64
"""At most this many pieces per input (a wider spread of radii ends the grid lower)."""

VERIFY_PIECES = GRID_MAX_PIECES + 2
"""Grid points below a radius that :func:`path_holds` cuts at: every point the search can have used."""

RADIUS_STEPS = 24
"""ℓ∞: bisection steps (log scale) between the closed-form radius and the grid's end."""

LAMBDA_OCTAVES = 8
"""ℓ2: λ is searched over this many octaves each way of ‖a‖₂ / 2r (the λ at which the dual is the closed form
‖a‖₂·r of the steepest slopes a)."""

LAMBDA_STEPS = 12
"""ℓ2: golden-section steps over log λ when certifying (every λ tried gives a certified radius)."""

VERIFY_LAMBDA_STEPS = 48
"""ℓ2: golden-section steps when checking a given radius (:func:`path_holds`), finer than the search's."""

BLOCK_ELEMENTS = 1 << 22
"""Inputs are processed in blocks of about this many (input, piece, feature) elements, so memory stays bounded."""

_BASES = tuple(2.0 ** (j / GRID_PER_OCTAVE) for j in range(GRID_PER_OCTAVE))
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class PathCurves:
    """Bounds on each coordinate's harm along its path (module docstring), both directions.

    Attributes:
        cum: (2, N, n, M + 1) float64 upper bounds C on the fall of the tangent plane after moving coordinate i
            up (index 0) or down (1) to the cut j (C[..., 0] = 0, nondecreasing in j); 0 where that direction is
            not allowed.
        slope: (2, N, n, M) upper bounds S on the fall per threat-model unit inside piece j.
        cuts: (N, M + 1) the cuts c_j in threat-model units (c_0 = 0, nondecreasing).
    """

    cum: torch.Tensor
    slope: torch.Tensor
    cuts: torch.Tensor


def grid_points(k: torch.Tensor) -> torch.Tensor:
    """2^(k / GRID_PER_OCTAVE) (float64, any shape) for integer-valued k: an exact power of two times one of
    GRID_PER_OCTAVE constants, so the same float on every device and in every call."""
    k = k.long()
    base = torch.tensor(_BASES, dtype=torch.float64, device=k.device)[k % GRID_PER_OCTAVE]
    return torch.ldexp(base, torch.div(k, GRID_PER_OCTAVE, rounding_mode="floor"))


def grid_cuts(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(N, M + 1) float64 cuts: 0, then the grid points from the last one ≤ ``low`` (N,) on, up to the first one
    ≥ ``high`` (N,) (at most GRID_MAX_PIECES pieces), repeated to the width M of the input that needs most, so
    each input's cuts depend on its own low and high alone. low, high > 0, finite."""
    k0 = torch.floor(GRID_PER_OCTAVE * torch.log2(low.double()))
    k1 = torch.ceil(GRID_PER_OCTAVE * torch.log2(high.double()))
    k1 = torch.minimum(k1 + (grid_points(k1) < high).double(), k0 + GRID_MAX_PIECES - 1)  # (log2's rounding)
    pieces = max(1, int((k1 - k0).max()) + 1) if k0.numel() else 1
    points = grid_points(k0[:, None] + torch.arange(pieces, device=k0.device)[None, :])
    points = torch.minimum(points, grid_points(torch.maximum(k1, k0))[:, None])  # (zero-length pieces after the end)
    return torch.cat([torch.zeros_like(points[:, :1]), points], dim=1)


def _piece_boxes(x64: torch.Tensor, tm: ResolvedThreatModel, cuts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) (N, 2M, n) float64: the raw boxes of each piece, moves up (pieces 0..M−1) then down, rounded
    outward, cut at the domain's walls when x_i is inside it (a piece beyond a wall is empty)."""
    scale, lower, upper = (t.to(x64.device).double()[None, None, :] for t in (tm.scale, tm.lower, tm.upper))
    x, inside = x64[:, None, :], tm.inside(x64)[:, None, :]
    a, b = cuts[:, :-1, None], cuts[:, 1:, None]
    near, far = round_down(a * scale), round_up(b * scale)
    at_x = a == 0
    up_lo, up_hi = torch.where(at_x, x, round_down(x + near)), round_up(x + far)
    dn_lo, dn_hi = round_down(x - far), torch.where(at_x, x, round_up(x - near))
    up_lo, up_hi = (torch.where(inside, torch.minimum(v, upper), v) for v in (up_lo, up_hi))
    dn_lo, dn_hi = (torch.where(inside, torch.maximum(v, lower), v) for v in (dn_lo, dn_hi))
    return torch.cat([up_lo, dn_lo], dim=1), torch.cat([up_hi, dn_hi], dim=1)


def path_curves(problem: ReachProblem, cuts: torch.Tensor) -> PathCurves | None:
    """:class:`PathCurves` at the given cuts; None when φ is not coordinate-wise or declares no weight bounds.

    Args:
        problem: φ, the gradient bounds (N, K·n), the inputs (N, *shape) and the threat model (margin and slack
            are not read). cuts: (N, M + 1) float64 cuts in the threat model's units, cuts[:, 0] = 0, nondecreasing.
    """
    phi, grads, x, tm = problem.phi, problem.grads, problem.x, problem.tm
    x64 = problem.x_flat.detach().double()
    n_rows, n = x64.shape
    if coordinate_slopes(phi, n) is None:
        return None
    cuts = cuts.double().to(x64.device)
    pieces = cuts.shape[1] - 1
    lo, hi = _piece_boxes(x64, tm, cuts)
    width = grads[0].shape[1]
    g_lo, g_hi = (g.double()[:, None, :].expand(n_rows, 2 * pieces, width).reshape(-1, width) for g in grads)
    weights = coordinate_weights_within(phi, g_lo, g_hi, lo.reshape(-1, n), hi.reshape(-1, n))
    if weights is None:
        return None
    w_lo, w_hi = (w.reshape(n_rows, 2, pieces, n) for w in weights)
    rate = torch.stack([(-w_lo[:, 0]).clamp_min(0.0), w_hi[:, 1].clamp_min(0.0)])  # (2, N, M, n)
    lo, hi = (v.reshape(n_rows, 2, pieces, n).transpose(0, 1) for v in (lo, hi))
    empty = ~(hi > lo)
    fall = torch.where(empty, 0.0, round_up(rate * round_up((hi - lo).clamp_min(0.0))))
    cum = round_up(torch.cumsum(fall, dim=2) * (1.0 + 2 * pieces * EPS64))  # sums of nonnegative terms
    slope = torch.where(empty, 0.0, round_up(rate * tm.scale.to(x64.device).double()[None, None, None, :]))
    allowed = torch.stack([d.to(x64.device) for d in tm.directions(x)])[..., None]  # (2, N, n, 1)
    zero = torch.zeros((), dtype=torch.float64)
    cum = torch.cat([torch.zeros_like(cum[:, :, :1]), cum], dim=2).transpose(2, 3)
    return PathCurves(torch.where(allowed, cum, zero), torch.where(allowed, slope.transpose(2, 3), zero), cuts)


def _sum_up(terms: torch.Tensor) -> torch.Tensor:
    """Σ over the last dimension of nonnegative float64 terms, rounded up (relative error below 2·n·eps)."""
    return round_up(terms.sum(dim=-1) * (1.0 + 2 * terms.shape[-1] * EPS64))


def harm_at(curves: PathCurves, radius: torch.Tensor) -> torch.Tensor:
    """(2, N, n) H_i(r) for each direction (module docstring) at radii r (N,) ≤ the last cut, rounded up."""
    r = radius.double().to(curves.cuts.device)
    pieces = curves.slope.shape[-1]
    j = torch.searchsorted(curves.cuts[:, 1:].contiguous(), r[:, None].contiguous()).clamp(max=pieces - 1)  # (N, 1)
    start = curves.cuts.gather(1, j)[:, 0]
    index = j[None, :, None, :].expand(2, -1, curves.cum.shape[2], 1)
    base, end = curves.cum.gather(3, index)[..., 0], curves.cum.gather(3, index + 1)[..., 0]
    along = round_up(curves.slope.gather(3, index)[..., 0] * round_up((r - start).clamp_min(0.0))[None, :, None])
    return torch.minimum(end, round_up(base + along))


def linf_path_harm(curves: PathCurves, radius: torch.Tensor) -> torch.Tensor:
    """(N,) float64 upper bound on how far an allowed move of ℓ∞ size ≤ r (N,) can lower the tangent plane of g
    at φ(x): Σ_i the larger direction's H_i(r)."""
    return _sum_up(harm_at(curves, radius).amax(dim=0))


@dataclass(frozen=True)
class DualPieces:
    """What F_R(λ) (:func:`path_dual`) needs of each piece, computed once for curves and a cap R: on piece j,
    H_i − λρ^q is concave (a line capped at C_j, minus λρ^q), so its sup over the line part is at the line's
    stationary point (q = 2: s / 2λ) clamped to [c_{j−1}, min(knee, c_j, R)] (the knee: where the line meets the
    cap; q = 1: one of those ends), or at the start of the capped part. All (2, N, n, M') float64, M' the pieces
    that start below R for some input; pieces beyond R are zero (they contribute ρ = 0's value, 0).

    Attributes:
        base: C_{j−1}, the line's value at its start c_{j−1} = lo. slope: S_j. lo, hi: where the line is used.
        cap_value: the capped part's value at its start (the line part's end, hi), without −λρ^q;
        cap_power: that start to the power q.
        size: (N,) Σ_i C_{i,M'} (scales the float64 error allowance). cap: (N,) R. q: 1 (ℓ1) or 2 (ℓ2).
    """

    base: torch.Tensor
    slope: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    cap_value: torch.Tensor
    cap_power: torch.Tensor
    size: torch.Tensor
    cap: torch.Tensor
    q: int


def dual_pieces(curves: PathCurves, cap: torch.Tensor, q: int) -> DualPieces:
    """:class:`DualPieces` of ``curves`` for R = ``cap`` (N,) > 0 and the power q (2 for ℓ2, 1 for ℓ1)."""
    cap4 = cap.double()[None, :, None, None]
    own = (curves.cuts[:, :-1] < cap.double()[:, None]).sum(dim=1).clamp(min=1)  # (N,) each input's pieces below R
    pieces = int(own.max())  # the others are all zero
    cuts, cum, s = curves.cuts[:, : pieces + 1], curves.cum[..., : pieces + 1], curves.slope[..., :pieces]
    a, b = cuts[None, :, None, :-1], torch.minimum(cuts[None, :, None, 1:], cap4)
    base, end = cum[..., :-1], cum[..., 1:]
    knee = torch.where(s > 0, a + (end - base) / s.clamp_min(1e-300), torch.full_like(s, math.inf))
    on_cap = torch.minimum(torch.maximum(knee, a), b)
    used = (a < cap4).expand_as(s)
    zero = torch.zeros((), dtype=torch.float64)
    hi = torch.minimum(b, knee).clamp_min(a)
    fields = (base, s, a.expand_as(s), hi, torch.minimum(end, base + s * (on_cap - a)), on_cap**q)
    base, slope, lo, hi, cap_value, cap_power = (torch.where(used, v, zero).contiguous() for v in fields)
    size = cum.gather(3, own[None, :, None, None].expand(2, -1, cum.shape[2], 1))[..., 0].amax(dim=0).sum(dim=1)
    return DualPieces(base, slope, lo, hi, cap_value, cap_power, size, cap.double(), q)


def path_dual(pieces: DualPieces, lam: torch.Tensor) -> torch.Tensor:
    """(N,) F_R(λ) = Σ_i sup_{0≤ρ≤R} (H_i(ρ) − λρ^q) (module docstring; q = 2 for ℓ2, 1 for ℓ1) for λ (N,) > 0,
    inflated far above its float64 error (on the line part the line is below its cap, so it is used uncapped:
    never smaller; it is evaluated from its start, so no term is larger than the curves' values and λR^q).
    Two work tensors, updated in place (this is the search's inner loop)."""
    lam4 = lam.double()[None, :, None, None]
    if pieces.q == 2:  # the line minus λρ²: its sup is at the stationary point s / 2λ, clamped to the line part
        rho = torch.mul(pieces.slope, 0.5 / lam4).clamp_(pieces.lo, pieces.hi)
        work = torch.sub(rho, pieces.lo).mul_(pieces.slope).add_(pieces.base)
        work.addcmul_(rho.mul_(rho), lam4, value=-1.0)
        other = rho
    else:  # a line minus a line: its sup is at one end, its start here and its end where the cap starts below
        work = torch.addcmul(pieces.base, pieces.lo, lam4, value=-1.0)
        other = torch.empty_like(work)
    torch.addcmul(pieces.cap_value, pieces.cap_power, lam4, value=-1.0, out=other)  # the capped part
    best = torch.maximum(work, other, out=work).clamp_min_(0.0).amax(dim=(0, 3))  # ρ = 0 gives 0
    total = best.sum(dim=1)
    size = pieces.size + lam.double() * pieces.cap**pieces.q * best.shape[1]
    return total + max(1e-9, 8 * best.shape[1] * EPS64) * (total + size)


def _quotient(pieces: DualPieces, budget: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(N,) (budget − F_R(λ)) / λ at λ = 2^t: any r with r^q below it and r ≤ R is certified (negative: none)."""
    lam = torch.exp2(t)
    return (budget - path_dual(pieces, lam)) / lam


def best_quotient(pieces: DualPieces, budget: torch.Tensor, lam0: torch.Tensor, steps: int) -> torch.Tensor:
    """(N,) the largest (budget − F_R(λ)) / λ found by golden-section search over log₂ λ in LAMBDA_OCTAVES octaves
    each way of λ₀ (N,) > 0. The quotient is quasi-concave in λ (F_R is convex), so the search closes in on its
    maximum; every value it returns was computed at some λ, so it is sound whatever the search finds."""
    t_lo, t_hi = torch.log2(lam0) - LAMBDA_OCTAVES, torch.log2(lam0) + LAMBDA_OCTAVES
    c, d = t_hi - _GOLDEN * (t_hi - t_lo), t_lo + _GOLDEN * (t_hi - t_lo)
    qc, qd = _quotient(pieces, budget, c), _quotient(pieces, budget, d)
    best = torch.maximum(qc, qd)
    for _ in range(steps):
        left = qc >= qd  # the maximum lies in [t_lo, d]
        t_hi, t_lo = torch.where(left, d, t_hi), torch.where(left, t_lo, c)
        probe = torch.where(left, t_hi - _GOLDEN * (t_hi - t_lo), t_lo + _GOLDEN * (t_hi - t_lo))
        qp = _quotient(pieces, budget, probe)
        best = torch.maximum(best, qp)
        c, qc, d, qd = (
            torch.where(left, probe, d),
            torch.where(left, qp, qd),
            torch.where(left, c, probe),
            torch.where(left, qc, qp),
        )
    return best


def _lambda_start(pieces: DualPieces, radius: torch.Tensor) -> torch.Tensor:
    """(N,) λ₀ > 0 where the search over λ is centred, a the steepest slope of each coordinate's pieces below R and
    r (N,) a radius: the λ at which the dual is the closed form, ‖a‖₂ / 2r for q = 2 (the dual is then ‖a‖₂·r)
    and max_i a_i for q = 1 (no coordinate then gains by moving)."""
    steepest = pieces.slope.amax(dim=(0, 3))
    if pieces.q == 1:
        return steepest.amax(dim=1).clamp_min(1e-300)
    return (torch.linalg.vector_norm(steepest, dim=1) / (2.0 * radius.clamp_min(1e-300))).clamp_min(1e-300)


def _dual_radius(
    curves: PathCurves, budget: torch.Tensor, start: torch.Tensor, cap: torch.Tensor, q: int
) -> torch.Tensor:
    """(N,) the largest ℓq radius (q = 1, 2) ≤ R = ``cap`` (N,) (≤ the last cut) the dual certifies (0 if none)."""
    pieces = dual_pieces(curves, cap, q)
    quotient = best_quotient(pieces, budget, _lambda_start(pieces, start), LAMBDA_STEPS)
    root = torch.sqrt(quotient.clamp_min(0.0)) if q == 2 else quotient.clamp_min(0.0)
    radius = root * (1.0 - 1e-6)  # λr^q stays 10⁻⁶ below budget − F_R(λ)
    return torch.minimum(radius, cap)


def _linf_radius(curves: PathCurves, budget: torch.Tensor, start: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(N,) the largest ℓ∞ radius in [start, top] (top (N,) ≤ the last cut) where Σ_i H_i(r) < budget, by bisection
    in log scale (H is nondecreasing); ``start`` where no radius tried holds."""
    best = torch.where(linf_path_harm(curves, top) < budget, top, start)
    lo, hi = start.clone(), top.clone()
    for _ in range(RADIUS_STEPS):
        r = torch.sqrt(lo * hi)
        holds = linf_path_harm(curves, r) < budget
        best = torch.where(holds, torch.maximum(best, r), best)
        lo, hi = torch.where(holds, r, lo), torch.where(holds, hi, r)
    return best


def _norm_cap(cuts: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """(N,) where one norm's search ends: the first of the cuts (N, M + 1) at or above GRID_ABOVE octaves past its
    ``start`` (N,), else the last cut. A norm whose radii are smaller than the grid's others' is not searched (nor
    its dual taken) over the whole grid, which would only loosen its bound."""
    want = (start.double() * 2.0**GRID_ABOVE)[:, None].contiguous()
    at = torch.searchsorted(cuts.contiguous(), want).clamp(max=cuts.shape[1] - 1)
    return cuts.gather(1, at)[:, 0]


def _path_radius(
    curves: PathCurves, budget: torch.Tensor, start: torch.Tensor, p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """((N,) the path bound's ℓp radius, p ∈ PATH_NORMS, (N,) bool: it reached its search's end). ``start`` (N,): the
    radius already certified, where ℓ∞ bisects from and the search over λ is centred."""
    cap = _norm_cap(curves.cuts, start)
    if math.isinf(p):
        found = _linf_radius(curves, budget, start, cap)
    else:
        found = _dual_radius(curves, budget, start, cap, int(p))
    return found, found >= cap


def _blocks(rows: torch.Tensor, per_row: int) -> list[torch.Tensor]:
    """``rows`` (indices) split so that each block holds about BLOCK_ELEMENTS elements of ``per_row`` each."""
    size = max(1, BLOCK_ELEMENTS // max(1, per_row))
    return list(torch.split(rows, size)) if rows.numel() else []


def path_radii(
    problem: ReachProblem, radii: dict[float, torch.Tensor], anchor: torch.Tensor
) -> dict[float, torch.Tensor]:
    """ℓp radii (N,) float64 ≥ the given ones (already certified) from the path bound, for each p of ``radii``
    in PATH_NORMS: the curves on one grid per input (module docstring), then bisection (ℓ∞) or the dual's
    search (ℓ1, ℓ2). The grid starts GRID_BELOW octaves below ``anchor`` (N,), the closed-form ℓ∞ radius (the
    smallest closed-form radius of any norm), whichever norms are asked for, and each norm searches up to its own
    cap (:func:`_norm_cap`), so a norm's radii do not depend on the others asked for. Inputs whose given radius
    or anchor is 0 or ∞ keep theirs. Empty when φ is not coordinate-wise, declares no weight bounds, or has affine
    steps only (:func:`~asymcert.nn.feature_maps.reach_matters`)."""
    norms = [p for p in radii if p in PATH_NORMS]
    phi, margin = problem.phi, problem.margin
    if not norms or not reach_matters(phi) or coordinate_slopes(phi, problem.x_flat.shape[1]) is None:
        return {}
    out = {p: radii[p].double().clone().to(margin.device) for p in norms}
    starts, anchor = torch.stack([out[p] for p in norms]), anchor.double().to(margin.device)
    usable = (margin > 0) & (anchor > 0) & torch.isfinite(anchor)
    searching = (starts > 0) & torch.isfinite(starts) & usable[None, :]  # (P, N)
    rows = torch.nonzero(searching.any(dim=0)).flatten()
    searching = searching[:, rows]
    low = anchor[rows] / 2.0**GRID_BELOW
    high = torch.maximum(torch.where(searching, starts[:, rows], 0.0).amax(dim=0), anchor[rows]) * 2.0**GRID_ABOVE
    for _ in range(GRID_EXTENSIONS + 1):  # a norm certified up to its search's end gets a longer grid
        if rows.numel() == 0:
            break
        capped = _grid_round(problem, out, rows, searching, grid_cuts(low, high))
        if capped is None:
            return {}
        keep = capped.any(dim=0)
        rows, low, high, searching = rows[keep], low[keep], high[keep] * 2.0 ** (2 * GRID_ABOVE), capped[:, keep]
    return out


def _grid_round(
    problem: ReachProblem,
    out: dict[float, torch.Tensor],
    rows: torch.Tensor,
    searching: torch.Tensor,
    cuts: torch.Tensor,
) -> torch.Tensor | None:
    """Raise ``out`` (norm → (N,) radii, in place) at ``rows`` (R,) by the path bound on ``cuts`` (R, M + 1), block by
    block, for the norms (``out``'s order) and rows that ``searching`` (P, R) marks; returns (P, R) bool: that
    norm's radius reached its search's end there (a longer grid may certify more), or None when
    :func:`path_curves` is None."""
    capped = torch.zeros_like(searching)
    pieces = (cuts[:, 1:] > cuts[:, :-1]).sum(dim=1)  # before the zero-length padding, which changes nothing
    order = torch.argsort(pieces, stable=True)  # so that inputs with as many pieces share a block
    for at in _blocks(order, 2 * cuts.shape[1] * problem.grads[0].shape[1]):
        block, width = problem.take(rows[at]), int(pieces[at].max()) + 1
        curves = path_curves(block, cuts[at, :width])
        if curves is None:
            return None
        for k, (p, radii) in enumerate(out.items()):
            start, mine = radii[rows[at]], searching[k, at].to(radii.device)
            if not bool(mine.any()):  # (a longer grid for another norm only)
                continue
            found, ended = _path_radius(curves, block.budget, start, p)
            radii[rows[at]] = torch.where(mine, torch.maximum(start, found.to(radii.device)), start)
            capped[k, at] = ended.to(capped.device) & searching[k, at]
    return capped


def verify_cuts(radius: torch.Tensor) -> torch.Tensor:
    """(N, VERIFY_PIECES + 1) cuts for a check at radius r (N,) > 0: 0, the VERIFY_PIECES grid points below r
    (the points at or above it replaced by r), and r."""
    r = radius.double()
    k = torch.ceil(GRID_PER_OCTAVE * torch.log2(r)) + 1  # (a point at or above r, rounding aside, becomes r)
    points = grid_points(k[:, None] - VERIFY_PIECES + torch.arange(VERIFY_PIECES, device=r.device)[None, :])
    points = torch.minimum(points, r[:, None])
    return torch.cat([torch.zeros_like(r[:, None]), points, r[:, None]], dim=1)


def _holds_at(curves: PathCurves, budget: torch.Tensor, radius: torch.Tensor, p: float) -> torch.Tensor:
    """(N,) bool: the path bound on ``curves`` (cut up to r) certifies ℓp radius r (N,) with the finer λ search."""
    if math.isinf(p):
        return linf_path_harm(curves, radius) < budget
    pieces = dual_pieces(curves, radius, int(p))
    return best_quotient(pieces, budget, _lambda_start(pieces, radius), VERIFY_LAMBDA_STEPS) > radius**pieces.q


def path_holds(problem: ReachProblem, p: float, radius: torch.Tensor) -> torch.Tensor | None:
    """(N,) bool: the path bound certifies ℓp radius r (N,) by itself, p ∈ PATH_NORMS, with cuts at every grid
    point below r and at r (:func:`verify_cuts`, finer than any search's) and a finer search over λ; False
    where r is 0 or ∞ or the margin is not positive; None for another p, or where :func:`path_curves` is None."""
    margin = problem.margin
    if p not in PATH_NORMS or coordinate_slopes(problem.phi, problem.x_flat.shape[1]) is None:
        return None
    r = radius.double().to(margin.device)
    holds = torch.zeros_like(r, dtype=torch.bool)
    rows = torch.nonzero((r > 0) & torch.isfinite(r) & (margin > 0)).flatten()
    for at in _blocks(rows, 2 * (VERIFY_PIECES + 1) * problem.grads[0].shape[1]):
        block = problem.take(at)
        curves = path_curves(block, verify_cuts(r[at]))
        if curves is None:
            return None
        holds[at] = _holds_at(curves, block.budget, r[at], p)
    return holds
