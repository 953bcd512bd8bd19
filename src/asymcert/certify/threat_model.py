"""Certificates under a threat model (:mod:`asymcert.threat`): masks, one-sided moves, domain, scales.

Closed form for feature-convex models with a coordinate-wise φ. Write the move as δ = scale ⊙ u,
‖u‖_p ≤ r in threat-model units. g convex gives, with w = ∇g(φ(x)) and s = s(x) > 0,

    s(x + δ) ≥ s + wᵀ(φ(x + δ) − φ(x)) = s + Σ_i Σ_k w_{k,i} c_{k,i} δ_i,

where φ_{k·n+i} is the k-th feature that input coordinate i feeds and c_{k,i} ∈ [lo_{k,i}, hi_{k,i}]
its difference quotient (:meth:`~asymcert.nn.FeatureMap.slope_bounds`; for a coordinate-wise φ each
coordinate of δ moves its own features, and summing one coordinate at a time keeps this exact).
A move up (δ_i > 0) lowers the score by at most h⁺_i·δ_i with h⁺_i = max(0, −Σ_k min(w c)) and a
move down by at most h⁻_i·|δ_i| with h⁻_i = max(0, Σ_k max(w c)), the min/max over c in its
interval (and over w in its error interval on the rigorous path). When every step of φ declares
:meth:`~asymcert.nn.FeatureMap.weight_bounds`, the sum Σ_k w_{k,i} c_{k,i} = ŵ_i is bounded as a whole
instead, backwards through the steps (tighter: a shared slope factor counts once, and hinges give the
extreme prefix sums of their weights), and h⁺_i = max(0, −min ŵ_i), h⁻_i = max(0, max ŵ_i). Weight bounds
need only one coordinate moved at a time, so a map that is not coordinate-wise can declare them too
(pair-min, group-min: a move of x_i moves its pairs, or sets, by a share in [0, 1] of it).
The threat model forbids some directions (immutable, one-sided, no room left in the domain);
with a_i = scale_i · the larger harm over the allowed directions (0 when none is allowed),

    s(x + δ) ≥ s − Σ_i a_i |u_i| ≥ s − ‖a‖_{p*} ‖u‖_p,   so   r_TM = s / ‖a‖_{p*}.

Without constraints and with unit scales a_i ≤ Lip_p(φ)-weighted |w| and r_TM is at least the plain
ℓp radius; every allowed direction removed or domain wall hit only makes it larger. The margin s
is the same guarded lower bound the ℓp certificate uses, and the sums over K features carry an
absolute rounding allowance, so rounding never enlarges a radius.

Reach (``reach=True``, :func:`reach_radii`): a move with ‖u‖_p ≤ r has |u_i| ≤ r, so coordinate i stays
in [x_i − r·scale_i, x_i + r·scale_i] (allowed sides only, cut at the domain). φ's weight bounds taken
on that box (:meth:`~asymcert.nn.FeatureMap.reach_weight_bounds`) give costs a(r) ≤ a, and
ρ(r) = s / ‖a(r)‖_{p*} certifies min(r, ρ(r)); the search over r keeps the best, never below r_TM.
For a φ that is not coordinate-wise (pair-min, group-min) every coordinate's box is its whole reach, both sides
(a partner moved the other way first may be anywhere in its own), and pair-min's (group-min's) point bound combines
with the box (:func:`pair_reach_point_costs`: both hold on one decomposition of the move); ρ(r) is the
larger of the two (:func:`reach_rho`).

Any other certified model (or a φ that is not coordinate-wise) gets the generic fallback: a move of
threat-model size r changes at most the movable coordinates, each by ≤ scale_i·|u_i|, so its raw
ℓp size is ≤ r · max_{movable i} scale_i, and a raw ℓp radius R gives r_TM = R / that maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch

from asymcert.certify.feature_convex import Reference, check_cuts, check_reach, flag_certificate, flag_margins, lp_radii
from asymcert.certify.functional import dual_norm, safe_radius
from asymcert.certify.one_vs_rest import certify_one_vs_rest
from asymcert.certify.reach_path import path_holds, path_radii
from asymcert.certify.reach_problem import ReachProblem
from asymcert.certify.result import Certificate, class_radii_key
from asymcert.certify.scope import call_scope, chunk_scope
from asymcert.certify.threat_guard import guarded_threat_radii
from asymcert.errors import ConfigError
from asymcert.nn.feature_maps import (
    EPS64,
    Bounds,
    Compose,
    GroupMin,
    Identity,
    Log1p,
    PairMin,
    Shift,
    Standardize,
    coordinate_slopes,
    coordinate_weights,
    coordinate_weights_within,
    per_copy,
    reach_input_boxes,
    reach_matters,
    reach_weights_back,
    round_down,
    round_up,
)
from asymcert.threat import ResolvedThreatModel, ThreatModel

if TYPE_CHECKING:
    from asymcert.models.feature_convex import FeatureConvexClassifier
    from asymcert.models.one_vs_rest import OneVsRestConvex

__all__ = [
    "allowed_costs",
    "fallback_radii",
    "feature_convex_threat",
    "harm_bounds",
    "harm_coefficients",
    "one_vs_rest_threat",
    "pair_reach_point_costs",
    "reach_costs",
    "reach_radii",
    "reach_rho",
    "reach_verified",
    "resolve_for",
    "threat_lower_bound",
]

ONE_BOX_FIRST = (1.0,)
"""Norms whose path search starts from the one-box search's radius (:func:`_reach_radii_all`)."""

