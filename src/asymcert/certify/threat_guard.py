"""Under a threat model, where the deployed model's float32 evaluation stays as the float guard assumes.

:func:`~asymcert.certify.feature_convex.float_guard` reserves 8·eps·A(x) for the rounding of the deployed
model's own score at the attacked point, which holds while A (the magnitude of the terms the score sums,
:mod:`asymcert.certify.magnitude`) grows at most to 3·A(x) and no value the evaluation computes overflows.
:func:`guarded_threat_radii` caps threat-model radii (threat-model units) at the size of move within which
both hold: a move δ changes A by at most Σ_i α_i·|δ_i| with α_i from φ's weight bounds for the weights
[−a, a] (or Lip(φ)·‖a‖ for a φ that declares none), so a move of threat-model size r by at most
‖α ⊙ scale‖_q·r over the coordinates that may move. An infinite radius (no allowed move lowers the exact
score) stays infinite only where every allowed move stays in a bounded box over which 8·eps·A and H keep
the decision: otherwise it becomes the (finite, usually astronomically large) cap. The guard's underflow term
(:func:`~asymcert.certify.feature_convex.underflow_bound`) is a constant of the model: it does not grow along a
move, and every margin here is taken after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from asymcert.certify.feature_convex import (
    FLOAT_GUARD_FACTOR,
    GROWTH,
    Reference,
    evaluation_eps,
    growth_caps,
    model_magnitudes,
    phi_steps,
    ratio,
    relative_guard,
    underflow_bound,
)
from asymcert.certify.magnitude import FLOAT32_SAFE
from asymcert.certify.scope import scoped_per_call
from asymcert.models import FeatureConvexClassifier
from asymcert.nn.feature_maps import coordinate_weights, reach_image_step, reach_input_boxes
from asymcert.threat import ResolvedThreatModel


def guarded_threat_radii(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    ref: Reference,
    radii: dict[float, torch.Tensor],
    tm: ResolvedThreatModel,
    lowered: Callable[[torch.Tensor, float], torch.Tensor],
) -> dict[float, torch.Tensor]:
    """``radii`` (norm → (N,) threat-model units) made to hold for the deployed model's float32 decision along
    every allowed move (module docstring). ``lowered(drop, p)``: the norm-p radii (N,) for margins lowered by
    ``drop`` (N,).

    Finite radii: over the box of allowed moves of each norm's radius, A must stay within GROWTH× the magnitude
    the guard reserved at x; where it does not, the margin is lowered by the guard's rounding of the excess
    (8·eps·(A_box / GROWTH − that magnitude), about 10⁻⁶ of A: radii move by that much, not more) and the radii
    recomputed, smaller, inside the same box. Where H over the box may overflow, the slope caps. Infinite
    radii: kept where the bounded box of every allowed move keeps the decision, else the slope caps.
    """
    below = underflow_bound(model, ref.features)
    budget = (ref.score - ref.error - below).double().cpu() / (FLOAT_GUARD_FACTOR * evaluation_eps(model))
    caps = threat_caps(model, x, ref, tuple(radii), tm, budget)
    boxes = _excess_per_norm(model, x, ref, tm, radii)
    radii = dict(radii)
    for p, (excess, _) in boxes.items():
        drop = FLOAT_GUARD_FACTOR * evaluation_eps(model) * excess * (1.0 + 1e-9)
        if bool((drop > 0).any()):
            radii[p] = torch.minimum(radii[p], lowered(drop, p).to(radii[p]))
    endless = torch.stack([torch.isinf(r).cpu() for r in radii.values()]).any(0)
    keep = torch.zeros_like(endless)
    if bool(endless.any()):  # (only inputs with an infinite radius need the box of every allowed move)
        keep[endless] = infinite_radius_holds(model, x[endless.to(x.device)], _rows(ref, endless), tm)
    out = {}
    for p, r in radii.items():
        finite_cap, infinite_cap = (c.to(r) for c in caps[p])
        bounded = torch.where(boxes[p][1].to(r.device), torch.minimum(r, finite_cap), r)
        capped = torch.where(torch.isinf(r), infinite_cap, bounded)
        out[p] = torch.where(torch.isinf(r) & keep.to(r.device), r, capped)
    return out


def _excess_per_norm(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    ref: Reference,
    tm: ResolvedThreatModel,
    radii: dict[float, torch.Tensor],
) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """Per norm, :func:`_box_excess` (excess (N,), overflow (N,)) over the box of allowed moves of that norm's own
    finite radius (an ℓp ball of radius r lies in the ℓ∞ box of radius r), so a norm's radii do not depend on the
    other norms asked for. The box of the largest radius first: where it settles nothing is left to do (A and H
    only grow with the box), else each smaller norm's own box on those rows."""
    finite = {p: torch.where(torch.isfinite(r), r, torch.zeros_like(r)).double().cpu() for p, r in radii.items()}
    largest = torch.stack(list(finite.values())).amax(0)
    excess, overflow = _box_excess(model, x, ref, tm, largest)
    unsettled = (excess > 0) | overflow
    out = {}
    for p, r in finite.items():
        rows = unsettled & (r < largest)
        e, o = excess.clone(), overflow.clone()
        if bool(rows.any()):
            e[rows], o[rows] = _box_excess(model, x[rows.to(x.device)], _rows(ref, rows), tm, r[rows])
        out[p] = (e, o)
    return out


