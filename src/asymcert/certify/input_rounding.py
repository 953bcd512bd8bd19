"""Inputs given in another float type than the model's: certified at their rounding, radii lowered to hold
for the numbers given and for the numbers an attacker gives in their place.

What is promised. A float32 model given float64 numbers v (a CSV's decimals) reads x = fl32(v); an attacker
gives numbers of that same wider type, v + δ, with δ a move the threat model allows, and the model reads
fl32(v + δ). A radius r' returned here means: every such δ with ‖δ‖ < r' (threat-model units) leaves the
certified function at the numbers the model reads, fl32(v + δ), on the same side — the real-valued score
there with ``guard=False``, and the deployed model's own decision too with ``guard=True``. The certificate
at x covers moves Δ from x the threat model allows, ‖Δ‖ < r, inside its domain. Rounding is monotone, so the
read move Δ = fl32(v + δ) − x has the allowed shape: a feature left alone stays x_i, a one-sided move keeps
its sign, and a value in [lower, upper] is read in [fl32(lower), fl32(upper)] (:func:`read_threat_model`
certifies x in that box rounded outward to the model's type). Its size, per feature, is
|Δ_i| ≤ |δ_i| + |e_i| + h_i with e = v − x and h_i half the model type's spacing at the largest value the
feature can reach, |v_i| + r·scale_i (the reached value is rounded too: review s32 F3). So
‖Δ‖ ≤ ‖δ‖ + ‖(|e_i| + h_i) / scale_i‖ over the features a move may change, and :func:`lowered_by_rounding`
returns r' = r − that norm, rounded down, also kept below the size of move whose read would overflow.

This applies to every input given in a type wider than the model's, float32 numbers among them: the attacker's
numbers are of the type given (text, float64), and a float64 edit of a float32 number is read rounded
(1e6 − 0.035 is read as 1e6 − 0.0625). Inputs given in the model's own type (float32 arrays, images) are
certified as they are: their attacker gives numbers of that type, which the model reads exactly (the ONNX
graph's promise). The real-valued score at the unrounded v + δ is covered as well when e has no part the
threat model forbids (always without one: every direction is allowed, and v + δ − x is a move of size at most
‖δ‖ + ‖e‖); it is not promised where e itself is a forbidden move (v_i ≠ x_i on an immutable feature, or on
the forbidden side of a one-sided one): the model never reads such a value, and the certificate at x never
charged that direction.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from asymcert.certify.functional import lp_norm
from asymcert.certify.result import Certificate, class_radii_key
from asymcert.errors import InputError
from asymcert.nn.feature_maps import round_down, round_up, rounded_to
from asymcert.threat import ResolvedThreatModel

NORM_SLACK = 1e-9
"""Relative allowance for the float64 rounding of ‖e‖ (n < 10⁶ terms: below γ_n(2⁻⁵³) ≈ 1e-10)."""


def to_model_dtype(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` (N, ...) in the model's float ``dtype``, and |x − that| as float64 (N, ...) where the cast
    moved a value (None when it moved none: the same dtype, a wider one, or values that are numbers of it).
    ``x`` must be finite (:func:`~asymcert.certify.inputs.check_inputs`).

    The difference of a float64 and its float32 rounding is exact in float64 (Sterbenz), so the returned
    rounding is the exact size of what the cast did.
    """
    if x.dtype == dtype:
        return x, None
    cast = x.to(dtype)
    if torch.finfo(dtype).bits >= torch.finfo(x.dtype).bits:
        return cast, None
    if not bool(torch.isfinite(cast).all()):
        raise InputError(
            f"inputs hold values beyond the range of the model's {dtype} (|x| > {torch.finfo(dtype).max:g})"
        )
    rounding = (x.double() - cast.double()).abs_()
    return cast, (rounding if bool((rounding > 0).any()) else None)


def reads_round(given: torch.dtype, dtype: torch.dtype) -> bool:
    """True when a model of float ``dtype`` given inputs of float type ``given`` rounds what it reads: ``given``
    is the wider type, so the attacker's numbers of that type are rounded too (:func:`lowered_by_rounding`)."""
    return given.is_floating_point and torch.finfo(given).bits > torch.finfo(dtype).bits


def read_threat_model(tm: ResolvedThreatModel | None, dtype: torch.dtype) -> ResolvedThreatModel | None:
    """``tm`` with its domain rounded outward to numbers of ``dtype``: values the attacker gives inside
    [lower, upper] are read inside [fl(lower), fl(upper)] ⊆ the returned box. For inputs x of ``dtype`` it gives
    the same directions and the same inside/outside as ``tm`` (x < upper exactly when x < its rounding up)."""
    if tm is None:
        return None
    lower, upper = rounded_to(tm.lower, dtype, up=False), rounded_to(tm.upper, dtype, up=True)
    return replace(tm, lower=lower.double(), upper=upper.double())