REACH_STEPS = 10
"""Radii tried per input and norm by the reach search (:func:`reach_radii`): the closed form's radius, then
bisection of [it, ρ(it)] in log scale. It replaced (session 13) a 16-step search without that bracket,
with the same certified figures in ``benchmarks/results/reach_gain.json``."""


def resolve_for(threat_model: ThreatModel | ResolvedThreatModel, x: torch.Tensor) -> ResolvedThreatModel:
    """``threat_model`` resolved for inputs like ``x`` (N, *shape); a ThreatModel may name features by index only.

    Raises:
        ConfigError: a resolved threat model for another number of features, or a ThreatModel naming
            features by CSV header (resolve it with the names first: ``tm.resolve(names, d)``).
    """
    d = int(x[0].numel()) if x.shape[0] else int(torch.tensor(x.shape[1:]).prod())
    if isinstance(threat_model, ResolvedThreatModel):
        if threat_model.n_features != d:
            raise ConfigError(f"threat model is for {threat_model.n_features} features, the inputs have {d}")
        return threat_model
    return threat_model.resolve(None, d)


def harm_coefficients(
    grad_lo: torch.Tensor, grad_hi: torch.Tensor, slope_lo: torch.Tensor, slope_hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h⁺, h⁻): (N, n) float64 bounds on how fast the score can fall per raw unit of moving each
    input coordinate up / down (see the module docstring), rounded up.

    Args:
        grad_lo, grad_hi: (N, K·n) bounds on ∇g(φ(x)), flattened features (feature k·n + i is the
            k-th one of input coordinate i).
        slope_lo, slope_hi: (K, n) difference-quotient intervals of φ.
    """
    k, n = slope_lo.shape
    wl = grad_lo.double().reshape(-1, k, n)
    wh = grad_hi.double().reshape(-1, k, n)
    corners = torch.stack([wl * slope_lo, wl * slope_hi, wh * slope_lo, wh * slope_hi])
    low, high = corners.amin(dim=0), corners.amax(dim=0)
    # absolute allowance for the rounding of the products and of the K-term float64 sum of the terms
    # actually summed: (K + 1)·eps·Σ|terms| (0 when every term is 0, so an exactly harmless direction,
    # e.g. a monotone feature moved the harmless way, keeps harm 0 and an infinite radius)
    up = (-low.sum(dim=1) + (k + 1) * EPS64 * low.abs().sum(dim=1)).clamp_min(0.0)
    down = (high.sum(dim=1) + (k + 1) * EPS64 * high.abs().sum(dim=1)).clamp_min(0.0)
    return up, down


def harm_bounds(
    phi: torch.nn.Module, grad_lo: torch.Tensor, grad_hi: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(h⁺, h⁻): (N, n) float64 bounds on how fast the score can fall per raw unit of moving each input
    coordinate up / down, for ∇g(φ(x)) within ``grad_lo``, ``grad_hi`` (N, K·n); None when φ is not
    coordinate-wise.

    φ's weight bounds (:func:`~asymcert.nn.feature_maps.coordinate_weights`: ŵ_i with
    wᵀΔφ = Σ_i ŵ_i δ_i, rounded outward) when every step declares them, then h⁺ = max(0, −min ŵ),
    h⁻ = max(0, max ŵ); otherwise the slope intervals summed term by term (:func:`harm_coefficients`).
    """
    weights = coordinate_weights(phi, grad_lo, grad_hi, n)
    if weights is not None:
        return (-weights[0]).clamp_min(0.0), weights[1].clamp_min(0.0)
    slopes = coordinate_slopes(phi, n)
    if slopes is None:
        return None
    lo, hi = (t.to(grad_lo.device) for t in slopes)
    return harm_coefficients(grad_lo, grad_hi, lo, hi)