def _rows(ref: Reference, rows: torch.Tensor) -> Reference:
    """The Reference of the inputs ``rows`` (N,) bool selects."""
    at = rows.to(ref.score.device)
    pick = lambda t: None if t is None else t[at]  # noqa: E731
    return Reference(
        ref.score[at], ref.error[at], ref.grad[at], pick(ref.grad_error), ref.features[at], pick(ref.uncertain)
    )


def _box_excess(
    model: FeatureConvexClassifier, x: torch.Tensor, ref: Reference, tm: ResolvedThreatModel, radius: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(excess (N,) ≥ 0, overflow (N,) bool) over the box of allowed moves of ℓ∞ size ``radius``: how far A may pass
    GROWTH × the magnitude the guard reserved, and whether H may pass FLOAT32_SAFE. A slope bound first (cheap:
    A + Σ_i α_i·scale_i·r); φ's image of the box only for the inputs where that bound does not settle it."""
    mag = ref_magnitude(model, ref)
    cheap = _slope_box(model, x, ref, tm, radius)
    if cheap is None:
        unsettled = torch.ones_like(radius, dtype=torch.bool)
    else:
        unsettled = (cheap[0] > GROWTH * mag) | (cheap[1] >= FLOAT32_SAFE)
    excess, overflow = torch.zeros_like(radius), torch.zeros_like(radius, dtype=torch.bool)
    if not bool(unsettled.any()):
        return excess, overflow
    found = _box_magnitudes(model, x[unsettled.to(x.device)], _rows(ref, unsettled), tm, radius[unsettled])
    if found is None:  # φ declares no image: the slope bound over the box, as the ONNX graph takes it
        if cheap is None:  # (nor weight bounds: the slope caps throughout)
            return excess, torch.ones_like(overflow)
        found = (cheap[0][unsettled], cheap[1][unsettled])
    excess[unsettled] = (found[0] / GROWTH - mag[unsettled]).clamp_min(0.0)
    overflow[unsettled] = found[1] >= FLOAT32_SAFE
    return excess, overflow


def _slope_box(
    model: FeatureConvexClassifier, x: torch.Tensor, ref: Reference, tm: ResolvedThreatModel, radius: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Upper bounds (A, H) (N,) over the box of allowed moves of ℓ∞ size ``radius`` from φ's weight bounds (None
    when φ declares none): A + Σ_movable α_i·scale_i·r, and H likewise with the inputs' and φ's inner values (the
    ℓ∞ rates of :func:`_move_rates`)."""
    rates = _move_rates(model, x, ref, tm, (math.inf,))
    if rates is None:
        return None
    r = radius.double().cpu()
    return rates.a + rates.grow_a[math.inf] * r, rates.h + rates.grow_h[math.inf] * r


@dataclass(frozen=True)
class _MoveRates:
    """A, H (with the inputs' and φ's inner values) (N,) at x, and per norm how fast each may grow per
    threat-model unit of allowed move (N,)."""

    a: torch.Tensor
    h: torch.Tensor
    grow_a: dict[float, torch.Tensor]
    grow_h: dict[float, torch.Tensor]


def _move_rates(
    model: FeatureConvexClassifier, x: torch.Tensor, ref: Reference, tm: ResolvedThreatModel, norms: tuple[float, ...]
) -> _MoveRates | None:
    """The :class:`_MoveRates` at x under ``tm``, from φ's weight bounds for A's and H's coefficients (α, η, per
    raw input coordinate) times the scales of the coordinates that may move; None when φ declares none."""
    n = tm.n_features
    mags = model_magnitudes(model, tuple(ref.features.shape[1:]))
    alpha = scoped_per_call("alpha", model, (n,), lambda: input_rate(model, mags.rounding, n))
    eta = scoped_per_call("eta", model, (n,), lambda: input_rate(model, mags.overflow, n))
    if alpha is None or eta is None:
        return None
    a, h = (t.cpu() for t in mags.at(ref.features))
    movable = _movable(x, tm)
    scale = tm.scale.double().cpu()[None, :]
    rate_a = torch.where(movable, alpha[None, :] * scale, torch.zeros_like(scale.expand_as(movable)))
    rate_h = torch.where(movable, (eta[None, :] + 1.0) * scale, torch.zeros_like(scale.expand_as(movable)))
    inner, inner_rates = phi_steps(model, x, norms)  # φ's values between its steps, raw units
    top = tm.max_movable_scale(x).double().cpu()  # a move of threat-model size r is of raw size ≤ r·top
    size = x.detach().double().flatten(1).abs().sum(1).cpu()
    grow_a, grow_h = {}, {}
    for p in norms:
        q = 1.0 if math.isinf(p) else (math.inf if p == 1.0 else p / (p - 1.0))
        grow_a[p] = torch.linalg.vector_norm(rate_a, q, dim=1)
        grow_h[p] = torch.linalg.vector_norm(rate_h, q, dim=1) + inner_rates[p] * top
    return _MoveRates(a, h + size + inner.cpu(), grow_a, grow_h)


def _box_magnitudes(
    model: FeatureConvexClassifier, x: torch.Tensor, ref: Reference, tm: ResolvedThreatModel, radius: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, H + the inputs' magnitude) (N,) at their largest over the box of allowed moves of threat-model ℓ∞
    size ≤ ``radius`` (N,) (which holds the ℓp balls of that radius), from φ's image of the box; None when φ
    declares no image."""
    x64 = x.detach().flatten(1).double().cpu()
    up, down = (d.cpu() for d in tm.directions(x))
    reach = radius.double().cpu()[:, None] * tm.scale.double().cpu()[None, :] * (1.0 + 1e-12)
    inside = tm.inside(x64).cpu()
    lower, upper = tm.lower.double().cpu()[None, :], tm.upper.double().cpu()[None, :]
    hi = torch.where(up, torch.where(inside, torch.minimum(x64 + reach, upper), x64 + reach), x64)
    lo = torch.where(down, torch.where(inside, torch.maximum(x64 - reach, lower), x64 - reach), x64)
    found = _over_box(model, ref, lo, hi)
    return None if found is None else found[:2]