def lowered_by_rounding(
    cert: Certificate,
    given: torch.Tensor,
    rounding: torch.Tensor | None,
    tm: ResolvedThreatModel | None,
    dtype: torch.dtype,
) -> Certificate:
    """``cert``, certified at the model's readings x of ``given`` (the numbers v), with radii that hold for every
    allowed move δ from v as the model reads it, fl(v + δ) (module docstring).

    Args:
        cert: certificates of N inputs x, radii in raw units or ``tm``'s.
        given: (N, ...) the numbers given, in a float type wider than ``dtype`` (:func:`reads_round`).
        rounding: (N, ...) float64 |e| = |v − x| (:func:`to_model_dtype`); None: every value is a number of ``dtype``.
        tm: the threat model ``cert`` was certified under (None: plain ℓp balls, every feature movable).
        dtype: the model's float type.
    Returns:
        The same certificate with each radius r lowered to round_down(r − round_up(‖(|e_i| + h_i) / scale_i‖))
        over the movable features, h_i half the spacing of ``dtype`` at |v_i| + r·scale_i, and below the size of
        move that would reach beyond ``dtype``'s range; at least 0; infinite radii stay infinite.
    """
    flat = given.reshape(given.shape[0], math.prod(given.shape[1:])).double()
    e = torch.zeros_like(flat) if rounding is None else rounding.reshape(flat.shape).double().to(flat.device)
    scale = torch.ones_like(flat[0]) if tm is None else tm.scale.to(flat.device, torch.float64)
    movable = torch.ones_like(flat[0], dtype=torch.bool)
    if tm is not None:
        movable = (tm.can_increase | tm.can_decrease).to(flat.device)
    room = round_down(round_down(torch.finfo(dtype).max - flat.abs()) / scale)  # a move past it reads ±∞
    cap = torch.where(movable[None, :], room, math.inf).amin(dim=1)
    radii, extra = {}, dict(cert.extra)
    for p, r in cert.radii.items():
        radii[p] = _lowered(r, _allowance(flat, e, scale, movable, r, p, dtype), cap)
        key = class_radii_key(p)
        if key in extra:  # one-vs-rest's (N, K) radii of every class: the same rule, class by class (review 27g)
            columns = extra[key].unbind(dim=1)
            allowance = torch.stack([_allowance(flat, e, scale, movable, c, p, dtype) for c in columns], dim=1)
            extra[key] = _lowered(extra[key], allowance, cap[:, None])
    return replace(cert, radii=radii, extra=extra)


def _allowance(
    flat: torch.Tensor,
    e: torch.Tensor,
    scale: torch.Tensor,
    movable: torch.Tensor,
    r: torch.Tensor,
    p: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(N,) float64 upper bound of ‖(|e_i| + h_i) / scale_i‖_p over the movable features, h_i half the spacing of
    ``dtype`` at the largest |value| a move of size ≤ r (N,) (its finite entries; ∞ is kept anyway) reaches."""
    r64 = r.detach().double().to(flat.device)
    r64 = torch.where(torch.isfinite(r64), r64, 0.0).clamp_min(0.0)
    reach = round_up(flat.abs() + round_up(r64[:, None] * scale[None, :]))
    half = _half_spacing(reach.clamp_max(torch.finfo(dtype).max), dtype)
    terms = torch.where(movable[None, :], round_up(round_up(e + half) / scale[None, :]), torch.zeros_like(e))
    allowance = round_up(lp_norm(terms, p) * (1.0 + NORM_SLACK)).to(r.device)
    return allowance.nan_to_num(nan=math.inf)  # beyond float64 (a tiny scale): no radius left


def _half_spacing(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half the spacing of ``dtype``'s numbers at magnitude z ≥ 0 (float64, finite, ≤ its max): a bound on
    |fl(y) − y| for every |y| ≤ z (the spacing of the binade of z, or of the subnormals below the smallest normal)."""
    info = torch.finfo(dtype)
    exponent = torch.frexp(z).exponent  # z = m·2^E, m ∈ [0.5, 1): the binade [2^(E−1), 2^E)
    normal = torch.ldexp(torch.full_like(z, info.eps / 2), (exponent - 1).to(z.dtype))
    return torch.where(z >= info.tiny, normal, info.tiny * info.eps / 2)


def _lowered(r: torch.Tensor, allowance: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """min(round_down(r − allowance), cap), at least 0, in r's dtype; infinite radii and a zero allowance leave
    r as it is."""
    r64 = r.double()
    lowered = torch.minimum(round_down(r64 - allowance), cap.to(r64.device)).clamp_min(0.0)
    return torch.where(torch.isinf(r64) | (allowance == 0), r64, lowered).to(r.dtype)