def _move_costs(
    model: FeatureConvexClassifier, grads: Bounds, x: torch.Tensor, tm: ResolvedThreatModel
) -> torch.Tensor | None:
    """(N, n) a_i = scale_i · the largest allowed harm for ∇g within ``grads`` (:func:`gradient_interval`),
    or None when φ is not coordinate-wise."""
    harms = harm_bounds(model.feature_map, *grads, int(x[0].numel()))
    if harms is None:
        return None
    return allowed_costs(harms, tm.directions(x), tm.scale.to(harms[0].device))


_INCREASING = (Identity, Shift, Standardize, Log1p)  # coordinate-wise, nondecreasing: directions carry over


def pair_point_harms(
    phi: torch.nn.Module, grad_lo: torch.Tensor, grad_hi: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(h⁺, h⁻, C): harms (N, n) as :func:`harm_bounds` gives them, with pair-min's pairs that cannot move
    at x left out (:meth:`~asymcert.nn.feature_maps.PairMin.point_weight_bounds`), and the constant harm
    C (N,) that their rounding allows. For φ = nondecreasing coordinate-wise steps (identity, shift,
    standardize, log1p) → pair-min or group-min (:meth:`~asymcert.nn.feature_maps.GroupMin.point_weight_bounds`)
    → steps with weight bounds (hinges); None for any other φ.
    """
    split = _pair_split(phi)
    if split is None:
        return None
    pair, before, after = split
    n = pair.floor.numel()
    # without boxes, every step's global weight bounds (reach_weights_step's fallback)
    bounds = reach_weights_back(after, _per_input(grad_lo, grad_hi, n), [None] * len(after))
    found = None if bounds is None else pair.point_weight_bounds(*bounds, _pair_input(before, x, n))
    if found is None:
        return None
    up = reach_weights_back(before, found[0], [None] * len(before))
    down = reach_weights_back(before, found[1], [None] * len(before))
    if up is None or down is None:
        return None
    return (-up[0].reshape(-1, n)).clamp_min(0.0), down[1].reshape(-1, n).clamp_min(0.0), found[2]


def _pair_split(phi: torch.nn.Module) -> tuple[PairMin | GroupMin, list[torch.nn.Module], list[torch.nn.Module]] | None:
    """(pair-min or group-min, the steps before it, the steps after it) for φ = nondecreasing coordinate-wise
    steps → one pair-min or group-min → other steps; None for any other φ."""
    steps: list[torch.nn.Module] = list(phi.feature_maps) if isinstance(phi, Compose) else [phi]
    at = [i for i, m in enumerate(steps) if isinstance(m, (PairMin, GroupMin))]
    if len(at) != 1 or not all(isinstance(m, _INCREASING) for m in steps[: at[0]]):
        return None
    return cast("PairMin | GroupMin", steps[at[0]]), steps[: at[0]], steps[at[0] + 1 :]


def _pair_input(before: Sequence[torch.nn.Module], x: torch.Tensor, n: int) -> torch.Tensor:
    """Pair-min's input z (N, n) float64 at the raw inputs x: the steps before it, in float64."""
    z = x.detach().reshape(x.shape[0], n).double()
    with torch.no_grad():
        for m in before:
            z = m(z)
    return z


def _per_input(grad_lo: torch.Tensor, grad_hi: torch.Tensor, n: int) -> Bounds:
    """Gradient bounds (N, K·n) as float64 (N, K, n): copy k of input coordinate i at [:, k, i]."""
    return per_copy(grad_lo.double(), n), per_copy(grad_hi.double(), n)


def allowed_costs(
    harms: tuple[torch.Tensor, torch.Tensor], directions: tuple[torch.Tensor, torch.Tensor], scale: torch.Tensor
) -> torch.Tensor:
    """(N, n) a_i = scale_i · the larger of the harms (h⁺, h⁻) (N, n) over the allowed directions (up, down)
    (N, n) bool, 0 where neither is allowed; ``scale`` (n,) broadcasts."""
    (up_harm, down_harm), (up, down) = harms, directions
    zero = torch.zeros_like(up_harm)
    return torch.maximum(torch.where(up, up_harm, zero), torch.where(down, down_harm, zero)) * scale


def reach_costs(problem: ReachProblem, radius: torch.Tensor) -> torch.Tensor | None:
    """(N, n) move costs a_i(r), as :func:`_move_costs`, for moves of threat-model size ≤ r only.

    Such a move keeps every coordinate inside its reach [x_i − r·scale_i, x_i + r·scale_i] (the allowed
    directions only, cut at the domain's walls when x_i is inside it), since |u_i| ≤ ‖u‖_p ≤ r. φ's
    weight bounds are taken on that box (:func:`~asymcert.nn.feature_maps.coordinate_weights_within`):
    for a coordinate-wise φ the harm of a move up from the box [x, x_up], of a move down from [x_dn, x];
    otherwise (pair-min) both from [x_dn, x_up], since the harm of moving x_i depends on where its partners
    are, and a partner moved the other way may already be anywhere in its reach.

    Args:
        problem: φ, the gradient bounds (N, K·n), the inputs (N, *shape) and the threat model (margin and
            slack are not read). radius: (N,) float64 radii r ≥ 0 in the threat model's units.
    Returns:
        (N, n) float64 costs, or None when φ declares no weight bounds.
    """
    phi, grads, x, tm = problem.phi, problem.grads, problem.x, problem.tm
    x64, x_dn, x_up = _reach_box(x, tm, radius)
    up, down = (d.to(x64.device) for d in tm.directions(x))
    scale = tm.scale.to(x64.device)[None, :]
    if coordinate_slopes(phi, x64.shape[1]) is not None:  # a coordinate's harm depends on its own move only
        w_up = coordinate_weights_within(phi, grads[0], grads[1], x64, x_up)
        w_dn = coordinate_weights_within(phi, grads[0], grads[1], x_dn, x64)
    else:  # pair-min: the partners may have moved either way first, so every coordinate gets its whole reach
        w_up = w_dn = coordinate_weights_within(phi, grads[0], grads[1], x_dn, x_up)
    if w_up is None or w_dn is None:
        return None
    return allowed_costs(((-w_up[0]).clamp_min(0.0), w_dn[1].clamp_min(0.0)), (up, down), scale)


def _reach_box(x: torch.Tensor, tm: ResolvedThreatModel, radius: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(x, x_dn, x_up) (N, n) float64: the inputs and the box their moves of threat-model size ≤ r (N,) stay
    in, rounded outward: the allowed sides only, cut at the domain's walls when x_i is inside it."""
    x64 = x.detach().flatten(1).double()
    scale, lower, upper = (t.to(x64.device)[None, :] for t in (tm.scale, tm.lower, tm.upper))
    up, down = (d.to(x64.device) for d in tm.directions(x))
    inside = tm.inside(x64)
    reach = round_up(radius.double().to(x64.device)[:, None] * scale)
    x_up = round_up(x64 + reach)
    x_up = torch.where(up, torch.where(inside, torch.minimum(x_up, upper), x_up), x64)
    x_dn = round_down(x64 - reach)
    x_dn = torch.where(down, torch.where(inside, torch.maximum(x_dn, lower), x_dn), x64)
    return x64, x_dn, x_up


def pair_reach_point_costs(problem: ReachProblem, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a(r), C): move costs (N, n) as :func:`reach_costs` gives them, with pair-min's pairs that cannot move
    at x left out (:meth:`~asymcert.nn.feature_maps.PairMin.reach_point_weight_bounds`: both bounds on one
    decomposition of the move), and the constant harm C (N,) of their rounding; for the φ that
    :func:`pair_point_harms` takes, else None. Every step gets the box of the whole reach, both sides."""
    grads, x, tm = problem.grads, problem.x, problem.tm
    split = _pair_split(problem.phi)
    if split is None:
        return None
    pair, before, after = split
    _, x_dn, x_up = _reach_box(x, tm, radius)
    n, at = pair.floor.numel(), len(before)
    boxes = reach_input_boxes([*before, pair, *after], (x_dn.reshape(-1, 1, n), x_up.reshape(-1, 1, n)))
    w_after = reach_weights_back(after, _per_input(*grads, n), boxes[at + 1 :])
    pair_box = boxes[at]
    z = _pair_input(before, x, n)
    found = None if w_after is None or pair_box is None else pair.reach_point_weight_bounds(*w_after, *pair_box, z)
    if found is None:
        return None
    w_up = reach_weights_back(before, found[0], boxes[:at])
    w_dn = reach_weights_back(before, found[1], boxes[:at])
    if w_up is None or w_dn is None:
        return None
    harms = ((-w_up[0]).reshape(-1, n).clamp_min(0.0), w_dn[1].reshape(-1, n).clamp_min(0.0))
    up, down = (d.to(harms[0].device) for d in tm.directions(x))
    return allowed_costs(harms, (up, down), tm.scale.to(harms[0].device)[None, :]), found[2]


def reach_rho(problem: ReachProblem, p: float, radius: torch.Tensor) -> torch.Tensor | None:
    """ρ(r) (N,) float64: the radius the costs a(r) of moves of size ≤ r certify, margin / ‖a(r)‖_{p*} rounded
    down (:func:`reach_costs`), or the larger one from pair-min's point-and-reach costs
    (:func:`pair_reach_point_costs`, their constant off the margin first); None when φ declares no
    weight bounds. Certifies min(r, ρ(r))."""
    costs = reach_costs(problem, radius)
    if costs is None:
        return None
    margin, slack = problem.margin, problem.slack
    rho = safe_radius(margin, dual_norm(costs, p), slack).to(margin.device)
    found = pair_reach_point_costs(problem, radius)
    if found is not None:
        left = round_down(margin.double() - found[1].to(margin.device))
        rho = torch.maximum(rho, safe_radius(left, dual_norm(found[0], p), slack).to(margin.device))
    return rho


def reach_radii(problem: ReachProblem, p: float, start: torch.Tensor) -> torch.Tensor:
    """Radii (N,) float64 ≥ ``start`` from the reach-aware bound: every move of size ≤ r is harmless when
    the margin exceeds ‖a(r)‖_{p*}·‖u‖_p with a(r) = :func:`reach_costs`, so ρ(r) = margin / ‖a(r)‖_{p*}
    (rounded down as :func:`~asymcert.certify.functional.safe_radius` does) certifies min(r, ρ(r)) for
    any r. ρ falls as r grows, so its fixed point lies in [start, ρ(start)] (``start``: the closed form's
    radius, certified without reach); per input the search tries REACH_STEPS radii: ``start``, then
    bisection of that bracket in log scale (doubling instead while ρ(start) is ∞), and keeps the largest
    min(r, ρ(r)) seen. Inputs whose ``start`` is 0 or ∞ keep it.
    """
    out = start.double().clone()
    rows = torch.nonzero((out > 0) & torch.isfinite(out)).flatten()
    if rows.numel() == 0 or not reach_matters(problem.phi):  # affine steps only: nothing to gain
        return out
    searched = problem.take(rows)
    best = out[rows]
    lo, hi = best.clone(), torch.full_like(best, math.inf)
    r = best.clone()
    for _ in range(REACH_STEPS):
        found = reach_rho(searched, p, r)
        if found is None:
            return out
        rho = found.to(best.device)
        best = torch.maximum(best, torch.minimum(r, rho))
        holds = rho >= r
        # after the first try, [start, ρ(start)] brackets the fixed point; later tries bisect
        first = torch.isinf(hi) & (r == lo)
        hi = torch.where(first & torch.isfinite(rho), torch.maximum(rho, lo), torch.where(holds, hi, r))
        lo = torch.where(holds & ~first, r, lo)
        r = torch.where(torch.isinf(hi), 2.0 * lo, torch.sqrt(lo * hi))
    out[rows] = best
    return out


def reach_verified(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    threat_model: ResolvedThreatModel,
    radii: dict[float, torch.Tensor],
    guard: bool = True,
) -> dict[float, torch.Tensor] | None:
    """Whether a float64 evaluation of the reach-aware bound certifies each given radius by itself.

    The reach search's result depends on the radii it tries, so a radius computed in another precision
    is checked here at that radius: ρ(r) ≥ r with the float64 margin and costs a(r) (:func:`reach_costs`),
    or pair-min's point bound (:func:`pair_point_harms`), where the search starts, or the path bound
    (:func:`~asymcert.certify.reach_path.path_holds`, coordinate-wise φ) certifies r.

    Args:
        model: the model; x: (N, *shape) inputs; threat_model: resolved for them; radii: norm → (N,)
            radii in its units; guard: as the certificate was made.
    Returns:
        norm → (N,) bool (True also for radius 0), or None when φ declares no weight bounds.
    """
    problem = reach_problem(model, x, threat_model, "float64", None, guard, True)[0]
    zero = {p: torch.zeros_like(r, dtype=torch.float64) for p, r in radii.items()}
    points = _pair_point_radii(problem, zero)  # the search may start there
    out = {}
    for p, r in radii.items():
        found = reach_rho(problem, p, r.double())
        if found is None:
            return None
        rho = found.to(r.device)
        out[p] = (rho >= r) | (points[p].to(r.device) >= r) | (r == 0)
        path = path_holds(problem, p, r.double())  # or the path's
        out[p] |= path.to(r.device) if path is not None else torch.zeros_like(out[p])
    return out


def reach_problem(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    threat_model: ResolvedThreatModel,
    precision: str,
    slack: float | None,
    guard: bool,
    validate: bool,
) -> tuple[ReachProblem, Reference, torch.Tensor, torch.Tensor]:
    """One evaluation of ``model`` on x (N, *shape) in ``precision``
    (:func:`~asymcert.certify.feature_convex.flag_margins`) as the reach bounds read it, with what the certificate
    needs besides: (problem, the evaluation, flagged (N,) bool, the score the flag is taken from (N,))."""
    ref, flagged, margin, own_score, used_slack = flag_margins(model, x, precision, slack, guard, validate)
    signs = gradient_signs(model) if validate else None  # the signs hold only for a model that validated
    grads = gradient_interval(ref.grad, ref.grad_error, used_slack, signs)
    return ReachProblem(model.feature_map, grads, x, threat_model, margin, used_slack), ref, flagged, own_score


def _pair_point_radii(problem: ReachProblem, radii: dict[float, torch.Tensor]) -> dict[float, torch.Tensor]:
    """``radii``, raised where pair-min's point harms (:func:`pair_point_harms`) certify more: both bounds
    hold, so the larger radius does; the constant harm C comes off the margin first. Unchanged for a φ
    without pair-min."""
    found = pair_point_harms(problem.phi, *problem.grads, problem.x)
    if found is None:
        return radii
    up, down, const = found
    costs = allowed_costs((up, down), problem.tm.directions(problem.x), problem.tm.scale.to(up.device))
    left = round_down(problem.margin.double() - const.to(problem.margin.device))
    slack = problem.slack
    return {p: torch.maximum(safe_radius(left, dual_norm(costs, p), slack).to(r.device), r) for p, r in radii.items()}


def feature_convex_threat(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    norms: tuple[float, ...],
    threat_model: ResolvedThreatModel,
    precision: str = "auto",
    slack: float | None = None,
    guard: bool = True,
    validate: bool = True,
    cuts: int = 0,
    reach: bool = False,
) -> Certificate:
    """Feature-convex certificates under a threat model, one forward and one backward pass.

    Same options, decisions and margins as :func:`~asymcert.certify.feature_convex.certify_feature_convex`;
    radii (N,) float64 are in threat-model units (‖δ / scale‖_p) and hold for every move the threat
    model allows. A φ that is not coordinate-wise gets the generic fallback (:func:`fallback_radii`).
    ``reach=True``: then enlarge each radius by the reach-aware bounds (:func:`_reach_radii_all`: for a
    coordinate-wise φ along each coordinate's path, else φ's slopes only where a move of that size can take
    each coordinate); tens of times the closed form's time, so off by default. False (default): the closed form
    alone (what the ONNX graph computes).

    Raises:
        ConfigError: ``cuts`` ≥ 2: multi-cut certificates are not available under a threat model.
    """
    if check_cuts(cuts) > 1:
        raise ConfigError(
            f"cuts = {cuts}: multi-cut certificates are not available under a threat model "
            "(use cuts=0, or certify without the threat model)"
        )
    with call_scope(), chunk_scope():
        problem, ref, flagged, own_score = reach_problem(model, x, threat_model, precision, slack, guard, validate)
        costs = _move_costs(model, problem.grads, x, threat_model)
        reach = check_reach(reach)
        if guard:  # the deployed model's rounding and range, as the guard assumes them, along every allowed move
            radii = _guarded_radii(model, x, ref, problem, costs, norms, reach)
            if reach:  # the guard's box grows with the radius: never below the closed form's guarded radii
                closed = _guarded_radii(model, x, ref, problem, costs, norms, False)
                radii = {p: torch.maximum(r, closed[p].to(r)) for p, r in radii.items()}
        else:
            radii = _threat_radii(model, ref, problem, costs, norms, reach)
    return flag_certificate(flagged, radii, own_score, threat_model.units())


def _guarded_radii(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    ref: Reference,
    problem: ReachProblem,
    costs: torch.Tensor | None,
    norms: tuple[float, ...],
    reach: bool,
) -> dict[float, torch.Tensor]:
    """:func:`_threat_radii` (norm → (N,) threat-model units) made to hold for the deployed model's float32
    decision along every allowed move (:func:`~asymcert.certify.threat_guard.guarded_threat_radii`)."""

    def lowered(drop: torch.Tensor, p: float) -> torch.Tensor:
        less = replace(problem, margin=(problem.margin - drop.to(problem.margin)).clamp_min(0.0))
        return _threat_radii(model, ref, less, costs, (p,), reach)[p]

    radii = _threat_radii(model, ref, problem, costs, norms, reach)
    return guarded_threat_radii(model, x, ref, radii, problem.tm, lowered)


def _threat_radii(
    model: FeatureConvexClassifier,
    ref: Reference,
    problem: ReachProblem,
    costs: torch.Tensor | None,
    norms: tuple[float, ...],
    reach: bool,
) -> dict[float, torch.Tensor]:
    """The radii (norm → (N,) threat-model units) of :func:`feature_convex_threat` for ``problem``'s margins: the
    generic fallback, the closed form from the move ``costs`` (None: φ declares no bounds), pair-min's point
    bound, and with ``reach`` the reach-aware bounds; each the largest that holds."""
    margin, slack, x, tm = problem.margin, problem.slack, problem.x, problem.tm
    # the generic fallback is a certificate under every threat model: never report less than it
    radii = fallback_radii(lp_radii(model, ref, margin, norms, slack), tm, x)
    if costs is not None:
        radii = {p: torch.maximum(safe_radius(margin, dual_norm(costs, p), slack), radii[p]) for p in norms}
        radii = _pair_point_radii(problem, radii)
        if reach:  # the path's grid is anchored at the closed-form ℓ∞ radius, whatever the norms
            anchor = safe_radius(margin, dual_norm(costs, math.inf), slack)
            radii = _reach_radii_all(problem, radii, anchor)
    return radii


def _reach_radii_all(
    problem: ReachProblem, radii: dict[float, torch.Tensor], anchor: torch.Tensor
) -> dict[float, torch.Tensor]:
    """``radii`` (norm → (N,) certified) raised by the reach-aware bounds: for a coordinate-wise φ along each
    coordinate's path (:func:`~asymcert.certify.reach_path.path_radii`), ℓ1 from the one-box search's radius
    (either may be the larger: the path's pieces can reach past r), ℓ2 and ℓ∞ from the closed form's; else
    (pair-min, group-min) φ's slopes only where a move of that size can take each coordinate (:func:`reach_radii`).
    ``anchor`` (N,): the closed-form ℓ∞ radius, where the path's grid is anchored."""
    boxed = {p: reach_radii(problem, p, r) for p, r in radii.items() if p in ONE_BOX_FIRST}
    path = path_radii(problem, {**radii, **boxed}, anchor)
    searched = {**boxed, **path}  # each norm gets the one-box search once, whether or not the path applies
    return {p: searched[p] if p in searched else reach_radii(problem, p, r) for p, r in radii.items()}


def gradient_interval(
    grad: torch.Tensor, grad_error: torch.Tensor | None, slack: float, signs: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) (N, K·n) float64: ∇g ∓ its error bound, rounded outward (the exact gradient's range).

    Without a rigorous ``grad_error`` (the "float64" and "model" precisions) every component gets
    ± slack·max_k |∇g_k| (the precision's relative allowance, of the largest component), so that sums
    of components that cancel (hinge prefix sums, one-sided harms) are covered too, not only the norm.
    ``signs`` (K·n,) in {−1, 0, +1}: components whose exact sign g's weights fix (:func:`gradient_signs`);
    the interval is cut at 0 there, so a monotone feature's weight of exactly 0 stays harmless.
    """
    g = grad.double().flatten(1)
    if grad_error is None:
        err = round_up(slack * g.abs().amax(dim=1, keepdim=True)).expand_as(g)
    else:
        err = grad_error.double().reshape_as(g)
    lo, hi = round_down(g - err), round_up(g + err)
    if signs is None:
        return lo, hi
    sign = signs.to(g.device, torch.float64)[None, :]
    return torch.where(sign > 0, lo.clamp_min(0.0), lo), torch.where(sign < 0, hi.clamp_max(0.0), hi)


def gradient_signs(model: FeatureConvexClassifier) -> torch.Tensor | None:
    """(K·n,) the sign of each component of ∇g that g's weights fix, or None (no monotone feature).

    A monotone feature's pass-through columns keep their sign in every layer of g (:meth:`ICNN.constrain_columns`),
    the hidden weights are nonnegative and ReLU's slope is in [0, 1], so every path from feature j to the
    score has that sign: ∂g/∂f_j ≥ 0 (or ≤ 0) exactly, whatever the float evaluation gave. Only sound for a
    model whose weights keep their constraints, which :meth:`~FeatureConvexClassifier.validate` checks;
    callers that skip validation pass None.
    """
    return model.feature_signs() if model.monotone else None


def fallback_radii(
    raw: dict[float, torch.Tensor], threat_model: ResolvedThreatModel, x: torch.Tensor
) -> dict[float, torch.Tensor]:
    """Raw-unit ℓp radii (N,) or (N, K) → threat-model radii: R / max_{movable i} scale_i, rounded down.

    An input none of whose features may move keeps any positive radius as ``inf`` (no allowed move
    exists); 0 stays 0.
    """
    top = threat_model.max_movable_scale(x).to(next(iter(raw.values())).device)
    out = {}
    for p, r in raw.items():
        r = r.double()
        t = top if r.dim() == 1 else top[:, None]
        scaled = torch.where(t > 0, r / t.clamp_min(torch.finfo(torch.float64).tiny), torch.full_like(r, math.inf))
        scaled = torch.where(torch.isinf(scaled), scaled, torch.nextafter(scaled, torch.zeros_like(scaled)))
        out[p] = torch.where(r > 0, scaled, torch.zeros_like(r))
    return out


def one_vs_rest_threat(
    model: OneVsRestConvex,
    x: torch.Tensor,
    norms: tuple[float, ...],
    threat_model: ResolvedThreatModel,
    precision: str = "float64",
    slack: float | None = None,
    guard: bool = True,
    validate: bool = True,
) -> Certificate:
    """One-vs-rest certificates under a threat model: class k's radius is member k's own feature-convex closed
    form under it (:func:`feature_convex_threat`, one forward and one backward pass per member), 0 where the
    model does not flag class k (``extra["class_radii_<norm>"]`` (N, K)); ``radii`` is the predicted class's.
    Decisions, flags and scores are the model's own (:func:`certify_one_vs_rest`); radii in the threat model's
    units. (Each member's s_k is the model's k-th score: ``OneVsRestConvex.forward`` evaluates member k alone.)"""
    cert = certify_one_vs_rest(model, x, norms, precision, slack, guard, validate)
    flags = cert.extra["flags"]
    per_class: dict[float, list[torch.Tensor]] = {p: [] for p in norms}
    for k, member in enumerate(model.member_models):
        own = feature_convex_threat(member, x, norms, threat_model, precision, slack, guard, validate)
        for p in norms:
            r = own.radii[p]
            per_class[p].append(torch.where(flags[:, k].to(r.device), r, torch.zeros_like(r)))
    class_radii = {p: torch.stack(r, dim=1) for p, r in per_class.items()}
    radii = {p: r.gather(1, cert.predicted[:, None].to(r.device))[:, 0] for p, r in class_radii.items()}
    extra = {**cert.extra, **{class_radii_key(p): r for p, r in class_radii.items()}}
    return replace(cert, radii=radii, extra=extra, units=threat_model.units())


def threat_lower_bound(
    score: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    phi: torch.nn.Module,
    lipschitz: float,
    tm: ResolvedThreatModel,
    radius: float,
    p: float,
) -> torch.Tensor:
    """s(x) − r·‖a(x)‖_{p*}: a lower bound of the score over every move of threat-model size ≤ r that ``tm``
    allows (the closed form of the module docstring), differentiable in the weights when ``grad`` is.

    Args:
        score: (N,) s(x). grad: (N, *feature_shape) ∇g(φ(x)). x: (N, *input_shape) raw inputs.
        phi: the feature map; lipschitz: its Lip_p (used only when φ is not coordinate-wise: then the
            bound of the generic fallback, s − r·max_movable scale·Lip_p(φ)·‖∇g‖_{p*}).
        tm: the threat model; radius: r in its units; p: the norm.
    Returns:
        (N,) bounds in ``score``'s dtype.
    """
    flat = grad.flatten(1)
    harms = harm_bounds(phi, flat, flat, int(x[0].numel()))
    if harms is None:
        top = tm.max_movable_scale(x).to(flat)
        return score - radius * top * lipschitz * torch.linalg.vector_norm(flat, ord=_dual(p), dim=1)
    costs = allowed_costs(harms, tm.directions(x), tm.scale.to(harms[0])).to(score.dtype)
    return score - radius * torch.linalg.vector_norm(costs, ord=_dual(p), dim=1)


def _dual(p: float) -> float:
    """q with 1/p + 1/q = 1."""
    return math.inf if p == 1 else 1.0 if math.isinf(p) else p / (p - 1.0)