def _over_box(
    model: FeatureConvexClassifier, ref: Reference, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(A, H, finite) (N,) at their largest while the raw inputs stay in [lo, hi] (N, n): from φ's image of the box,
    H with the inputs' and φ's inner values, and whether that image is bounded; None when φ declares no image."""
    image = reach_image_step(model.feature_map, (lo[:, None, :], hi[:, None, :]))
    inner = inner_box_size(model, lo, hi)
    if image is None or inner is None:
        return None
    top = torch.maximum(image[0].abs(), image[1].abs()).flatten(1)
    a, h = (t.cpu() for t in model_magnitudes(model, tuple(ref.features.shape[1:])).at(top))
    return a, h + torch.maximum(lo.abs(), hi.abs()).sum(1) + inner, torch.isfinite(top).all(1)


def inner_box_size(model: FeatureConvexClassifier, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor | None:
    """(N,) Σ of the largest magnitudes φ's values between its steps take while the inputs stay in [lo, hi]
    (N, n) (each step's image of the box, :meth:`~asymcert.nn.feature_maps.FeatureMap.reach_image`); None when
    a step declares no image. ∞ where a box or an image is unbounded."""
    steps = list(getattr(model.feature_map, "feature_maps", []))
    boxes = reach_input_boxes(steps, (lo[:, None, :], hi[:, None, :]))[1:]
    size = torch.zeros(lo.shape[0], dtype=torch.float64)
    for box in boxes:
        if box is None:
            return None
        size = size + torch.maximum(box[0].abs(), box[1].abs()).flatten(1).sum(1).cpu()
    return size


def ref_magnitude(model: FeatureConvexClassifier, ref: Reference) -> torch.Tensor:
    """(N,) the magnitude the float guard reserved rounding for at x: max(M, A) (the guard's relative part,
    :func:`~asymcert.certify.feature_convex.relative_guard`)."""
    band = relative_guard(model, ref.features, ref.grad, ref.score).double().cpu()
    return band / (FLOAT_GUARD_FACTOR * evaluation_eps(model))


def _movable(x: torch.Tensor, tm: ResolvedThreatModel) -> torch.Tensor:
    """(N, n) bool: coordinates a move may change at x."""
    up, down = tm.directions(x)
    return (up | down).cpu()


def threat_caps(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    ref: Reference,
    norms: tuple[float, ...],
    tm: ResolvedThreatModel,
    budget: torch.Tensor,
) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """Per norm, two sizes (N,) float64 of allowed move, threat-model units (∞ where no coordinate may move):
    for finite radii, A stays below 3·A(x) (the guard's factor 8 covers it); for infinite ones (no allowed move
    lowers the exact score, so the whole exact margin is free for rounding), A stays below ``budget`` (N,) =
    (ŝ − error − underflow term)/(8·eps); both with H below :data:`~asymcert.certify.magnitude.FLOAT32_SAFE`."""
    rates = _move_rates(model, x, ref, tm, norms)
    if rates is None:  # φ declares no weight bounds: the raw-unit caps / the largest scale
        raw = growth_caps(model, x, ref.features, norms)
        top = tm.max_movable_scale(x).double().cpu()
        both = {p: torch.minimum(*raw[p]).cpu() for p in norms}
        fallback = {p: torch.where(top > 0, both[p] / top, torch.full_like(top, math.inf)) for p in norms}
        return {p: (c, c) for p, c in fallback.items()}
    room = (FLOAT32_SAFE - rates.h).clamp_min(0.0)
    caps = {}
    for p in norms:
        overflow = ratio(room, rates.grow_h[p])
        finite = torch.minimum(ratio(2.0 * rates.a, rates.grow_a[p]), overflow)
        infinite = torch.minimum(ratio((budget - rates.a).clamp_min(0.0), rates.grow_a[p]), overflow)
        caps[p] = (finite * (1.0 - 1e-9), infinite * (1.0 - 1e-9))
    return caps


def input_rate(model: FeatureConvexClassifier, coefficients: torch.Tensor, n: int) -> torch.Tensor | None:
    """(n,) float64: how much Σ_k c_k·|φ_k| can change per unit move of each raw input coordinate (φ's weight
    bounds for the weights [−c, c], rounded outward); None when φ declares none."""
    c = coefficients.double().cpu()[None, :]
    bounds = coordinate_weights(model.feature_map, -c, c, n)
    if bounds is None:
        return None
    return torch.maximum(bounds[0].abs(), bounds[1].abs())[0] * (1.0 + 1e-12)


def infinite_radius_holds(
    model: FeatureConvexClassifier, x: torch.Tensor, ref: Reference, tm: ResolvedThreatModel
) -> torch.Tensor:
    """(N,) bool: every allowed move from x stays in a bounded box (the domain, on the allowed sides) over which
    the exact score's lower bound at x beats 8·eps·A plus the underflow term and H stays below FLOAT32_SAFE (φ's
    image of the box from :meth:`~asymcert.nn.feature_maps.FeatureMap.reach_image`); False where the box or its
    image is unbounded."""
    x64 = x.detach().flatten(1).double().cpu()
    up, down = (d.cpu() for d in tm.directions(x))
    lower, upper = tm.lower.double().cpu()[None, :], tm.upper.double().cpu()[None, :]
    inside = tm.inside(x64).cpu()
    hi = torch.where(up, torch.where(inside, upper.expand_as(x64), torch.full_like(x64, math.inf)), x64)
    lo = torch.where(down, torch.where(inside, lower.expand_as(x64), torch.full_like(x64, -math.inf)), x64)
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        finite = torch.isfinite(lo).all(1) & torch.isfinite(hi).all(1)
        if not bool(finite.any()):
            return finite
        lo, hi = torch.where(finite[:, None], lo, x64), torch.where(finite[:, None], hi, x64)
    else:
        finite = torch.ones(x64.shape[0], dtype=torch.bool)
    found = _over_box(model, ref, lo, hi)
    if found is None:
        return torch.zeros_like(finite)
    a, h, bounded = found
    band = FLOAT_GUARD_FACTOR * evaluation_eps(model) * a + underflow_bound(model, ref.features)
    exact_low = (ref.score - ref.error).double().cpu()
    return finite & bounded & (exact_low > band) & (h < FLOAT32_SAFE)
